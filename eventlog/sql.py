"""SQLEventLog: SQLite and PostgreSQL through SQLAlchemy 2 async Core.

Appends are serialized (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level
advisory lock) and positions are assigned under that lock as ``head + 1 ...``, so
positions are gapless and a transaction with a higher position can never commit
before one with a lower position: a reader never skips a row that commits late.

Tails wait differently per dialect: PostgreSQL commits ``NOTIFY`` with the append
and a tail ``LISTEN``s on one connection per log; SQLite has no notifications, so a
tail polls the head, one cheap query per worker, never per session.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import asyncpg
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ._sql_schema import SQLSchema
from ._urls import check_namespace, redact
from .base import Append, Claim, EventLog, Operation, Release, Row, StoredEvent
from .errors import EventLogError, LogUnavailable

__all__ = ["SQLEventLog"]

Durability = Literal["off", "normal", "full"]

# Limits
IN_CHUNK = 500  # event ids per IN (...) lookup; well under every driver's parameter limit


class SQLEventLog(EventLog):
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sessionlog",
        clock: Callable[[], float] = time.time,
        # Durability (SQLite): "normal" survives a process crash, "full" also power loss.
        durability: Durability = "normal",
        # Timeouts
        poll_interval: float = 0.002,
        notify_fallback: float = 1.0,
        busy_timeout: float = 30.0,
        # Limits
        pool_size: int = 5,
    ) -> None:
        sa_url = make_url(url)
        super().__init__(url=redact(url), clock=clock)
        self._schema = SQLSchema(check_namespace(namespace))
        # SQLite tails poll the head this often; PostgreSQL tails re-read this often
        # even without a notification, as a safety net.
        self._poll_interval = poll_interval
        self._notify_fallback = notify_fallback
        self._channel = f"{namespace}_events"
        # Advisory lock key: the same for every process using this namespace.
        self._lock_key = zlib.crc32(namespace.encode()) & 0x7FFFFFFF
        self._is_sqlite = sa_url.get_backend_name() == "sqlite"
        if self._is_sqlite:
            if durability not in ("off", "normal", "full"):
                raise EventLogError(f"durability must be off, normal or full, not {durability!r}")
            self._path = sa_url.database or ""
            self._writer = self._sqlite_engine(
                sa_url.set(drivername="sqlite+aiosqlite"), durability, busy_timeout, 1, True
            )
            self._reader = self._sqlite_engine(
                sa_url.set(drivername="sqlite+aiosqlite"),
                durability,
                busy_timeout,
                pool_size,
                False,
            )
            self._poller: sqlite3.Connection | None = None
        else:
            self._writer = self._reader = create_async_engine(
                sa_url.set(drivername="postgresql+asyncpg"),
                pool_size=pool_size,
                pool_pre_ping=True,
                connect_args={"timeout": busy_timeout},
            )
            self._listen_conn: AsyncConnection | None = None
            self._listen_driver: Any = None

    @staticmethod
    def _sqlite_engine(
        url: Any, durability: str, busy_timeout: float, pool_size: int, writer: bool
    ) -> AsyncEngine:
        engine = create_async_engine(
            url, pool_size=pool_size, max_overflow=0, connect_args={"timeout": busy_timeout}
        )

        @sa_event.listens_for(engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # We issue BEGIN ourselves: the driver's implicit transactions would start
            # deferred, and a deferred writer can fail to upgrade its lock.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={durability.upper()}")
            cursor.close()

        if writer:

            @sa_event.listens_for(engine.sync_engine, "begin")
            def _begin(connection: Any) -> None:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    async def _open(self) -> None:
        with self._translate_errors():
            async with self._writer.begin() as conn:
                await self._lock(conn)
                await conn.run_sync(self._schema.metadata.create_all)

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

    async def _lock(self, conn: AsyncConnection) -> None:
        # SQLite's BEGIN IMMEDIATE already holds the write lock.
        if not self._is_sqlite:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key})

    async def _commit(self, operations: list[Operation]) -> list[object]:
        with self._translate_errors():
            async with self._writer.begin() as conn:
                await self._lock(conn)
                return await self._apply(conn, operations)

    async def _apply(self, conn: AsyncConnection, operations: list[Operation]) -> list[object]:
        events, owners = self._schema.events, self._schema.owners
        at = self.clock()
        head = (await conn.execute(self._schema.head)).scalar_one()
        positions = await self._known_positions(conn, operations)
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
            current = (await conn.execute(select(owners.c.owner).where(where))).scalar()
            if isinstance(operation, Claim):
                if current == operation.expected:
                    if current is None:
                        values = {"session_id": operation.session_id, "owner": operation.worker}
                        await conn.execute(insert(owners).values(values))
                    else:
                        await conn.execute(
                            owners.update().where(where).values(owner=operation.worker)
                        )
                    store(operation.worker, operation.event)
                    current = operation.worker
                results.append(current)
            else:
                assert isinstance(operation, Release)
                owned = current == operation.worker
                if owned:
                    await conn.execute(owners.delete().where(where))
                    store(operation.worker, operation.event)
                results.append(owned)
        if new_rows:
            await conn.execute(insert(events), new_rows)
            if not self._is_sqlite:
                await conn.execute(select(func.pg_notify(self._channel, str(head))))
        return results

    async def _known_positions(
        self, conn: AsyncConnection, operations: list[Operation]
    ) -> dict[str, int]:
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
            known.update((row[0], row[1]) for row in await conn.execute(query))
        return known

    async def _read_rows(self, after: int, limit: int) -> list[Row]:
        query = self._schema.rows_after.where(self._schema.events.c.position > after).limit(limit)
        with self._translate_errors():
            async with self._reader.connect() as conn:
                result = await conn.execute(query)
                return [Row(*row) for row in result]

    async def _head(self) -> int:
        with self._translate_errors():
            async with self._reader.connect() as conn:
                return (await conn.execute(self._schema.head)).scalar_one()

    async def _wait(self, after: int, generation: int) -> None:
        if self._is_sqlite:
            await self._poll(after, generation)
        else:
            await self._listen(generation)

    async def _poll(self, after: int, generation: int) -> None:
        # The poll runs on the event loop's thread: a WAL read of the last rowid takes
        # microseconds, where a hop to the driver's thread would cost more than the query.
        while generation == self._wakeup.generation:
            with self._translate_errors():
                if self._poller is None:
                    self._poller = sqlite3.connect(
                        self._path, check_same_thread=False, isolation_level=None
                    )
                table = self._schema.events.name
                (head,) = self._poller.execute(f"SELECT max(position) FROM {table}").fetchone()
            if (head or 0) > after:
                return
            await self._wakeup.wait(generation, self._poll_interval)

    async def _listen(self, generation: int) -> None:
        if self._listen_driver is None or self._listen_driver.is_closed():
            await self._start_listening()
            return  # commits before LISTEN took effect were not notified: read again
        await self._wakeup.wait(generation, self._notify_fallback)

    async def _start_listening(self) -> None:
        await self._stop_listening()
        with self._translate_errors():
            conn = await self._reader.connect()
            try:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.add_listener(self._channel, self._on_notify)
                driver.add_termination_listener(self._on_notify)
            except BaseException:
                await conn.invalidate()
                raise
            self._listen_conn, self._listen_driver = conn, driver

    def _on_notify(self, *_args: object) -> None:
        self._wakeup.notify()

    async def _stop_listening(self) -> None:
        conn, self._listen_conn, self._listen_driver = self._listen_conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _close(self) -> None:
        self._wakeup.notify()
        if self._is_sqlite:
            if self._poller is not None:
                self._poller.close()
            await self._reader.dispose()
        else:
            await self._stop_listening()
        await self._writer.dispose()
