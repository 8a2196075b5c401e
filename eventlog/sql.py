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
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence

import asyncpg
from sqlalchemy import Connection, insert, select
from sqlalchemy import exc as sa_exc

from ._sql_schema import SQLSchema
from ._urls import check_namespace, redact
from .base import Append, Claim, EventLog, Operation, Release, StoredEvent
from .errors import EventLogError, LogUnavailable

__all__ = ["EventRow", "SQLEventLog"]

# An events row as inserted: position, event_id, session_id, at, worker, data.
EventRow = tuple[int, str, str | None, float, str, bytes]
# Runs one statement in the driver's own terms (its placeholders); its rows.
Execute = Callable[[str, tuple[object, ...]], Sequence[Sequence[object]]]


class SQLEventLog(EventLog):
    def __init__(self, url: str, *, namespace: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url=redact(url), clock=clock)
        self._schema = SQLSchema(check_namespace(namespace))
        # The statements of an append, in the driver's terms: SQLAlchemy's statement
        # machinery would cost more than the database's own work.
        events, owners = self._schema.events.name, self._schema.owners.name
        first, second = self._placeholder(1), self._placeholder(2)
        self._head_sql = f"SELECT coalesce(max(position), 0) FROM {events}"
        self._owner_sql = f"SELECT owner FROM {owners} WHERE session_id = {first}"
        self._add_owner_sql = f"INSERT INTO {owners} (session_id, owner) VALUES ({first}, {second})"
        self._set_owner_sql = f"UPDATE {owners} SET owner = {first} WHERE session_id = {second}"
        self._drop_owner_sql = f"DELETE FROM {owners} WHERE session_id = {first}"

    @staticmethod
    @abstractmethod
    def _placeholder(number: int) -> str:
        """The driver's placeholder for the statement's parameter ``number`` (from 1)."""

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

    def _rows_after_sql(self, first: str, second: str) -> str:
        """SELECT of the rows after one position, at most a number of them, with the
        driver's placeholders for those two: read straight from the driver, as
        SQLAlchemy's row processing would cost more than the query."""
        table = self._schema.events.name
        return (
            f"SELECT position, at, worker, data FROM {table} "
            f"WHERE position > {first} ORDER BY position LIMIT {second}"
        )

    def _apply(
        self, execute: Execute, operations: list[Operation]
    ) -> tuple[list[object], list[EventRow]]:
        """Apply ``operations`` inside the caller's locked transaction, but for the
        events rows, which the caller inserts (each backend has its fastest way).

        Returns one result per operation and the new rows, all columns in table order.
        Runs synchronously: in the writer thread for SQLite, in ``run_sync`` for asyncpg.
        """
        at = self.clock()
        head = execute(self._head_sql, ())[0][0]
        positions = self._known_positions(execute, operations)
        new_rows: list[EventRow] = []

        def store(worker: str, event: StoredEvent) -> int:
            nonlocal head
            position = positions.get(event.event_id)
            if position is None:
                head += 1
                position = positions[event.event_id] = head
                new_rows.append(
                    (position, event.event_id, event.session_id, at, worker, event.data)
                )
            return position

        results: list[object] = []
        for operation in operations:
            if isinstance(operation, Append):
                results.append([store(operation.worker, e) for e in operation.events])
                continue
            found = execute(self._owner_sql, (operation.key,))
            current = found[0][0] if found else None
            if isinstance(operation, Claim):
                if current == operation.expected:
                    if current is None:
                        execute(self._add_owner_sql, (operation.key, operation.worker))
                    else:
                        execute(self._set_owner_sql, (operation.worker, operation.key))
                    store(operation.worker, operation.event)
                    current = operation.worker
                results.append(current)
            else:
                assert isinstance(operation, Release)
                owned = current == operation.worker
                if owned:
                    execute(self._drop_owner_sql, (operation.key,))
                    store(operation.worker, operation.event)
                results.append(owned)
        return results, new_rows

    def _store_snapshot(self, conn: Connection, name: str, position: int, data: bytes) -> None:
        """Keep the newest snapshot of ``name``; the caller holds the write lock."""
        snapshots = self._schema.snapshots
        where = snapshots.c.name == name
        current = conn.execute(select(snapshots.c.position).where(where)).scalar()
        if current is None:
            conn.execute(insert(snapshots).values(name=name, position=position, data=data))
        elif current < position:
            conn.execute(snapshots.update().where(where).values(position=position, data=data))

    def _snapshot_query(self, name: str):  # type: ignore[no-untyped-def]
        snapshots = self._schema.snapshots
        return select(snapshots.c.data).where(snapshots.c.name == name)

    def _known_positions(self, execute: Execute, operations: list[Operation]) -> dict[str, int]:
        ids = [
            e.event_id
            for operation in operations
            for e in (operation.events if isinstance(operation, Append) else [operation.event])
        ]
        # One statement and one parameter for the whole batch.
        return dict(execute(self._known_ids_sql, (self._ids_parameter(ids),)))  # type: ignore[arg-type]

    @property
    @abstractmethod
    def _known_ids_sql(self) -> str:
        """SELECT event_id, position of the stored events whose id is in one list parameter."""

    @abstractmethod
    def _ids_parameter(self, ids: list[str]) -> object:
        """That list parameter, as the driver takes it."""
