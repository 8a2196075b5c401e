"""Housekeeping: this worker's heartbeat, noticing dead workers, closing what has
expired, and compacting the log every so often (see :mod:`.compaction`).

A heartbeat is one append every few seconds, whatever the number of sessions; a
sweep looks at every session, so it runs less often (TTLs are minutes, and idle CPU
must not grow with the session count). A compaction runs beside the heartbeats, not
between them: a long move must not make this worker look dead. Tests drive each
with an injected clock instead of the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from eventlog import (
    Event,
    LogUnavailable,
    MessageHandled,
    SessionClosed,
    WorkerHeartbeat,
    derived_event_id,
)

from .compaction import Compacted, Compaction

if TYPE_CHECKING:
    from .runtime import WorkerRuntime

__all__ = ["Housekeeping"]

logger = logging.getLogger("sessionlog.gateway")


class Housekeeping:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        # Workers seen dead at the last heartbeat: a newly dead one's messages need
        # answering elsewhere.
        self._dead: set[str] = set()
        # Told of workers newly seen dead, at a heartbeat (what they did falls to the
        # living: the upstream listening); they must not block.
        self.dead_worker_observers: list[Callable[[set[str]], None]] = []
        settings = runtime.settings
        self.compaction = Compaction(
            runtime.log,
            runtime.worker_id,
            retain=settings.retain,
            retain_size=settings.retain_size,
            worker_ttl=runtime.worker_ttl,
            segment_records=settings.archive_segment_records,
            clock=runtime.clock,
        )
        self._compacting: asyncio.Task[Compacted | None] | None = None

    async def run(self) -> None:
        runtime = self.runtime
        settings = runtime.settings
        beats_per_sweep = max(1, round(settings.sweep_interval / settings.heartbeat_interval))
        beat = 0
        impossible = self.compaction.possible
        if impossible is not None:
            logger.info("compaction: off: %s", impossible)
        next_compaction = runtime.clock() + settings.compact_interval
        while True:
            try:
                await self.heartbeat()
                self.notice_dead_workers()
                if beat % beats_per_sweep == 0:
                    await self.sweep()
            except LogUnavailable as exc:
                logger.warning("housekeeping: %s", exc)
            if impossible is None and runtime.clock() >= next_compaction:
                next_compaction = runtime.clock() + settings.compact_interval
                if self._compacting is None or self._compacting.done():
                    self._compacting = runtime.spawn(self.compact())
            beat += 1
            await asyncio.sleep(settings.heartbeat_interval)

    async def compact(self) -> Compacted | None:
        """One compaction run, unless another worker is compacting (None then, or
        when it failed: said in the log)."""
        try:
            await self.runtime.sync()
        except LogUnavailable as exc:
            logger.warning("compaction: %s", exc)
            return None
        return await self.compaction.run_logged(self.runtime.projection)

    async def heartbeat(self) -> None:
        """Say this worker is alive. While heartbeats cannot be written (a disk full or
        read-only, a log that refuses writes) the worker is not ready for traffic."""
        runtime = self.runtime
        try:
            await runtime.log.append([WorkerHeartbeat()], worker=runtime.worker_id)
        except LogUnavailable as exc:
            runtime.problems["writes"] = f"writes fail: {exc}"
            raise
        runtime.problems.pop("writes", None)
        await runtime.lineage.check()  # is the log still the one folded here?

    def notice_dead_workers(self) -> None:
        """Once a worker is seen dead, the messages it was answering within their
        requests fall to the owners of their sessions."""
        runtime = self.runtime
        now = runtime.clock()
        dead = {
            worker.worker
            for worker in runtime.projection.state.workers.values()
            if not worker.alive(now, runtime.worker_ttl)
        }
        newly_dead, self._dead = dead - self._dead, dead
        if newly_dead:
            runtime.answers.queue_all_pending()
            for observe in self.dead_worker_observers:
                observe(newly_dead)

    async def sweep(self) -> None:
        """Close what has expired, once, whichever workers sweep at the same time.

        Sessions with no live holder idle past ``session_ttl`` close as expired; client
        messages unhandled past ``message_ttl`` are marked expired; held streams that
        dropped are closed; pending messages of sessions answered here are queued
        again (after an outage, or a takeover).
        """
        runtime = self.runtime
        settings = runtime.settings
        await runtime.streams.close_disconnected()
        runtime.answers.queue_all_pending()
        await runtime.sync()
        now = runtime.clock()
        expired: list[Event] = []
        for session_id, session in runtime.projection.state.sessions.items():
            holder, ttl = session.holder, runtime.worker_ttl
            held = holder is not None and runtime.projection.is_alive(holder, now, ttl)
            if not held and now - session.last_activity > settings.session_ttl:
                expired.append(
                    SessionClosed(
                        id=derived_event_id(session_id, session.opened_position, "expired"),
                        session_id=session_id,
                        reason="expired",
                    )
                )
                continue
            for message in session.pending.values():
                if now - message.at > settings.message_ttl:
                    expired.append(
                        MessageHandled(
                            id=derived_event_id(message.message_id, "outcome"),
                            session_id=session_id,
                            message_id=message.message_id,
                            outcome="expired",
                        )
                    )
        if expired:
            await runtime.log.append(expired, worker=runtime.worker_id)
            await runtime.sync()
