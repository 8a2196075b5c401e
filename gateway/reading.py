"""Reading the log into projections: page by page, from the newest snapshot, and
the audit queries (a session's timeline, what one identity did, the registry at a
point). The folds themselves are pure, in :mod:`projections`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import NamedTuple

import msgspec

from eventlog import EventLog, Record
from projections import SNAPSHOT_NAME, RegistryProjection, RegistryState, Selection, restore

__all__ = [
    "Loaded",
    "catch_up",
    "holds",
    "load_consistent",
    "pages",
    "records",
    "select",
    "state_at",
    "timeline",
]

PAGE = 5_000


async def pages(
    log: EventLog, after: int = 0, until: int | None = None
) -> AsyncIterator[tuple[list[Record], int]]:
    """The decodable records after ``after`` up to ``until`` (default: the head now),
    page by page, each with the position it reached (past undecodable records too).

    The next page is read while the caller works on this one.
    """
    until = await log.head() if until is None else until
    position = after

    def read(start: int) -> asyncio.Task[tuple[list[Record], int]]:
        return asyncio.ensure_future(log.read_page(after=start, limit=min(PAGE, until - start)))

    upcoming = read(position) if position < until else None
    try:
        while upcoming is not None:
            page, reached = await upcoming
            if reached == position:
                return
            position = reached
            upcoming = read(position) if position < until else None
            yield page, reached
    finally:
        if upcoming is not None:
            upcoming.cancel()


async def records(
    log: EventLog,
    after: int = 0,
    until: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> AsyncIterator[Record]:
    """Every decodable record after ``after`` up to ``until`` (default: the head now).

    ``progress`` is told the position reached after each page (skipped records too).
    """
    async for page, reached in pages(log, after, until):
        for record in page:
            yield record
        if progress is not None:
            progress(reached)


async def select(
    log: EventLog, selection: Selection, progress: Callable[[int], None] | None = None
) -> list[Record]:
    """The records ``selection`` shows, in log order, up to the head now."""
    return [record async for record in records(log, progress=progress) if selection(record)]


async def timeline(
    log: EventLog, session_id: str, progress: Callable[[int], None] | None = None
) -> list[Record]:
    """Every record about ``session_id``, in log order, with its time and worker."""
    return await select(log, Selection(session_id=session_id), progress)


async def state_at(
    log: EventLog,
    *,
    position: int | None = None,
    at: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> RegistryProjection:
    """The registry as it was after ``position``, or after the last record appended at
    or before the time ``at`` (an aware datetime); with neither, as it is now."""
    if position is not None and at is not None:
        raise ValueError("give a position or a time, not both")
    projection = RegistryProjection()
    until = await log.head() if position is None else min(position, await log.head())
    cutoff = None if at is None else at.timestamp()
    async for record in records(log, until=until, progress=progress):
        if cutoff is not None and record.at > cutoff:
            break
        projection.apply(record)
    if cutoff is None:
        projection.advance(until)
    return projection


async def holds(log: EventLog, state: RegistryState) -> bool:
    """Whether ``log`` is still the log ``state`` was folded from: its head is not
    below the state's position, and the record at the last position folded is the
    one folded (same event id, same append time). One head read, one record read."""
    # As they are now: a tail may fold on meanwhile.
    position, last = state.position, (state.last_position, state.last_id, state.last_at)
    if await log.head() < position:
        return False
    if last[0] == 0:
        return True
    found = await log.read(after=last[0] - 1, limit=1)
    return bool(found) and (found[0].position, found[0].event.id, found[0].at) == last


class Loaded(NamedTuple):
    projection: RegistryProjection
    # A snapshot was stored but describes another log (one rolled back behind it):
    # the next one saved must replace it.
    stale: bool


async def load_consistent(log: EventLog) -> Loaded:
    """The projection from the newest snapshot in ``log`` if it is readable and the
    log still holds what it was folded from, or an empty one."""
    stored = await log.load_snapshot(SNAPSHOT_NAME)
    if stored is None:
        return Loaded(RegistryProjection(), stale=False)
    try:
        projection = restore(stored)
    except msgspec.DecodeError:  # unreadable: fold from the start
        return Loaded(RegistryProjection(), stale=True)
    if await holds(log, projection.state):
        return Loaded(projection, stale=False)
    return Loaded(RegistryProjection(), stale=True)


async def catch_up(log: EventLog, projection: RegistryProjection, until: int | None = None) -> int:
    """Apply every record after ``projection.position`` up to ``until`` (default: the head).

    Returns the number of records newly applied.
    """
    applied = 0
    async for page, reached in pages(log, projection.position, until):
        applied += projection.apply_all(page)
        projection.advance(reached)
    return applied
