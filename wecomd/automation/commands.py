"""CommandRunner: runs operator-configured commands safely (no shell, own process group, limits)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
READER_LINGER = 1.0  # after SIGKILL: how long to wait for the pipe to close


@dataclass(frozen=True)
class CommandResult:
    """How one command ended.

    `status` is "ok" (exit 0), "failed" (non-zero exit, or a signal not sent by us: then
    `exit_code` is minus the signal number), "timeout" (we stopped it) or "error" (it could not
    start). `exit_code` is None for "timeout" and "error". `output` is stdout and stderr
    interleaved, cut at the runner's output limit with a marker that says how many bytes were
    dropped.
    """

    argv: tuple[str, ...]
    exit_code: int | None
    status: str
    duration_ms: float
    output: str = ""
    truncated: bool = False
    error: str | None = None

    def excerpt(self, limit: int = 500) -> str:
        """The last `limit` characters of the output: the end is where commands say what went wrong."""
        return self.output[-limit:] if limit > 0 else ""


class _Output(asyncio.Protocol):
    """Reads the child's output pipe: keeps the first `limit` bytes, counts (and drops) the rest.

    It consumes every byte as it arrives, so the child never blocks on a full pipe.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.kept, self.total = limit, bytearray(), 0
        self.closed = asyncio.get_running_loop().create_future()  # EOF: the whole group is done with it

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)

    def text(self) -> str:
        data = bytes(self.kept)
        if self.truncated:
            data = _utf8_boundary(data)
        text = data.decode("utf-8", errors="replace")
        if self.truncated:
            text += "\n…[output truncated: %d bytes]" % (self.total - len(data))
        return text


def refused(program: str, error: str, why: str) -> CommandResult:
    """The result of a command that was not started because its arguments were refused.

    `error` (which may quote the message) is the run's recorded reason; `why` (no message text)
    goes to the log, like the runner's own line for commands that ran.
    """
    logger.warning("command %s: refused, %s; nothing was run", program, why)
    return CommandResult((program,), None, "error", 0.0, error=error)


def _utf8_boundary(data: bytes) -> bytes:
    """Drop a multi-byte character cut in half at the end (at most 3 bytes)."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        size = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        return data if size <= back else data[:-back]
    return data


async def _spawn(argv: tuple, env: Mapping[str, str], cwd: str | None,
                 output_fd: int) -> asyncio.subprocess.Process:
    if not argv:
        raise ValueError("the command is empty")
    # Never a shell: argv goes to execve as is, so user text stays one literal argument.
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output_fd, stderr=asyncio.subprocess.STDOUT,
        env=_child_env(env), cwd=cwd, start_new_session=True)


def _start_error(argv: tuple, exc: Exception) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return "could not start %s: %s" % (argv[0] if argv else "the command", reason)


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _child_env(env: Mapping[str, str]) -> dict:
    # Security: never hand the daemon's own environment down: it carries WECOMD_* secrets.
    base = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LANG": "C.UTF-8",
            "HOME": os.environ.get("HOME") or os.path.expanduser("~")}
    base.update(env)
    return base


class CommandRunner:
    """Runs argv lists as subprocesses: at most `max_concurrent` at once, each with a timeout.

    Each command gets its own session and process group, so a timeout or a cancelled caller
    (daemon shutdown) stops everything it started: SIGTERM to the group, `kill_grace` seconds,
    then SIGKILL. The timeout counts from the start of the process, not from the wait for a slot.
    The child is always reaped.
    """

    def __init__(self, max_concurrent: int = 4, output_limit: int = 65536, kill_grace: float = 2.0) -> None:
        self.max_concurrent, self.output_limit, self.kill_grace = max(1, max_concurrent), output_limit, kill_grace
        self._slots: Optional[asyncio.Semaphore] = None
        self._running = 0

    @property
    def running(self) -> int:
        """How many commands are running now."""
        return self._running

    async def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float,
                  cwd: str | None = None) -> CommandResult:
        """Run `argv` (never through a shell) with a minimal environment plus `env`.

        Never raises for the command's own failures: they come back as a CommandResult with
        status "failed", "timeout" or "error". Cancellation stops the process group and re-raises.
        """
        argv = tuple(argv)
        if self._slots is None:  # created on the running loop (Python 3.9 binds at creation)
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            self._running += 1
            try:
                result = await self._run(argv, env, timeout, cwd)
            finally:
                self._running -= 1
        logger.info("command %s: %s, exit code %s, %.0f ms", argv[0] if argv else "-",
                    result.status, result.exit_code, result.duration_ms)
        return result

    async def _run(self, argv: tuple, env: Mapping[str, str], timeout: float, cwd: str | None) -> CommandResult:
        started = time.monotonic()
        # Our own pipe rather than PIPE: we can close it even if a process that left the group
        # (setsid) still holds it, and proc.wait() then means the child's exit, not the pipe's EOF.
        read_fd, write_fd = os.pipe()
        transport, out = await asyncio.get_running_loop().connect_read_pipe(
            lambda: _Output(self.output_limit), open(read_fd, "rb", buffering=0))
        try:
            proc = await _spawn(argv, env, cwd, write_fd)
        except (OSError, ValueError) as exc:
            transport.close()
            return CommandResult(argv, None, "error", _ms_since(started), error=_start_error(argv, exc))
        except BaseException:
            transport.close()
            raise
        finally:
            os.close(write_fd)  # only the child's copies remain: EOF once its whole group is done
        try:
            error = await self._supervise(proc, out, started, timeout)
        finally:
            transport.close()
        return self._result(argv, proc.returncode, error, started, out)

    async def _supervise(self, proc: asyncio.subprocess.Process, out: _Output, started: float,
                         timeout: float) -> str | None:
        """Wait for exit and EOF until the deadline; stop the group on timeout or cancellation."""
        waiter = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({out.closed, waiter}, timeout=max(0.0, started + timeout - time.monotonic()))
            if out.closed.done() and waiter.done():
                return None
            return await self._stop(proc, out.closed, waiter, timeout)
        except asyncio.CancelledError:
            await self._stop(proc, out.closed, waiter, timeout)
            raise

    async def _stop(self, proc: asyncio.subprocess.Process, reader: asyncio.Future,
                    waiter: asyncio.Future, timeout: float) -> str:
        """SIGTERM the group, wait up to kill_grace, SIGKILL what is left. Returns the error text."""
        exited = proc.returncode  # not None: the child is done but something of its group holds the pipe
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait({reader, waiter}, timeout=self.kill_grace)
        finally:  # also when cancelled again while waiting: never leave the group behind
            stubborn = proc.returncode is None
            # SIGKILL the group even if the child is gone: a grandchild may have ignored SIGTERM.
            _signal_group(proc.pid, signal.SIGKILL)
        # Bounded: a process that left the group (setsid) may hold the pipe for ever.
        await asyncio.wait({reader, waiter}, timeout=READER_LINGER)
        if exited is not None:
            return ("exited with code %s, but a background process it started kept the output open "
                    "past the %g s timeout; its process group was stopped" % (exited, timeout))
        how = "killed with SIGKILL after it ignored SIGTERM for %g s" % self.kill_grace if stubborn \
            else "stopped with SIGTERM"
        return "did not finish within %g s; %s" % (timeout, how)

    @staticmethod
    def _result(argv: tuple, code: int | None, error: str | None, started: float, out: _Output) -> CommandResult:
        if error is not None:
            status, code = "timeout", None
        elif code == 0:
            status = "ok"
        else:
            status = "failed"
            if code is not None and code < 0:
                with suppress(ValueError):
                    error = "killed by signal %s" % signal.Signals(-code).name
        return CommandResult(argv, code, status, _ms_since(started), out.text(), out.truncated, error)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0
