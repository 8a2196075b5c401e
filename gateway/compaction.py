"""Compaction: moving what no worker needs, past the retention window, from the hot
log to the log's archive.

One worker compacts at a time, claimed through the log (the ``"compactor"`` claim
on :data:`COMPACTION_KEY`): two moves of one log at once could replace each other's
segments. A claim left by a worker that died is taken over once it is seen dead:
its heartbeats stopped (the projection says), or it was a ``sessionlog compact``
run on this host whose process is gone.

A run saves a snapshot of the registry first, so a worker starting later folds from
at or after the new start position; then moves records below the oldest one still
needed (a pending client message, a server message kept for resuming an open
session's stream, the record after the snapshot) that were appended before the
window, and, while the hot log is above its size budget, more of those needed by
nobody. ``sessionlog serve`` runs it every ``--compact-interval`` (see
:mod:`.housekeeping`); ``sessionlog compact`` runs it once by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eventlog import (
    EventLog,
    EventLogError,
    LogUnavailable,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
    open_log,
)
from eventlog.base import SEGMENT_RECORDS
from eventlog.errors import ChainBroken
from projections import SNAPSHOT_NAME, RegistryProjection, RegistryState, encode_snapshot

from .reading import catch_up, load_consistent
from .replay import check_log_file
from .settings import Settings

__all__ = [
    "COMPACTION_KEY",
    "Compacted",
    "Compaction",
    "CompactionCollector",
    "compact_by_hand",
    "describe",
    "oldest_needed",
]

logger = logging.getLogger("sessionlog.gateway")

COMPACTION_KEY = "compaction"  # the claim's "session id": the log's, not a session's


class Compacted(msgspec.Struct, kw_only=True):
    """What one run did."""

    start_before: int  # the log start position before the run
    start: int  # and after it
    needed_from: int  # the oldest position a worker still needs
    hot_size: int  # bytes of the hot log after the run
    seconds: float

    @property
    def moved(self) -> int:
        return self.start - self.start_before


def oldest_needed(state: RegistryState) -> int:
    """The oldest position the fold still reads back: pending client messages and
    the server messages kept for resuming open sessions' streams (past the fold's
    position when none is)."""
    oldest = state.position + 1
    for session in state.sessions.values():
        if session.pending:  # in log order: the first is the oldest
            oldest = min(oldest, next(iter(session.pending.values())).position)
        if session.sent:
            oldest = min(oldest, session.sent[0].position)
    return oldest


def _this_process() -> str:
    """Where this process runs, as precisely as a pid means anything: the host and
    its pid namespace (containers sharing a host name have their own)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # no /proc (not Linux): one pid space per host
        namespace = 0
    return f"{socket.gethostname()}:{namespace}:{os.getpid()}"


def by_hand_worker_id() -> str:
    """A ``sessionlog compact`` run's worker id: it names its process, so that the
    next run on this host can tell a run killed while it held the claim from one
    still going, without waiting out its heartbeats."""
    return f"compactor-{secrets.token_hex(4)}@{_this_process()}"


def _process_gone(worker: str) -> bool:
    """Whether ``worker`` is a compact run of this host's pid namespace whose process
    is gone. Any other: not known here (a pid reused since counts as alive, which
    only waits for its heartbeats)."""
    _, at, where = worker.partition("@")
    place, _, pid = where.rpartition(":")
    if not at or place != _this_process().rpartition(":")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: there
        return False
    return False


class Compaction:
    """Runs of one worker: claim, snapshot, move, release."""

    def __init__(
        self,
        log: EventLog,
        worker_id: str,
        *,
        retain: float | None,
        retain_size: int | None,
        worker_ttl: float,
        segment_records: int = SEGMENT_RECORDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.worker_id = worker_id
        self.retain = retain
        self.retain_size = retain_size
        self.worker_ttl = worker_ttl
        self.segment_records = segment_records
        self.clock = clock
        # Counters for /metrics.
        self.runs = 0
        self.archived = 0
        self.start = 1
        self.hot_size = 0
        # The break a run found in the chain, until a run moves again.
        self.chain_broken: str | None = None

    @property
    def possible(self) -> str | None:
        """Why this log cannot be compacted, or None."""
        if self.log.archive is None:
            return f"{self.log.url} has no archive (its URL's archive= option)"
        if self.retain is None and self.retain_size is None:
            return "retention is off (--retain off, no --retain-size)"
        return None

    async def claim(self, projection: RegistryProjection) -> str | None:
        """Claim compaction; return the holder after (this worker's id if won). A
        holder seen dead is taken over."""
        log, me = self.log, self.worker_id
        holder = await log.claim(COMPACTION_KEY, me, None, role="compactor")
        if holder is not None and holder != me and self._dead(projection, holder):
            holder = await log.claim(COMPACTION_KEY, me, holder, role="compactor")
        return holder

    def _dead(self, projection: RegistryProjection, holder: str) -> bool:
        alive = projection.is_alive(holder, self.clock(), self.worker_ttl)
        return not alive or _process_gone(holder)

    async def run(self, projection: RegistryProjection) -> Compacted | None:
        """One run with ``projection`` folded up to now: None if another worker
        holds the claim. Raises what the log raises (the claim is let go)."""
        if await self.claim(projection) != self.worker_id:
            return None
        try:
            return await self._compact(projection)
        finally:
            with contextlib.suppress(LogUnavailable):
                await self.log.release(COMPACTION_KEY, self.worker_id, role="compactor")

    async def _compact(self, projection: RegistryProjection) -> Compacted:
        began = time.perf_counter()
        log = self.log
        start_before = await log.start()
        # The snapshot comes first: a worker starting after the move folds from it,
        # never from below the start (the fold reads nothing but the state, no await).
        position, data = projection.position, encode_snapshot(projection)
        await log.save_snapshot(SNAPSHOT_NAME, position, data)
        needed = min(position + 1, oldest_needed(projection.state))
        start = start_before
        if self.retain is not None:
            start = await log.archive_until(
                needed, older_than=self.clock() - self.retain, segment_records=self.segment_records
            )
        size = await log.hot_size()
        if self.retain_size is not None and size > self.retain_size and start < needed:
            # Records take about the same room each: move the share that is over budget.
            records = await log.head() - start + 1
            over = math.ceil((size - self.retain_size) / (size / records))
            start = await log.archive_until(
                min(needed, start + over), segment_records=self.segment_records
            )
            size = await log.hot_size()
        self.runs += 1
        self.archived += start - start_before
        self.start, self.hot_size = start, size
        self.chain_broken = None
        return Compacted(
            start_before=start_before,
            start=start,
            needed_from=needed,
            hot_size=size,
            seconds=time.perf_counter() - began,
        )

    async def run_logged(self, projection: RegistryProjection) -> Compacted | None:
        """:meth:`run`, its outcome or failure said in one log line; never raises
        what the log or the archive raise (the next run tries again)."""
        try:
            done = await self.run(projection)
        except ChainBroken as exc:
            self.chain_broken = str(exc)
            logger.error(
                "compaction: the hot log's chain is broken, nothing from there on moves "
                "(run sessionlog verify): %s",
                exc,
            )
            return None
        except (EventLogError, OSError) as exc:  # an ArchiveError too
            logger.warning("compaction: %s", exc)
            return None
        if done is not None:
            logger.info("compaction: %s", describe(done))
        return done


def describe(done: Compacted) -> str:
    """One line: what moved, where the log starts, what the hot log holds."""
    if done.moved:
        moved = f"moved {done.moved} records ({done.start_before}-{done.start - 1}) to the archive"
    else:
        moved = "nothing to move"
    return (
        f"{moved}; the log starts at {done.start} (needed from {done.needed_from}); "
        f"hot log {done.hot_size} bytes; {done.seconds:.2f} s"
    )


async def compact_by_hand(settings: Settings) -> Compacted | None:
    """``sessionlog compact``: one run now, as a worker of its own (announced, beating
    while it runs, stopped after), so that serving workers see it alive or dead like
    any other. None if another worker holds the claim.

    Raises:
        ValueError: this log cannot be compacted with these settings.
        EventLogError: the log or its archive failed (ChainBroken: nothing moved).
    """
    check_log_file(settings.log_url)
    log = await open_log(settings.log_url)
    try:
        worker = by_hand_worker_id()
        compaction = Compaction(
            log,
            worker,
            retain=settings.retain,
            retain_size=settings.retain_size,
            worker_ttl=settings.worker_ttl,
            segment_records=settings.archive_segment_records,
        )
        impossible = compaction.possible
        if impossible is not None:
            raise ValueError(f"cannot compact: {impossible}")
        loaded = await load_consistent(log)
        projection = loaded.projection
        projection.closed_retention = settings.closed_retention
        await catch_up(log, projection)
        started = WorkerStarted(host=socket.gethostname(), pid=os.getpid())
        await log.append([started], worker=worker)

        async def beat() -> None:
            while True:
                await asyncio.sleep(settings.heartbeat_interval)
                with contextlib.suppress(LogUnavailable):
                    await log.append([WorkerHeartbeat()], worker=worker)

        beating = asyncio.create_task(beat())
        try:
            # The run's own records (its start, claim) are in the fold it snapshots.
            await catch_up(log, projection)
            return await compaction.run(projection)
        finally:
            beating.cancel()
            with contextlib.suppress(LogUnavailable):
                await log.append([WorkerStopped()], worker=worker)
    finally:
        await log.close()


class CompactionCollector(Collector):
    """Compaction's numbers for Prometheus, read at scrape time."""

    def __init__(self, compaction: Callable[[], Compaction | None]) -> None:
        self.compaction = compaction

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        compaction = self.compaction()
        if compaction is None:
            return
        yield CounterMetricFamily(
            "sessionlog_compaction_runs", "Compaction runs this worker made.", compaction.runs
        )
        yield CounterMetricFamily(
            "sessionlog_compaction_archived_records",
            "Records this worker's compaction moved to the archive.",
            compaction.archived,
        )
        yield GaugeMetricFamily(
            "sessionlog_log_start_position",
            "The log start position after this worker's last compaction.",
            compaction.start,
        )
        yield GaugeMetricFamily(
            "sessionlog_hot_log_bytes",
            "Bytes of the hot log after this worker's last compaction.",
            compaction.hot_size,
        )
        yield GaugeMetricFamily(
            "sessionlog_compaction_chain_broken",
            "1 while compaction found the hot log's chain broken (nothing moves).",
            1 if compaction.chain_broken else 0,
        )
