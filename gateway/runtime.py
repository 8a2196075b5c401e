"""The worker runtime's core: the log, the projection it folds, the one tail, and
snapshots; the collaborators that do the rest.

A worker folds the log into its :class:`RegistryProjection` through one tail and
tells every folded record to its observers, which never block: the streams held
here (:mod:`.held_streams`), the answering of client messages (:mod:`.answering`),
and whoever else attached (subscriptions/listen, the upstream relays). Background
writes (:mod:`.housekeeping`) are a heartbeat every few seconds, whatever the number
of sessions. Time comes from an injected clock. Transports reach all of it through
this one object.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from eventlog import EventLog, LogUnavailable, Record, WorkerStarted, WorkerStopped
from projections import (
    SNAPSHOT_NAME,
    RegistryProjection,
    SentMessage,
    SentRef,
    encode_snapshot,
)

from .answering import Answering, MessageHandler
from .held_streams import HeldStreams
from .housekeeping import Housekeeping
from .reading import catch_up, load_latest
from .settings import Settings

__all__ = ["WorkerRuntime"]

logger = logging.getLogger("sessionlog.gateway")

T = TypeVar("T")

# Timeouts
STOP_GRACE = 2.0  # seconds stop() waits for background tasks to end
SYNC_TIMEOUT = 10.0  # seconds sync() waits for the tail to reach the head it read


class WorkerRuntime:
    def __init__(
        self,
        log: EventLog,
        worker_id: str,
        handler: MessageHandler,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
        at_once: Callable[[Any], bool] | None = None,
    ) -> None:
        self.log = log
        self.worker_id = worker_id
        self.settings = settings or Settings()
        self.clock = clock
        self.projection = RegistryProjection(closed_retention=self.settings.closed_retention)
        # Told of every record as it is folded, in this order; they must not block.
        self.observers: list[Callable[[Record], None]] = []
        self.streams = HeldStreams(self)
        self.answers = Answering(self, handler, at_once)
        self.housekeeping = Housekeeping(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task[Any]] = set()  # one-off tasks, kept from the GC
        self._snapshot_mark = 0
        # sync() callers: (position, waiter), woken once the tail has folded it.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waits = 0  # tie-breaker for the heap
        # Head reads, one at a time: a read answers every caller that asked before it
        # started (see _fresh_head).
        self._head_lock = asyncio.Lock()
        self._head_asked = 0  # callers so far
        self._head_answered = 0  # callers the newest read answers
        self._head = 0
        # Why this worker should not take traffic now, by cause ("writes", "lineage"):
        # /readyz answers 503 with them while any is set.
        self.problems: dict[str, str] = {}

    @property
    def worker_ttl(self) -> float:
        return self.settings.worker_ttl

    # -- life cycle --------------------------------------------------------------

    async def start(self, *, housekeeping: bool = True) -> None:
        """Load the newest snapshot, fold the log, announce this worker, start the tail.

        ``housekeeping=False`` leaves heartbeats and sweeps to the caller (tests drive
        them with an injected clock instead of waiting).
        """
        self.projection = await load_latest(self.log)
        self.projection.closed_retention = self.settings.closed_retention
        # Observers hear from the tail on: nothing held here has a past to react to,
        # and without a listener a page is folded at once.
        await catch_up(self.log, self.projection)
        self.projection.listener = self._react
        self._snapshot_mark = self.projection.position // self.settings.snapshot_every
        started = WorkerStarted(host=socket.gethostname(), pid=os.getpid())
        await self.log.append([started], worker=self.worker_id)
        self._tasks.append(asyncio.create_task(self._follow(), name="sessionlog-tail"))
        if housekeeping:
            task = asyncio.create_task(self.housekeeping.run(), name="sessionlog-housekeeping")
            self._tasks.append(task)

    async def stop(self) -> None:
        """Let go of the streams held here (their clients may resume them on another
        worker), say WorkerStopped, stop the background tasks."""
        with contextlib.suppress(LogUnavailable):
            await self.streams.release_all("worker_stopped")
            await self.log.append([WorkerStopped()], worker=self.worker_id)
        tasks = [*self._tasks, *self._chores]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: redis-py can sit on a cancelled blocking read after the server
            # restarted; the log's close releases it.
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        self._tasks.clear()
        for _, _, waiter in self._waiting:
            if not waiter.done():
                waiter.set_exception(LogUnavailable("the worker stopped"))

    # -- folding -----------------------------------------------------------------

    async def sync(self) -> None:
        """Return once everything appended up to now, on any worker, is folded here:
        read-your-writes. The tail does the reading; this only waits for it.

        Raises:
            LogUnavailable: the log's head cannot be read, or the tail does not
                reach it within SYNC_TIMEOUT.
        """
        head = await self._fresh_head()
        if self.projection.position >= head:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waits += 1
        heapq.heappush(self._waiting, (head, self._waits, waiter))
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                await waiter
        except TimeoutError:
            raise LogUnavailable(
                f"{self.log.url}: the tail did not reach position {head} in {SYNC_TIMEOUT:.0f} s"
            ) from None

    async def _fresh_head(self) -> int:
        """The log's head as read after this call began. Concurrent callers share
        reads: thousands of streams opening at once cost a few reads, not thousands
        of connections."""
        self._head_asked += 1
        ticket = self._head_asked
        async with self._head_lock:
            if self._head_answered < ticket:
                answers = self._head_asked  # everyone who asked before this read starts
                self._head = await self.log.head()
                self._head_answered = answers
            return self._head

    async def _follow(self) -> None:
        async for records, reached in self.log.tail_pages(after=self.projection.position):
            apply = self.projection.apply
            for record in records:
                apply(record)
            self.projection.advance(reached)
            self._wake(reached)
            if reached // self.settings.snapshot_every > self._snapshot_mark:
                await self._save_snapshot()
            # What the page set going (a handler, a stream's send) runs before the
            # tail's next read is sent, which costs the driver more than it waits.
            await asyncio.sleep(0)

    def _wake(self, position: int) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= position:
            _, _, waiter = heapq.heappop(waiting)
            if not waiter.done():
                waiter.set_result(None)

    def _react(self, record: Record) -> None:
        for observe in self.observers:
            observe(record)

    async def _save_snapshot(self) -> None:
        self._snapshot_mark = self.projection.position // self.settings.snapshot_every
        data = encode_snapshot(self.projection)
        try:
            await self.log.save_snapshot(SNAPSHOT_NAME, self.projection.position, data)
        except LogUnavailable as exc:
            logger.warning("snapshot not saved: %s", exc)

    # -- reading what was sent -----------------------------------------------------

    def sent_after(
        self,
        session_id: str,
        after: int,
        upto: int,
        carries: Callable[[SentRef], bool] | None = None,
    ) -> AsyncIterator[SentMessage]:
        """The session's server messages with positions in (after, upto] (those
        ``carries``, if given), in order: their bytes kept here for a stream held
        here, or read back from the log a batch at a time (see :mod:`.payloads`)."""
        return self.streams.payloads.sent_after(session_id, after, upto, carries)

    # -- background work ---------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` in the background, kept from the GC until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    def spawn_recorded(self, session_id: str, change: Coroutine[Any, Any, None]) -> None:
        """Run a session change in the background; a log that is down only loses
        the record of it (the sweep or the next owner sets things right)."""

        async def run() -> None:
            try:
                await change
            except LogUnavailable as exc:
                logger.warning(
                    "session %s: not recorded: %s",
                    session_id,
                    exc,
                    extra={"session_id": session_id},
                )

        self.spawn(run())
