"""SQLEventLog: what the SQLite and PostgreSQL backends share, on SQLAlchemy 2 Core.

Appends are serialized (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level
advisory lock) and positions are assigned under that lock as ``head + 1 ...``, so
positions are gapless and a transaction with a higher position can never commit
before one with a lower position: a reader never skips a row that commits late.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator

import asyncpg
from sqlalchemy import Connection, insert, select
from sqlalchemy import exc as sa_exc

from ._sql_schema import SQLSchema
from ._urls import check_namespace, redact
from .base import Append, Claim, EventLog, Operation, Release, StoredEvent
from .errors import EventLogError, LogUnavailable

__all__ = ["SQLEventLog"]

# Limits
IN_CHUNK = 500  # event ids per IN (...) lookup; well under every driver's parameter limit


class SQLEventLog(EventLog):
    def __init__(self, url: str, *, namespace: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url=redact(url), clock=clock)
        self._schema = SQLSchema(check_namespace(namespace))

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.DataError) as exc:
            raise EventLogError(f"{self.url}: {exc.orig}") from exc
        except (
            sa_exc.DBAPIError,
            sa_exc.TimeoutError,
            sqlite3.Error,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            OSError,
            TimeoutError,
        ) as exc:
            reason = getattr(exc, "orig", None) or exc
            raise LogUnavailable(f"{self.url} is unavailable: {reason}") from exc

    def _rows_after(self, after: int, limit: int):  # type: ignore[no-untyped-def]
        return self._schema.rows_after.where(self._schema.events.c.position > after).limit(limit)

    def _apply(self, conn: Connection, operations: list[Operation]) -> tuple[list[object], int]:
        """Apply ``operations`` inside the caller's locked transaction.

        Returns one result per operation and how many records were written. Runs
        synchronously: in a worker thread for SQLite, in ``run_sync`` for asyncpg.
        """
        events, owners = self._schema.events, self._schema.owners
        at = self.clock()
        head = conn.execute(self._schema.head).scalar_one()
        positions = self._known_positions(conn, operations)
        new_rows: list[dict[str, object]] = []

        def store(worker: str, event: StoredEvent) -> int:
            nonlocal head
            position = positions.get(event.event_id)
            if position is None:
                head += 1
                position = positions[event.event_id] = head
                new_rows.append(
                    {
                        "position": position,
                        "event_id": event.event_id,
                        "session_id": event.session_id,
                        "at": at,
                        "worker": worker,
                        "data": event.data,
                    }
                )
            return position

        results: list[object] = []
        for operation in operations:
            if isinstance(operation, Append):
                results.append([store(operation.worker, e) for e in operation.events])
                continue
            where = owners.c.session_id == operation.session_id
            current = conn.execute(select(owners.c.owner).where(where)).scalar()
            if isinstance(operation, Claim):
                if current == operation.expected:
                    if current is None:
                        row = {"session_id": operation.session_id, "owner": operation.worker}
                        conn.execute(insert(owners).values(row))
                    else:
                        conn.execute(owners.update().where(where).values(owner=operation.worker))
                    store(operation.worker, operation.event)
                    current = operation.worker
                results.append(current)
            else:
                assert isinstance(operation, Release)
                owned = current == operation.worker
                if owned:
                    conn.execute(owners.delete().where(where))
                    store(operation.worker, operation.event)
                results.append(owned)
        if new_rows:
            conn.execute(insert(events), new_rows)
        return results, len(new_rows)

    def _known_positions(self, conn: Connection, operations: list[Operation]) -> dict[str, int]:
        ids = [
            e.event_id
            for operation in operations
            for e in (operation.events if isinstance(operation, Append) else [operation.event])
        ]
        events = self._schema.events
        known: dict[str, int] = {}
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start : start + IN_CHUNK]
            query = select(events.c.event_id, events.c.position).where(events.c.event_id.in_(chunk))
            known.update((row[0], row[1]) for row in conn.execute(query))
        return known
