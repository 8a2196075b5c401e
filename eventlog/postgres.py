"""PostgresEventLog: PostgreSQL through SQLAlchemy 2 async with asyncpg.

Appends hold a transaction-level advisory lock (as proven event stores do), so
concurrent transactions cannot commit positions out of order. Each commit sends
``NOTIFY`` with it; a tail ``LISTEN``s on one connection per log object.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from .base import LogRow, Operation
from .sql import EventRow, SQLEventLog

__all__ = ["PostgresEventLog"]


class PostgresEventLog(SQLEventLog):
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sessionlog",
        clock: Callable[[], float] = time.time,
        # Timeouts
        notify_fallback: float = 1.0,
        connect_timeout: float = 10.0,
        # Limits
        pool_size: int = 5,
    ) -> None:
        super().__init__(url, namespace=namespace, clock=clock)
        # A waiting tail reads again this often even without a notification: a safety net.
        self._notify_fallback = notify_fallback
        self._channel = f"{namespace}_events"
        # The same key in every process that uses this namespace.
        lock_key = zlib.crc32(namespace.encode()) & 0x7FFFFFFF
        self._lock = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=lock_key)
        self._notify = select(func.pg_notify(self._channel, ""))
        self._engine = create_async_engine(
            make_url(url).set(drivername="postgresql+asyncpg"),
            pool_size=pool_size,
            # A round trip per checkout, but a server restart costs no failed call.
            pool_pre_ping=True,
            # One INSERT text for every batch size, sent through asyncpg's pipelined
            # executemany: multi-row VALUES would prepare a new statement per size.
            use_insertmanyvalues=False,
            connect_args={"timeout": connect_timeout},
        )
        self._listen_conn: AsyncConnection | None = None
        self._listen_driver: Any = None
        self._read_sql = self._rows_after_sql("$1", "$2")
        self._columns = [column.name for column in self._schema.events.columns]

    @staticmethod
    def _placeholder(number: int) -> str:
        return f"${number}"

    @property
    def _known_ids_sql(self) -> str:
        table = self._schema.events.name
        # A join with unnest, not "= ANY($1)": once asyncpg's prepared statement goes
        # to a generic plan, ANY over a long array can fall back to a sequential scan.
        return (
            f"SELECT e.event_id, e.position FROM unnest($1::varchar[]) AS ids(id) "
            f"JOIN {table} AS e ON e.event_id = ids.id"
        )

    def _ids_parameter(self, ids: list[str]) -> object:
        return ids

    async def _open(self) -> None:
        with self._translate_errors():
            async with self._engine.begin() as conn:
                # Locked, so processes opening the log at once do not race to create it.
                await conn.execute(self._lock)
                await conn.run_sync(self._schema.metadata.create_all)

    async def _commit(self, operations: list[Operation]) -> list[object]:
        with self._translate_errors():
            async with self._engine.begin() as conn:
                await conn.execute(self._lock)
                results, rows = await conn.run_sync(self._apply_on, operations)
                if rows:
                    # Binary COPY on the same connection, inside the same transaction:
                    # a third cheaper than executemany for a group commit's rows.
                    driver = (await conn.get_raw_connection()).driver_connection
                    await driver.copy_records_to_table(
                        self._schema.events.name, records=rows, columns=self._columns
                    )
                    await conn.execute(self._notify)  # delivered when the transaction commits
        return results

    def _apply_on(
        self, conn: Connection, operations: list[Operation]
    ) -> tuple[list[object], list[EventRow]]:
        def execute(sql: str, params: tuple[object, ...]) -> Any:
            result = conn.exec_driver_sql(sql, params)
            return result.all() if result.returns_rows else []

        return self._apply(execute, operations)

    async def _read_rows(self, after: int, limit: int) -> list[LogRow]:
        with self._translate_errors():
            async with self._engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                return [LogRow(*row) for row in await driver.fetch(self._read_sql, after, limit)]

    async def _head(self) -> int:
        with self._translate_errors():
            async with self._engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                return await driver.fetchval(self._head_sql)

    async def _save_snapshot(self, name: str, position: int, data: bytes) -> None:
        with self._translate_errors():
            async with self._engine.begin() as conn:
                await conn.execute(self._lock)
                await conn.run_sync(self._store_snapshot, name, position, data)

    async def _load_snapshot(self, name: str) -> bytes | None:
        with self._translate_errors():
            async with self._engine.connect() as conn:
                return (await conn.execute(self._snapshot_query(name))).scalar()

    async def _wait(self, after: int, generation: int) -> None:
        if self._listen_driver is None or self._listen_driver.is_closed():
            await self._start_listening()
            return  # commits before LISTEN took effect were not notified: read again
        await self._wakeup.wait(generation, self._notify_fallback)

    async def _start_listening(self) -> None:
        await self._stop_listening()
        with self._translate_errors():
            conn = await self._engine.connect()
            try:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.add_listener(self._channel, self._on_notify)
                # A dropped connection wakes the tail too, so it notices and reconnects.
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
        await self._stop_listening()
        await self._engine.dispose()
