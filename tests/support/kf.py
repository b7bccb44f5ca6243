"""Helpers of the 微信客服 tests: a pull held on its way to WeCom."""
from __future__ import annotations

import asyncio

from wecomd.kf import pull as pullmod


class SlowSync:
    """The puller's WecomClient with each sync_msg held `delay` seconds, counting how many run at once."""

    def __init__(self, client, delay: float) -> None:
        self.client, self.delay, self.active, self.most = client, delay, 0, 0

    async def call(self, app, method, path, **kwargs):
        if path != pullmod.SYNC_MSG:
            return await self.client.call(app, method, path, **kwargs)
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await asyncio.sleep(self.delay)
            return await self.client.call(app, method, path, **kwargs)
        finally:
            self.active -= 1
