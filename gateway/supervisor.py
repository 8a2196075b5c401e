"""Several worker processes on one port: ``sessionlog serve --workers N``.

The supervisor starts N ``sessionlog serve`` workers that share the port
(SO_REUSEPORT: the kernel spreads connections), restarts any that exits (at once
after a long run, after doubling delays in a crash loop, so a log that cannot be
reached does not spin the machine), and stops them all on SIGTERM or SIGINT.

Each worker holds the read end of a pipe whose write end only the supervisor has.
When the supervisor dies, even by kill -9, the kernel closes that end; the workers
read end-of-file and stop as on SIGTERM, so none is left holding the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from eventlog import redact_url

from .settings import Settings

__all__ = ["SUPERVISOR_FD", "RestartBackoff", "supervise", "watch_supervisor"]

logger = logging.getLogger("sessionlog.gateway")

# The environment variable that gives a worker its end of the supervisor's pipe.
SUPERVISOR_FD = "SESSIONLOG_SUPERVISOR_FD"

# Timeouts
WORKER_STOP_GRACE = 30.0  # s the supervisor waits for workers after SIGTERM
LONGEST_RESTART_DELAY = 30.0  # s a crash loop's delays double up to
SETTLED_RUN = 10.0  # s a worker runs before its exit no longer counts as a crash loop


class RestartBackoff:
    """How long to wait before restarting a worker that exited, given how long it ran:
    not at all after a settled run; ``first``, then twice as long each time, up to
    ``longest``, while each run ends before it settles."""

    def __init__(
        self, first: float, longest: float = LONGEST_RESTART_DELAY, settled: float = SETTLED_RUN
    ) -> None:
        self.first = first
        self.longest = longest
        self.settled = settled
        self._delay = 0.0

    def delay(self, ran_for: float) -> float:
        if ran_for >= self.settled:
            self._delay = 0.0
        else:
            self._delay = min(self.longest, 2 * self._delay or self.first)
        return self._delay


def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``settings.workers`` workers of ``sessionlog <argv>`` until SIGTERM or SIGINT."""
    base = f"http://{settings.host}:{settings.port}"
    print(f"sessionlog: {settings.workers} workers; MCP at {base}/mcp and {base}/sse")
    print(f"sessionlog: log {redact_url(settings.log_url)}", flush=True)
    asyncio.run(_Supervisor(settings, argv).run())
    return 0


class _Supervisor:
    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.command = [sys.executable, "-m", "gateway", *argv, "--workers", "1"]
        self.stopping = asyncio.Event()
        self.running: dict[int, asyncio.subprocess.Process] = {}  # by slot
        self.pipe = -1  # the workers' end

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        self.pipe, kept = os.pipe()  # ``kept`` stays open, unwritten, until this process ends
        slots = [
            asyncio.create_task(self._keep_running(slot)) for slot in range(self.settings.workers)
        ]
        await self.stopping.wait()
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        _, late = await asyncio.wait(slots, timeout=WORKER_STOP_GRACE)
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await asyncio.gather(*late)
        os.close(kept)

    async def _keep_running(self, slot: int) -> None:
        """Keep one worker running in ``slot`` until the supervisor stops."""
        loop = asyncio.get_running_loop()
        backoff = RestartBackoff(self.settings.restart_delay)
        env = {**os.environ, SUPERVISOR_FD: str(self.pipe)}
        while True:
            started = loop.time()
            process = await asyncio.create_subprocess_exec(
                *self.command, env=env, pass_fds=(self.pipe,)
            )
            self.running[slot] = process
            if self.stopping.is_set():  # asked to stop while it was starting
                process.terminate()
            code = await process.wait()
            if self.stopping.is_set():
                return
            ran_for = loop.time() - started
            delay = backoff.delay(ran_for)
            logger.warning(
                "worker %d exited (%s) after %.1f s; starting another in %.2f s",
                process.pid,
                code,
                ran_for,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
                    return


def watch_supervisor(fd: int) -> None:
    """In a worker: stop as on SIGTERM once the supervisor's end of the pipe closes."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        if os.read(fd, 1):
            return  # nothing is ever written; only end-of-file counts
        loop.remove_reader(fd)
        logger.warning("the supervisor is gone; stopping")
        signal.raise_signal(signal.SIGTERM)

    loop.add_reader(fd, readable)
