"""The EventLog contract, and the machinery every backend shares.

A backend implements its primitives (``_commit``, ``_read_rows``, ``_head``,
``_save_snapshot``, ``_load_snapshot`` and ``_close``), each raising only
:mod:`eventlog.errors`, and may refine how a tail waits (``_wait`` or
``_tail_rows``). Everything else lives here, once: group commit, encoding and
decoding, skipping records that cannot be decoded, and tails that survive a
backend outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NamedTuple

import msgspec

from .archive import Archive, ArchiveError, Manifest, decode_segment, encode_segment
from .chain import GENESIS, ChainedRow, Walk
from .codec import Record, decode_records, encode_event
from .errors import ChainBroken, CodecError, EventLogError, LogRolledBack, LogUnavailable
from .events import Event, OwnerClaimed, OwnerReleased, Role

__all__ = [
    "Append",
    "Claim",
    "EventLog",
    "LogRow",
    "LogStats",
    "Operation",
    "Release",
    "StoredEvent",
]

logger = logging.getLogger("sessionlog.eventlog")

# Limits
MAX_BATCH_EVENTS = 2_000  # events in one group commit; bounds transaction size and latency
# Events a batch leaves for another idle flusher (commits_in_flight > 1) at the least:
# smaller batches are cheaper whole than as two commits.
MIN_SHARED_BATCH_EVENTS = 250
TAIL_RETRY_MAX = 2.0  # seconds between a tail's attempts while the backend is down
SEGMENT_RECORDS = 20_000  # records in one archive segment, at the most


# Structs without GC tracking: a log holds millions of these, and tracked tuples
# would make every garbage collection walk them all.
class StoredEvent(msgspec.Struct, array_like=True, gc=False):
    """An encoded event on its way into storage."""

    event_id: str
    session_id: str | None
    data: bytes


class LogRow(NamedTuple):
    """A record as storage returns it, before decoding. A backend may return its
    driver's plain tuples of this shape instead (rows are only read by index or
    unpacked), which spares building an object per row on a replay. Tuples of
    untracked values leave the garbage collector's tracking at its first pass."""

    position: int
    at: float
    worker: str
    data: bytes


class Append(NamedTuple):
    worker: str
    events: list[StoredEvent]


class Claim(NamedTuple):
    key: str  # the owners entry: the session id, prefixed by the role unless "worker"
    worker: str
    expected: str | None
    event: StoredEvent  # the OwnerClaimed to append if the compare-and-set succeeds


class Release(NamedTuple):
    key: str
    worker: str
    event: StoredEvent  # the OwnerReleased to append if ``worker`` owned the session


Operation = Append | Claim | Release


class LogStats(msgspec.Struct, kw_only=True):
    """Counters a log keeps about itself (process-local)."""

    commits: int = 0  # transactions (or pipelines) written
    # Round trips to storage besides commits: reads (tails' included), head queries
    # and a waiting tail's checks (SQLite head polls, PostgreSQL fallback reads).
    queries: int = 0
    operations: int = 0  # append/claim/release calls those commits carried
    undecodable: int = 0  # distinct records skipped because they could not be decoded


def _owner_key(session_id: str, role: Role) -> str:
    return session_id if role == "worker" else f"{role}:{session_id}"


def _events(operation: Operation) -> int:
    return len(operation.events) if isinstance(operation, Append) else 1


def _stored(event: Event) -> StoredEvent:
    return StoredEvent(event.id, getattr(event, "session_id", None), encode_event(event))


class _Wakeup:
    """Wakes tails of this process when something may have been appended."""

    def __init__(self) -> None:
        # Bumped on every wake-up, so a waiter that read before a bump never sleeps past it.
        self.generation = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, generation: int, at_most: float | None) -> None:
        if generation != self.generation:
            return
        # asyncio.timeout, not wait_for: on 3.11 wait_for can turn a cancellation that
        # races its timeout into a TimeoutError, and a tail would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._event.wait()


class EventLog(ABC):
    """One ordered, durable log of events.

    Ordering: every record gets a position, strictly increasing from 1 with no gaps.
    A reader never sees position ``p + 1`` before ``p``.

    Idempotency: appending an event whose id is already in the log stores nothing
    and returns the existing position.

    Atomicity: the events of one :meth:`append` call are stored together or not at
    all; :meth:`claim` and :meth:`release` change the owner and append their event
    in one atomic step.

    Group commit: concurrent calls from one process share one transaction (or
    pipeline), up to a bounded batch; a lone call is written at once. A backend may
    let up to ``commits_in_flight`` such batches be on their way at once.

    Errors: a backend that cannot be reached, or does not answer within the log's
    timeout, raises :class:`LogUnavailable`; the same object works again once it is
    back. Nothing else from a driver escapes.
    """

    # The hash of the chain of links every record carries (see eventlog.chain).
    hash_name = "sha256"

    # Group commits that may be in flight at once. One: each batch waits for the one
    # before it. A backend whose commits are atomic on the server whatever their
    # order (Redis: one script call, positions assigned inside it) raises it, so a
    # batch is packed and sent while the one before it is still being written.
    commits_in_flight = 1

    def __init__(
        self,
        *,
        url: str,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        archive: Archive | None = None,
    ) -> None:
        # Shown in errors and logs; never carries credentials.
        self.url = url
        # Where records below the log's start position are (None: nowhere, they are gone).
        self.archive = archive
        # The log start position as last seen, and the archived segment last read.
        self._known_start = 1
        self._segment: tuple[Manifest, list[ChainedRow]] | None = None
        # Opened to read only (audits): storage is neither created nor written.
        self.read_only = read_only
        # Wall time of appends; injectable so tests control it.
        self.clock = clock
        self.stats = LogStats()
        self._wakeup = _Wakeup()
        # Group commit: operations waiting for the flusher, each with its caller's future.
        self._pending: deque[tuple[Operation, asyncio.Future[object]]] = deque()
        # At most ``commits_in_flight``; each leaves the set in the step it sees nothing
        # more pending, so an operation never waits without a flusher to take it.
        self._flushers: set[asyncio.Task[None]] = set()
        self._committing = 0  # flushers waiting for their batch's commit
        # Positions already reported as undecodable, so each is logged and counted once.
        self._undecodable: set[int] = set()
        self._closed = False
        # See watch_appends: (folded, suspect).
        self._append_watch: tuple[Callable[[], int], Callable[[], None]] | None = None

    # -- the contract ------------------------------------------------------------

    async def append(self, events: Sequence[Event], *, worker: str) -> list[int]:
        """Append ``events`` atomically, in order; return their positions.

        An event whose id is already in the log is not stored again: its existing
        position is returned in its place.

        Raises:
            LogUnavailable: the backend cannot be reached; nothing was acknowledged.
            CodecError: an event cannot be encoded.
        """
        if not events:
            return []
        watch = self._append_watch
        floor = watch[0]() if watch is not None else 0
        result = await self._submit(Append(worker, [_stored(event) for event in events]))
        assert isinstance(result, list)
        if watch is not None and max(result) <= floor:
            watch[1]()
        return result

    def watch_appends(self, folded: Callable[[], int], suspect: Callable[[], None]) -> None:
        """Call ``suspect`` after an append whose positions are all at or below what
        ``folded()`` said as it was submitted. A new record lands above every record
        already there, so either each of its events was stored before (a retry), or
        the log was rolled back behind what its reader had folded."""
        self._append_watch = (folded, suspect)

    async def read(self, after: int = 0, limit: int = 1000) -> list[Record]:
        """Return up to ``limit`` records with positions above ``after``, in order.

        Records that cannot be decoded are skipped (and counted in
        ``stats.undecodable``), so fewer than ``limit`` may come back even when more
        follow; continue from the last position returned, or use :meth:`tail`.
        """
        return (await self.read_page(after, limit))[0]

    async def read_page(self, after: int = 0, limit: int = 1000) -> tuple[list[Record], int]:
        """Like :meth:`read`, and also the position reached: that of the last row
        looked at, decodable or not (``after`` when there was none). Continue from it."""
        self.stats.queries += 1
        rows = await self._read_rows(after, limit)
        if rows and rows[0][0] != after + 1 and after + 1 < await self.start():
            rows = await self._read_archived(after, limit)  # below the hot log
        return self._decode(rows), (rows[-1][0] if rows else after)

    async def tail(self, after: int = 0, *, limit: int = 1000) -> AsyncIterator[Record]:
        """Yield every record after ``after``, in order, then wait for new ones, until
        the log is closed (see :meth:`tail_pages`)."""
        async for records, _ in self.tail_pages(after, limit=limit):
            for record in records:
                yield record

    async def tail_pages(
        self,
        after: int = 0,
        *,
        limit: int = 1000,
        resumed: Callable[[], Awaitable[None]] | None = None,
        after_at: float | None = None,
    ) -> AsyncIterator[tuple[list[Record], int]]:
        """Yield the records after ``after`` a page at a time, each with the position
        it reaches (past records that could not be decoded), then wait for new ones,
        until the log is closed.

        One tail serves a whole worker: it costs one wait on the backend (a blocking
        read, a notification channel or a head poll), never one per session. While
        the backend is down the tail retries with backoff and resumes where it was.
        ``resumed`` is awaited before each retry (a LogUnavailable from it counts as
        the backend still down): a backend that comes back may have come back older.

        Each read takes the record at the position reached too, and raises
        :class:`LogRolledBack` if that is not the record read before (for the first
        read, if ``after_at`` is given, not one appended at ``after_at``): the log
        was rolled back behind this tail and written again. (A rollback that the
        log has not yet grown past shows as nothing to read; the reader asks
        :meth:`head`.)
        """
        position, at = after, after_at
        delay = 0.01
        failed = False
        while not self._closed:  # a closed log ends its tails
            try:
                if failed and resumed is not None:
                    await resumed()
                rows = await self._tail_rows(position, limit)
            except LogUnavailable as exc:
                if self._closed:
                    return
                if not failed:
                    logger.warning("tail of %s waiting for the backend: %s", self.url, exc)
                failed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, TAIL_RETRY_MAX)
                continue
            delay = 0.01
            failed = False
            if position:
                read_before = rows[0]
                if read_before[0] == position and (at is None or read_before[1] == at):
                    rows = rows[1:]
                else:
                    start = await self.start()
                    if position + 1 < start:  # left behind by a compaction
                        rows = await self._read_archived(position, limit)
                    elif read_before[0] != position + 1 or position + 1 != start:
                        raise LogRolledBack(
                            f"{self.url}: the record at {position} is not the one read before"
                        )
                    # else the record read before was archived since: the rest is here
            position, at = rows[-1][0], rows[-1][1]
            yield self._decode(rows), position

    async def head(self) -> int:
        """Return the last position in the log, 0 when it is empty."""
        self.stats.queries += 1
        return await self._head()

    async def claim(
        self, session_id: str, worker: str, expected: str | None = None, *, role: Role = "worker"
    ) -> str | None:
        """Compare-and-set the owner of ``session_id``; return the owner after the call.

        If the current owner is ``expected`` (None: no owner), ``worker`` becomes the
        owner and an :class:`OwnerClaimed` event is appended in the same atomic step.
        Otherwise nothing changes. Either way the effective owner is returned, so of
        many concurrent claimers exactly one wins and all learn who.

        ``role`` names which ownership: ``"worker"`` (the worker holding the session's
        stream) or ``"user"`` (the identity the session belongs to); each role has
        its own owner. For ``"user"``, ``worker`` is that identity.
        """
        event = OwnerClaimed(session_id=session_id, owner=worker, previous=expected, role=role)
        claim = Claim(_owner_key(session_id, role), worker, expected, _stored(event))
        owner = await self._submit(claim)
        assert owner is None or isinstance(owner, str)
        return owner

    async def release(
        self, session_id: str, worker: str, *, role: Role = "worker", reason: str | None = None
    ) -> bool:
        """Give up ownership of ``session_id`` if ``worker`` holds it.

        Appends :class:`OwnerReleased` (with ``reason``, if given) in the same atomic
        step. Returns whether ``worker`` was the owner.
        """
        event = OwnerReleased(session_id=session_id, owner=worker, role=role, reason=reason)
        released = await self._submit(Release(_owner_key(session_id, role), worker, _stored(event)))
        return bool(released)

    async def save_snapshot(
        self, name: str, position: int, data: bytes, *, replace: bool = False
    ) -> None:
        """Store ``data`` as snapshot ``name`` taken at ``position``, beside the log.

        Only the newest is kept: a snapshot older than the stored one is ignored, so
        workers saving the same snapshot at once do no harm. With ``replace`` it is
        stored whatever the stored one's position: after the log was rolled back
        behind the stored one, which then describes a log that no longer exists.
        """
        self._check_writable()
        await self._save_snapshot(name, position, data, replace)

    async def load_snapshot(self, name: str) -> bytes | None:
        """The newest snapshot stored under ``name``, or None."""
        return await self._load_snapshot(name)

    # -- retention: the log start position, the archive, the chain ---------------

    async def start(self) -> int:
        """The log start position: the first record in the hot log. Records below it
        were moved to the archive (1 while nothing was). Positions are never reused:
        the head record always stays in the hot log."""
        self._known_start = (await self._start())[0]
        return self._known_start

    async def hot_size(self) -> int:
        """Bytes the hot log takes in its storage, as the backend counts them."""
        self.stats.queries += 1
        return await self._hot_size()

    async def read_chained(self, after: int = 0, limit: int = 1000) -> list[ChainedRow]:
        """Up to ``limit`` hot-log rows after ``after`` as stored, with their links,
        undecoded: what a move to the archive and a verify read."""
        self.stats.queries += 1
        return await self._read_chained(after, limit)

    async def start_anchor(self) -> tuple[int, bytes]:
        """The start position and the link of the record before it (GENESIS at 1)."""
        start, anchor = await self._start()
        self._known_start = start
        return start, anchor

    async def archive_until(
        self,
        before: int,
        *,
        older_than: float | None = None,
        segment_records: int = SEGMENT_RECORDS,
    ) -> int:
        """Move the records below ``before`` (appended before ``older_than``, if given:
        the move stops at the first that is not) from the hot log to the archive, a
        segment at a time: copy, read back and compare, then trim the hot log up to
        it, which is the move's commit point. Returns the start position after.

        A move killed at any point leaves each record in exactly one place: a segment
        written but not yet trimmed for is not archived (readers keep to segments
        below the start) and is replaced by the next move. Never moves the head
        record. Moves of one log must not run at once (a move's segment could replace
        one another move just committed): callers hold a claim, as the gateway's
        compaction does through the log. Raises :class:`ChainBroken` instead of
        moving records whose links do not hold (someone changed the hot log: an
        operator must look).
        """
        self._check_writable()
        archive = self.archive
        if archive is None:
            raise EventLogError(f"{self.url} has no archive to move records to")
        start, anchor = await self.start_anchor()
        before = min(before, await self.head())
        if start >= before:
            return start
        walk = Walk(self.hash_name, expected=start, previous=anchor)
        while start < before:
            wanted = min(segment_records, before - start)
            rows = await self.read_chained(start - 1, wanted)
            if older_than is not None:
                kept = next((i for i, row in enumerate(rows) if row.at >= older_than), len(rows))
                rows = rows[:kept]
            if not rows:
                break
            if rows[0].position != start:
                raise EventLogError(f"{self.url}: another move changed the start position")
            if not walk.feed(rows, "hot log"):
                assert walk.broken is not None
                raise ChainBroken(walk.broken)
            manifest, blob = encode_segment(rows, self.hash_name, anchor)
            await archive.write(manifest, blob)
            if decode_segment(manifest, await archive.read(manifest)) != rows:
                raise ArchiveError(f"segment {manifest.name} did not read back as written")
            last = rows[-1]
            link = last.chain if last.chain is not None else GENESIS
            moved = await self._trim(last.position + 1, link, start)
            if moved != last.position + 1:
                raise EventLogError(
                    f"{self.url}: another move changed the start position to {moved} meanwhile"
                )
            start, anchor = moved, link
            self._known_start = moved
            if len(rows) < wanted:
                break
        return start

    async def _read_archived(self, after: int, limit: int) -> list[LogRow]:
        """Rows after ``after`` from the archive, up to ``limit`` and below the start."""
        archive, start = self.archive, self._known_start
        if archive is None:
            return []
        rows: list[LogRow] = []
        wanted = after + 1
        manifests: list[Manifest] | None = None
        while len(rows) < limit and wanted < start:
            cached = self._segment
            if cached is None or not cached[0].first <= wanted <= cached[0].last:
                if manifests is None:
                    manifests = [m for m in await archive.manifests() if m.last < start]
                manifest = next((m for m in manifests if m.first <= wanted <= m.last), None)
                if manifest is None:
                    raise ArchiveError(f"{archive.url} has no segment holding position {wanted}")
                cached = self._segment = (
                    manifest,
                    decode_segment(manifest, await archive.read(manifest)),
                )
            manifest, segment = cached
            offset = wanted - manifest.first
            for position, at, worker, data, _ in segment[offset : offset + limit - len(rows)]:
                rows.append((position, at, worker, data))  # LogRow's shape
            wanted = rows[-1][0] + 1
        return rows

    async def close(self) -> None:
        """Finish pending writes and release connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flushers:
            await asyncio.gather(*list(self._flushers), return_exceptions=True)
        if self.archive is not None:
            await self.archive.close()
        await self._close()

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what a backend implements ----------------------------------------------

    @abstractmethod
    async def _commit(self, operations: list[Operation]) -> list[object]:
        """Apply ``operations`` in order in one transaction; one result per operation.

        Results: positions (list[int]) for Append, the effective owner for Claim,
        whether it released for Release.
        """

    @abstractmethod
    async def _read_rows(self, after: int, limit: int) -> list[LogRow]: ...

    @abstractmethod
    async def _head(self) -> int: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _save_snapshot(
        self, name: str, position: int, data: bytes, replace: bool
    ) -> None: ...

    @abstractmethod
    async def _load_snapshot(self, name: str) -> bytes | None: ...

    @abstractmethod
    async def _read_chained(self, after: int, limit: int) -> list[ChainedRow]:
        """Hot-log rows after ``after`` with their links, in position order."""

    @abstractmethod
    async def _start(self) -> tuple[int, bytes]:
        """The start position and the link of the record before it ((1, GENESIS)
        while nothing was trimmed)."""

    @abstractmethod
    async def _trim(self, before: int, anchor: bytes, expected_start: int) -> int:
        """Atomically, if the start position is ``expected_start``: make it ``before``
        (with ``anchor``, the link of the record at ``before - 1``) and delete the rows
        below it. Returns the start position after the call either way."""

    @abstractmethod
    async def _hot_size(self) -> int: ...

    async def _wait(self, after: int, generation: int) -> None:
        """Return when records after ``after`` may exist. Default: an append in this process."""
        await self._wakeup.wait(generation, None)

    async def _tail_rows(self, after: int, limit: int) -> list[LogRow]:
        """Return the row at ``after`` (unless ``after`` is 0, or it is not there),
        then at least one row after it, waiting as long as it takes."""
        overlap = 1 if after else 0
        while True:
            generation = self._wakeup.generation
            self.stats.queries += 1
            rows = await self._read_rows(after - overlap, limit + overlap)
            if len(rows) > overlap:
                return rows
            await self._wait(after, generation)

    # -- shared machinery --------------------------------------------------------

    def _decode(self, rows: list[LogRow]) -> list[Record]:
        return decode_records(rows, self._skip)

    def _check_writable(self) -> None:
        if self.read_only:
            raise EventLogError(f"{self.url} is open read-only")

    def _skip(self, position: int, exc: CodecError) -> None:
        if position in self._undecodable:
            return
        self._undecodable.add(position)
        self.stats.undecodable += 1
        logger.warning("skipping undecodable record %d in %s: %s", position, self.url, exc)

    async def _submit(self, operation: Operation) -> object:
        if self._closed:  # a stopping worker's late request: unavailable here, as on PostgreSQL
            raise LogUnavailable(f"{self.url} is closed")
        self._check_writable()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append((operation, future))
        if len(self._flushers) < self.commits_in_flight:
            flusher = asyncio.create_task(self._flush())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)  # one cancelled unstarted
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                bound = MAX_BATCH_EVENTS
                idle = len(self._flushers) - self._committing
                if idle > 1:  # a large batch is shared with the others, so that they overlap
                    pending = sum(_events(operation) for operation, _ in self._pending)
                    share = max(-(-pending // idle), MIN_SHARED_BATCH_EVENTS)
                    bound = min(bound, share)
                batch, size = [], 0
                while self._pending and size < bound:
                    operation, future = self._pending.popleft()
                    batch.append((operation, future))
                    size += _events(operation)
                self._committing += 1
                try:
                    results = await self._commit([operation for operation, _ in batch])
                except Exception as exc:  # every caller of the batch learns why it failed
                    if isinstance(exc, LogUnavailable):
                        # And every caller queued behind it: each would wait out the
                        # timeout again for the same answer.
                        batch += self._pending
                        self._pending.clear()
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                finally:
                    self._committing -= 1
                self.stats.commits += 1
                self.stats.operations += len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                self._wakeup.notify()
        finally:
            self._flushers.discard(asyncio.current_task())  # type: ignore[arg-type]
