"""``sessionlog export``: records as JSON lines for other tools, archive and hot log
read as one log.

A time range (``--since``/``--until``: ISO 8601 times, UTC unless they say, or log
positions; both ends included) and/or sessions (``--session``, repeated); each
record as ``sessionlog replay --format jsonl`` prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from eventlog import EventLogError, Record

from .reading import pages
from .replay import ReplayError, open_read_only, parse_point, progress_bar, record_fields

__all__ = ["export", "run"]


def _bound(text: str | None, name: str) -> tuple[int | None, float | None]:
    """(position, time) of ``--since``/``--until``; neither when not given."""
    if text is None:
        return None, None
    try:
        position, moment = parse_point(text)
    except ReplayError:
        raise ReplayError(
            f"{name} {text[:40]!r} is neither a position nor an ISO 8601 time"
        ) from None
    return position, moment.timestamp() if moment is not None else None


def _wanted(
    since: str | None, until: str | None, sessions: list[str]
) -> tuple[int, Callable[[Record], bool], Callable[[Record], bool]]:
    """(position to read after, whether a record is exported, whether it is past
    the range: reading stops there)."""
    first, since_at = _bound(since, "--since")
    last, until_at = _bound(until, "--until")
    chosen = set(sessions)

    def wanted(record: Record) -> bool:
        if since_at is not None and record.at < since_at:
            return False
        if until_at is not None and record.at > until_at:
            return False
        return not chosen or getattr(record.event, "session_id", None) in chosen

    def past(record: Record) -> bool:
        return last is not None and record.position > last

    return (first - 1 if first else 0), wanted, past


async def export(
    url: str,
    out: TextIO,
    *,
    since: str | None = None,
    until: str | None = None,
    sessions: list[str] | None = None,
) -> int:
    """Write the chosen records to ``out``; return how many."""
    after, wanted, past = _wanted(since, until, sessions or [])
    try:
        log = await open_read_only(url)
    except EventLogError as exc:
        raise ReplayError(str(exc)) from exc
    written = 0
    try:
        head = await log.head()
        with progress_bar(head) as progress:
            async for page, reached in pages(log, after, head):
                for record in page:
                    if past(record):
                        return written
                    if wanted(record):
                        out.write(orjson.dumps(record_fields(record)).decode() + "\n")
                        written += 1
                if progress is not None:
                    progress(reached)
    except EventLogError as exc:
        raise ReplayError(str(exc)) from exc
    finally:
        await log.close()
    return written


def run(args: Any) -> int:
    """The ``export`` subcommand: 0 on success, 1 with a one-line error."""
    try:
        with contextlib.ExitStack() as stack:
            out = sys.stdout if args.output is None else stack.enter_context(open(args.output, "w"))
            asyncio.run(
                export(args.log, out, since=args.since, until=args.until, sessions=args.session)
            )
    except (ReplayError, OSError) as exc:
        print(f"sessionlog export: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
