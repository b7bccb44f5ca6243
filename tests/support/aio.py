"""Small pieces for async tests: a bounded event loop per test, polling, and a clock that only
moves when told to."""
from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timedelta


def async_test(fn):
    """Run an async test function in a fresh event loop, bounded in time."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))
    return wrapper


async def until(predicate, timeout: float):
    """Poll an async predicate until it returns something truthy; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        await asyncio.sleep(0.01)


class FakeClock:
    """A naive-UTC clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 28, 23, 0, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
