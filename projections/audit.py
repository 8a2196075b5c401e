"""Audit queries over the log, as folds: a session's timeline, what one identity did,
the registry at a point."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from eventlog import EventLog, Record, SessionOpened, StatelessAnswer, StatelessRequest

from .registry import RegistryProjection

__all__ = ["Selection", "pages", "records", "select", "state_at", "timeline"]

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


class Selection:
    """Which records an audit shows: one session's, or everything one identity did
    (the sessions it opened, with all that happened in them, and its stateless
    requests with their answers). A fold: it learns the identity's sessions and
    requests as it goes, so it must see the records in log order."""

    def __init__(self, *, session_id: str | None = None, user: str | None = None) -> None:
        if (session_id is None) == (user is None):
            raise ValueError("select by a session or by a user")
        self.user = user
        self._sessions = {session_id} if session_id is not None else set()
        self._requests: set[str] = set()

    def __call__(self, record: Record) -> bool:
        event = record.event
        if self.user is not None:
            if isinstance(event, SessionOpened) and event.user == self.user:
                self._sessions.add(event.session_id)
            elif isinstance(event, StatelessRequest) and event.user == self.user:
                self._requests.add(event.id)
                return True
            elif isinstance(event, StatelessAnswer):
                return event.request in self._requests
        return getattr(event, "session_id", None) in self._sessions


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
