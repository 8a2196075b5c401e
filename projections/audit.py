"""Audit queries over the log, as folds: a session's timeline, the registry at a point."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime

from eventlog import EventLog, Record

from .registry import RegistryProjection

__all__ = ["records", "state_at", "timeline"]

PAGE = 5_000


async def records(
    log: EventLog,
    after: int = 0,
    until: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> AsyncIterator[Record]:
    """Every decodable record after ``after`` up to ``until`` (default: the head now).

    ``progress`` is told the position reached after each page (skipped records too).
    """
    until = await log.head() if until is None else until
    position = after
    while position < until:
        page, reached = await log.read_page(after=position, limit=min(PAGE, until - position))
        if reached == position:
            return
        for record in page:
            yield record
        position = reached
        if progress is not None:
            progress(position)


async def timeline(
    log: EventLog, session_id: str, progress: Callable[[int], None] | None = None
) -> list[Record]:
    """Every record about ``session_id``, in log order, with its time and worker."""
    return [
        record
        async for record in records(log, progress=progress)
        if getattr(record.event, "session_id", None) == session_id
    ]


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
