"""Lineage: noticing that the log this worker reads is not the log it folded, and
folding it again.

A log can move backwards: Redis restarted from an older dump, a failover to a
replica that was behind, a database restored from a backup. A worker that went on
would ignore every record at or below the position it folded, answer nothing
written meanwhile, and not know sessions opened on other workers. So it checks,
where that is cheap and timely: at each heartbeat (one head read, one record read),
when its tail comes back after the backend failed, when a head read finds the head
below its fold, and when an append lands at or below what it had folded. Once the
log is not the one folded, it says so (``problems["lineage"]``: /readyz answers
503; a metric; one log line), folds the log again from the newest snapshot the log
still holds, lets go of the streams of sessions it no longer holds, and answers
every client message in the log left unanswered that is its to answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from eventlog import LogUnavailable

from .reading import holds

if TYPE_CHECKING:
    from .runtime import WorkerRuntime

__all__ = ["Lineage"]

logger = logging.getLogger("sessionlog.gateway")

# Timeouts
REFOLD_RETRY_MAX = 2.0  # seconds between attempts to fold again while the log is down


class Lineage:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        # Times this worker found its log rolled back and folded it again (counted once
        # done: a check that began before a re-fold ended tells by it that it looked
        # at the old fold).
        self.resets = 0
        self.last_recovery: float | None = None  # seconds the last re-fold took
        self._recovery: asyncio.Task[None] | None = None
        self._suspected: asyncio.Task[None] | None = None

    @property
    def recovering(self) -> bool:
        return self._recovery is not None and not self._recovery.done()

    async def check(self) -> None:
        """Fold the log again if it is not the log this worker folded; return once
        what was folded is the log's.

        Raises:
            LogUnavailable: the log cannot be read.
        """
        while not self.recovering:
            refolds = self.resets
            if await holds(self.runtime.log, self.runtime.projection.state):
                return
            if refolds == self.resets:
                break
            # Folded again while this looked at the old fold: look at the new one.
        await self.broken("it no longer holds the last record folded")

    def suspect(self) -> None:
        """Check in the background: an append landed at or below the fold."""
        if self._suspected is None or self._suspected.done():
            self._suspected = self.runtime.spawn(self._check_quietly())

    async def _check_quietly(self) -> None:
        try:
            await self.check()
        except LogUnavailable as exc:  # the heartbeat's check looks again
            logger.warning("lineage not checked: %s", exc)

    async def broken(self, why: str) -> None:
        """Fold the log again (once, however many found it rolled back) and return
        when that is done."""
        if not self.recovering:
            self._recovery = self.runtime.spawn(self._recover(why))
        # Shielded: a caller that gives up (a request's timeout, a cancelled tail)
        # leaves the recovery running.
        await asyncio.shield(self._recovery)  # type: ignore[arg-type]

    async def _recover(self, why: str) -> None:
        runtime = self.runtime
        began = time.monotonic()
        folded = runtime.projection.position
        runtime.problems["lineage"] = f"the log was rolled back: {why}; folding it again"
        logger.warning(
            "worker %s: the log is not the one folded here up to position %d (%s): "
            "folding it again",
            runtime.worker_id,
            folded,
            why,
        )
        delay = 0.05
        while True:
            try:
                await runtime.refold()
                break
            except LogUnavailable as exc:
                logger.warning("folding the log again: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REFOLD_RETRY_MAX)
        self.resets += 1
        await self._settle()
        self.last_recovery = time.monotonic() - began
        del runtime.problems["lineage"]
        logger.warning(
            "worker %s: log folded again in %.3f s: position %d (was %d)",
            runtime.worker_id,
            self.last_recovery,
            runtime.projection.position,
            folded,
        )

    async def _settle(self) -> None:
        """Make what this worker holds agree with the log folded again: streams of
        sessions it no longer holds end (their clients resume wherever they hold
        now), the streams it keeps take what comes next, and the client messages it
        must answer are answered."""
        runtime = self.runtime
        projection = runtime.projection
        for session_id in runtime.streams.session_ids():
            session = projection.session(session_id)
            if session is None or session.holder != runtime.worker_id:
                await runtime.streams.drop(session_id, disconnect=True)
        runtime.streams.rewind(projection.position)
        runtime.answers.queue_all_pending()
        runtime.answers.answer_own_again()
