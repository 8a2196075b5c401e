"""``sessionlog replay``: audits from the log, as a table or as JSON lines.

A session's timeline (every event about it, with time and worker), everything one
identity did (its sessions and its stateless 2026-07-28 requests with their
answers), or the registry's state at a position or a time; ``--follow`` goes on
printing records as they are appended.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import msgspec
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from eventlog import EventLog, EventLogError, Record, open_log
from projections import RegistryProjection, Selection

from .reading import select, state_at

__all__ = [
    "ReplayError",
    "check_log_file",
    "open_read_only",
    "parse_point",
    "progress_bar",
    "record_fields",
    "replay",
]

MAX_POSITION_DIGITS = 19  # a log position fits in a signed 64-bit integer

# Logs longer than this get a progress bar (on a terminal).
PROGRESS_FROM = 50_000


class ReplayError(Exception):
    """A problem to report in one line, without a traceback."""


def parse_point(text: str) -> tuple[int | None, datetime | None]:
    """``--at``: a log position (digits) or an ISO 8601 time (UTC unless it says)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_POSITION_DIGITS:
        return int(text), None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise ReplayError(f"--at {shown!r} is neither a position nor an ISO 8601 time") from None
    return None, moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _payload(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


def record_fields(record: Record) -> dict[str, Any]:
    """A record as plain JSON-ready fields; message payloads as the JSON they hold."""
    event = {
        key: _payload(value) if isinstance(value, bytes) else value
        for key, value in msgspec.structs.asdict(record.event).items()
    }
    return {
        "position": record.position,
        "at": _iso(record.at),
        "worker": record.worker,
        "type": type(record.event).__name__,
        **event,
    }


def _details(fields: dict[str, Any]) -> str:
    skip = {"position", "at", "worker", "type", "id", "session_id"}
    return " ".join(
        f"{key}={orjson.dumps(value).decode() if not isinstance(value, str) else value}"
        for key, value in fields.items()
        if key not in skip and value not in (None, {}, [])
    )


class Printer:
    """Writes records and states in the chosen format."""

    def __init__(self, output_format: str, out: TextIO) -> None:
        self.jsonl = output_format == "jsonl"
        self.out = out
        self.console = Console(file=out, width=160 if not out.isatty() else None)

    def line(self, value: Any) -> None:
        self.out.write(orjson.dumps(value).decode() + "\n")
        self.out.flush()

    def records(self, records: list[Record], title: str) -> None:
        if self.jsonl:
            for record in records:
                self.line(record_fields(record))
            return
        table = Table(title=title)
        for column in ("position", "time (UTC)", "worker", "event", "session", "details"):
            table.add_column(column, overflow="fold")
        for record in records:
            fields = record_fields(record)
            table.add_row(
                str(record.position),
                fields["at"],
                record.worker,
                fields["type"],
                fields.get("session_id") or "",
                _details(fields),
            )
        self.console.print(table)

    def follow(self, record: Record) -> None:
        """One record as it is appended: a JSON line, or one line of text."""
        fields = record_fields(record)
        if self.jsonl:
            self.line(fields)
            return
        session = fields.get("session_id") or "-"
        self.console.print(
            f"{record.position} {fields['at']} {record.worker} {fields['type']} {session} "
            f"{_details(fields)}",
            markup=False,
            highlight=False,
        )

    def state(self, projection: RegistryProjection) -> None:
        state = projection.state
        sessions = [
            {
                "session_id": s.session_id,
                "transport": s.transport,
                "user": state.users.get(s.session_id) or s.user,
                "holder": s.holder,
                "opened": _iso(s.opened_at),
                "last_activity": _iso(s.last_activity),
                "pending": len(s.pending),
                "protocol_version": s.protocol_version,
            }
            for s in state.sessions.values()
        ]
        workers = [
            {
                "worker": w.worker,
                "host": w.host,
                "pid": w.pid,
                "last_seen": _iso(w.last_seen),
                "stopped": _iso(w.stopped_at) if w.stopped_at is not None else None,
            }
            for w in state.workers.values()
        ]
        if self.jsonl:
            self.line({"kind": "position", "position": state.position})
            for row in sessions:
                self.line({"kind": "session", **row})
            for row in workers:
                self.line({"kind": "worker", **row})
            return
        for title, rows in (
            (f"Open sessions at position {state.position}", sessions),
            ("Workers", workers),
        ):
            table = Table(title=title)
            for column in rows[0] if rows else ["(none)"]:
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*("" if v is None else str(v) for v in row.values()))
            self.console.print(table)


@contextmanager
def progress_bar(head: int) -> Iterator[Callable[[int], None] | None]:
    if head < PROGRESS_FROM or not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn("reading the log"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("read", total=head)
        yield lambda position: progress.update(task, completed=position)


def check_log_file(url: str) -> None:
    """Audits read (and compact works on a log that is there): none may leave an
    empty log behind a mistyped SQLite path."""
    if urlsplit(url).scheme.startswith("sqlite"):
        path = url.split("://", 1)[1].split("?", 1)[0][1:]
        if not Path(path).is_file():
            raise ReplayError(f"no log file at {path!r}")


async def open_read_only(url: str) -> EventLog:
    check_log_file(url)
    return await open_log(url, read_only=True)


async def replay(
    url: str,
    *,
    session_id: str | None = None,
    user: str | None = None,
    at: str | None = None,
    output_format: str = "table",
    follow: bool = False,
    out: TextIO | None = None,
) -> None:
    """Print a session's timeline, an identity's activity or the registry's state;
    see the module docstring."""
    if session_id is not None and user is not None:
        raise ReplayError("give --session or --user, not both")
    position, moment = parse_point(at) if at is not None else (None, None)
    selection = (
        Selection(session_id=session_id, user=user)
        if session_id is not None or user is not None
        else None
    )
    printer = Printer(output_format, out or sys.stdout)
    try:
        log = await open_read_only(url)
    except EventLogError as exc:
        raise ReplayError(str(exc)) from exc
    try:
        head = await log.head()
        with progress_bar(head) as progress:
            if selection is not None:
                records = await select(log, selection, progress=progress)
                if not records:
                    what = f"session {session_id!r}" if user is None else f"user {user!r}"
                    raise ReplayError(f"{what} is not in {log.url}")
                cutoff = moment.timestamp() if moment is not None else None
                records = [
                    r
                    for r in records
                    if (position is None or r.position <= position)
                    and (cutoff is None or r.at <= cutoff)
                ]
                printer.records(
                    records, f"Session {session_id}" if user is None else f"User {user}"
                )
            else:
                projection = await state_at(log, position=position, at=moment, progress=progress)
                printer.state(projection)
        if follow:
            async for record in log.tail(after=head):
                if selection is None or selection(record):
                    printer.follow(record)
    except EventLogError as exc:
        raise ReplayError(str(exc)) from exc
    finally:
        await log.close()


def run(args: Any) -> int:
    """The ``replay`` subcommand: 0 on success, 1 with a one-line error."""
    try:
        asyncio.run(
            replay(
                args.log,
                session_id=args.session,
                user=args.user,
                at=args.at,
                output_format=args.format,
                follow=args.follow,
            )
        )
    except ReplayError as exc:
        print(f"sessionlog replay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
