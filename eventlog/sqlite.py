"""SQLiteEventLog: the embedded default, one file in WAL mode.

Appends are serialized by ``BEGIN IMMEDIATE`` and positions are assigned under that
lock as ``head + 1 ...``, so positions are gapless and a transaction with a higher
position can never commit before one with a lower position: a reader never skips a
row that commits late.

Commits run on the driver on the event loop's thread when the write lock is free
(a WAL commit takes tens of microseconds, a hop to a thread several times that), in
one writer thread when they must wait for the lock or the disk. Reads run on the
event loop's thread too, on a connection of their own: a WAL reader never waits for
the writer, and a page of rows takes about what a hop to a thread would. SQLite has
no notifications, so a tail reads on a commit of its own process, and on a change of
the database files (inotify) by another: one cheap query per worker, never per
session.

Retention: every row carries its link in the hash chain (eventlog.chain), computed
in the append's transaction from the stored head row's link. Records moved to the
archive (a directory beside the file, ``<file>.archive``, unless the URL's
``archive=`` says otherwise) leave the events table in one transaction with the
new start position, and ``PRAGMA incremental_vacuum`` then gives their pages back
to the file system. A file created before retention existed opens as it is: its
events table gets its ``chain`` column (old rows stay unchained), but it keeps its
``auto_vacuum`` mode (none), which only a ``VACUUM`` can change, so its trimmed
pages are reused for new rows rather than given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from sqlalchemy import Engine, create_engine
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from ._sql_schema import SQLSchema
from ._urls import check_namespace, redact
from .archive import Archive, directory_archive
from .base import Append, Claim, EventLog, LogRow, Operation, Release, StoredEvent
from .chain import GENESIS, ChainedRow, linker
from .errors import EventLogError, LogUnavailable

__all__ = ["SQLiteEventLog"]

logger = logging.getLogger("sessionlog.eventlog")

Durability = Literal["off", "normal", "full"]

# Timeouts
WATCH_BURST = 0.05  # s of polling at poll_interval after the database files changed
WATCH_FALLBACK = 0.25  # s between polls with a file watch and no change: a safety net
# s a read waits for a lock (only a WAL recovery or reset takes one from a reader):
# reads run on the event loop's thread, which must not stall.
READ_BUSY_TIMEOUT = 0.1
T = TypeVar("T")

# An events row as inserted: position, event_id, session_id, at, worker, data, chain.
EventRow = tuple[int, str, str | None, float, str, bytes, bytes]


class SQLiteEventLog(EventLog):
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sessionlog",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        # Durability: "normal" survives a process crash, "full" also a power loss.
        durability: Durability = "normal",
        # Timeouts
        poll_interval: float = 0.002,
        # s a write waits for another process's write lock (SQLite's busy timeout)
        timeout: float = 5.0,
        # Limits
        checkpoint_rows: int = 10_000,
        # An Archive, or a URL's ``archive=`` option: a directory, or ``none``. By
        # default the directory ``<file>.archive`` beside the log file.
        archive: Archive | str | None = None,
    ) -> None:
        schema = SQLSchema(check_namespace(namespace))
        if durability not in ("off", "normal", "full"):
            raise EventLogError(f"durability must be off, normal or full, not {durability!r}")
        sa_url = make_url(url).set(drivername="sqlite+pysqlite")
        path = sa_url.database or ""
        if not isinstance(archive, Archive):
            archive = directory_archive(archive, f"{path}.archive")
        super().__init__(url=redact(url), clock=clock, read_only=read_only, archive=archive)
        self._schema, self._path = schema, path
        # How often a waiting tail looks at the head.
        self._poll_interval = poll_interval
        # One writer thread: SQLite has one writer at a time anyway.
        self._durability, self._busy_timeout = durability, timeout
        self._write_conn: sqlite3.Connection | None = None  # for appends
        self._write_waits = True  # whether it waits for a busy lock (its busy_timeout)
        # The WAL is checkpointed after the commit that follows this many rows since
        # the last, which then runs in the writer thread, rather than by SQLite's own
        # checkpoint: that runs in whichever commit crosses its threshold, with an
        # fsync, maybe on the event loop's thread.
        self._checkpoint_rows = checkpoint_rows
        self._unchecked_rows = 0
        # For the rest of the writes (tables, snapshots), on the same one thread.
        self._writer = _engine(sa_url, durability, timeout)
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="sessionlog-sqlite-write")
        self._read_conn: sqlite3.Connection | None = None  # see _reading
        # The statements of reads and appends, on the driver: SQLAlchemy's statement
        # and row machinery would cost more than SQLite's own work.
        events, owners = self._schema.events.name, self._schema.owners.name
        self._read_sql = _select_rows(events, "position, at, worker, data")
        self._head_sql = f"SELECT coalesce(max(position), 0) FROM {events}"
        # The head is never trimmed: the last row is the head record, with its link.
        self._head_link_sql = f"SELECT position, chain FROM {events} ORDER BY position DESC LIMIT 1"
        self._link = linker(self.hash_name)
        self._chained_sql = _select_rows(events, "position, at, worker, data, chain")
        start = self._schema.start.name
        self._start_sql = f"SELECT position, chain FROM {start} WHERE id = 1"
        self._has_start_table = True  # see _read_older_format
        self._set_start_sql = (
            f"INSERT INTO {start} (id, position, chain) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET position = excluded.position, chain = excluded.chain"
        )
        self._trim_sql = f"DELETE FROM {events} WHERE position < ?"
        snapshots = self._schema.snapshots.name
        self._has_events_sql = (
            f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{events}'"
        )
        self._load_snapshot_sql = f"SELECT data FROM {snapshots} WHERE name = ?"
        # Keeps the newest only: an older snapshot than the stored one changes nothing,
        # unless told to replace it (the last parameter).
        self._save_snapshot_sql = (
            f"INSERT INTO {snapshots} (name, position, data) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position, data = excluded.data "
            f"WHERE {snapshots}.position < excluded.position OR ?"
        )
        # One statement and one parameter (a JSON array) for a whole batch's ids.
        self._known_ids_sql = (
            f"SELECT event_id, position FROM {events} "
            "WHERE event_id IN (SELECT value FROM json_each(?))"
        )
        self._owner_sql = f"SELECT owner FROM {owners} WHERE session_id = ?"
        self._add_owner_sql = f"INSERT INTO {owners} (session_id, owner) VALUES (?, ?)"
        self._set_owner_sql = f"UPDATE {owners} SET owner = ? WHERE session_id = ?"
        self._drop_owner_sql = f"DELETE FROM {owners} WHERE session_id = ?"
        columns = [column.name for column in self._schema.events.columns]
        self._insert_sql = (
            f"INSERT INTO {events} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        # Change notifications for the database files, from the log's opening on:
        # False where the platform has none (then tails poll every poll_interval).
        self._watch: _FileWatch | Literal[False] | None = None
        self._changed_at = 0.0

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
            OSError,
            TimeoutError,
        ) as exc:
            reason = getattr(exc, "orig", None) or exc
            raise LogUnavailable(f"{self.url} is unavailable: {reason}") from exc

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        with self._translate_errors():
            return await asyncio.get_running_loop().run_in_executor(self._write_thread, fn, *args)

    async def _open(self) -> None:
        if self.read_only:
            with self._translate_errors():
                found = self._reading().execute(self._has_events_sql).fetchone()
            if found is None:
                events = self._schema.events.name
                raise EventLogError(f"{self.url} is not a sessionlog log: no {events} table")
            self._read_older_format()
        else:
            await self._in_writer(self._create_tables)
        self._watch = _FileWatch.start(self._path, self._on_file_change)

    def _create_tables(self) -> None:
        """Create what is missing; give an older log's events table its chain column
        (its rows stay unchained, new ones chain from GENESIS after them)."""
        events = self._schema.events.name
        with self._writer.begin() as conn:
            self._schema.metadata.create_all(conn)
            columns = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({events})")}
            if "chain" not in columns:
                conn.exec_driver_sql(f"ALTER TABLE {events} ADD COLUMN chain BLOB")

    def _read_older_format(self) -> None:
        """A read-only open changes nothing: a log older than chains is read as one
        whose records are all unchained and were never trimmed."""
        events, start = self._schema.events.name, self._schema.start.name
        conn = self._reading()
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({events})")}
        if "chain" not in columns:
            self._chained_sql = _select_rows(events, "position, at, worker, data, NULL")
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (start,)
        ).fetchone()
        self._has_start_table = found is not None

    async def _commit(self, operations: list[Operation]) -> list[object]:
        # On the event loop's thread when the write lock is free and nothing is synced
        # to disk: a WAL commit then takes tens of microseconds, a hop to the writer
        # thread and back several times that. Else in the writer thread, which may
        # wait for the lock (another process writing) or for the disk.
        checkpoint = self._unchecked_rows >= self._checkpoint_rows
        if self._durability != "full" and not checkpoint:
            with self._translate_errors():
                try:
                    return self._commit_now(operations, wait=False)
                except _Busy:
                    pass
        return await self._in_writer(self._commit_now, operations, True, checkpoint)

    def _commit_now(
        self, operations: list[Operation], wait: bool, checkpoint: bool = False
    ) -> list[object]:
        """Commit on the driver, on the one write connection (group commits run one at
        a time, so its two callers never meet): SQLAlchemy's transaction and statement
        machinery cost more than SQLite's own work. Without ``wait``, raises _Busy at
        once if another connection holds the write lock. With ``checkpoint``, copies
        the WAL back into the database after the commit (PASSIVE: without waiting for
        readers), before this connection writes again, so the WAL can start over."""
        conn = self._write_connection()
        if wait != self._write_waits:
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000) if wait else 0}")
            self._write_waits = wait
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not wait and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise _Busy from exc
            raise
        try:
            results, rows = self._apply(conn, operations)
            if rows:
                conn.executemany(self._insert_sql, rows)
            conn.execute("COMMIT")
            self._unchecked_rows += len(rows)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self._watch:
            # The file changes of this commit are this process's own: its tails read
            # them anyway, woken by the commit, and would otherwise poll for a moment.
            self._watch.discard()
        if checkpoint:
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._unchecked_rows = 0
            except sqlite3.Error as exc:  # committed all the same; the next one tries again
                logger.warning("checkpoint of %s failed: %s", self.url, exc)
        return results

    def _apply(
        self, conn: sqlite3.Connection, operations: list[Operation]
    ) -> tuple[list[object], list[EventRow]]:
        """Apply ``operations`` inside _commit_now's locked transaction, but for the
        events rows, which it inserts in one ``executemany``.

        Returns one result per operation and the new rows, all columns in table order.
        """
        at = self.clock()
        found = conn.execute(self._head_link_sql).fetchall()
        # A head written before chains has no link: the chain starts again after it.
        head, previous = (found[0][0], found[0][1] or GENESIS) if found else (0, GENESIS)
        positions = self._known_positions(conn, operations)
        new_rows: list[EventRow] = []
        link = self._link

        def store(worker: str, event: StoredEvent) -> int:
            nonlocal head, previous
            position = positions.get(event.event_id)
            if position is None:
                head += 1
                position = positions[event.event_id] = head
                data = event.data
                previous = link(previous, position, at, worker, data)
                new_rows.append(
                    (position, event.event_id, event.session_id, at, worker, data, previous)
                )
            return position

        results: list[object] = []
        for operation in operations:
            if isinstance(operation, Append):
                results.append([store(operation.worker, e) for e in operation.events])
                continue
            found = conn.execute(self._owner_sql, (operation.key,)).fetchall()
            current = found[0][0] if found else None
            if isinstance(operation, Claim):
                if current == operation.expected:
                    if current is None:
                        conn.execute(self._add_owner_sql, (operation.key, operation.worker))
                    else:
                        conn.execute(self._set_owner_sql, (operation.worker, operation.key))
                    store(operation.worker, operation.event)
                    current = operation.worker
                results.append(current)
            else:
                assert isinstance(operation, Release)
                owned = current == operation.worker
                if owned:
                    conn.execute(self._drop_owner_sql, (operation.key,))
                    store(operation.worker, operation.event)
                results.append(owned)
        return results, new_rows

    def _known_positions(
        self, conn: sqlite3.Connection, operations: list[Operation]
    ) -> dict[str, int]:
        ids = [
            e.event_id
            for operation in operations
            for e in (operation.events if isinstance(operation, Append) else [operation.event])
        ]
        return dict(conn.execute(self._known_ids_sql, (orjson.dumps(ids).decode(),)).fetchall())

    def _write_connection(self) -> sqlite3.Connection:
        """The connection appends are committed on, opened on the first."""
        if self._write_conn is None:
            self._write_conn = _connect(self._path, self._durability, self._busy_timeout)
            self._write_conn.execute("PRAGMA wal_autocheckpoint=0")  # see _commit_now
        return self._write_conn

    def _reading(self) -> sqlite3.Connection:
        """The connection reads run on, on the event loop's thread, opened on the first."""
        if self._read_conn is None:
            # Read-only opens the file as such: an audit never changes it, not even
            # its journal mode.
            target = (
                Path(self._path).absolute().as_uri() + "?mode=ro" if self.read_only else self._path
            )
            self._read_conn = sqlite3.connect(
                target, isolation_level=None, timeout=READ_BUSY_TIMEOUT, uri=self.read_only
            )
            # 64 MiB of page cache (the default is 2 MiB): the indexes of a long log stay hot.
            self._read_conn.execute("PRAGMA cache_size=-65536")
        return self._read_conn

    async def _read_rows(self, after: int, limit: int) -> list[LogRow]:
        with self._translate_errors():
            # The driver's tuples, in LogRow's shape.
            return self._reading().execute(self._read_sql, (after, limit)).fetchall()

    async def _head(self) -> int:
        with self._translate_errors():
            return self._reading().execute(self._head_sql).fetchone()[0]  # type: ignore[no-any-return]

    async def _read_chained(self, after: int, limit: int) -> list[ChainedRow]:
        with self._translate_errors():
            rows = self._reading().execute(self._chained_sql, (after, limit)).fetchall()
        return [ChainedRow(*row) for row in rows]

    async def _start(self) -> tuple[int, bytes]:
        if not self._has_start_table:
            return 1, GENESIS
        with self._translate_errors():
            found = self._reading().execute(self._start_sql).fetchone()
        return (1, GENESIS) if found is None else (found[0], found[1])

    async def _trim(self, before: int, anchor: bytes, expected_start: int) -> int:
        # In the writer thread: the delete takes the write lock, which may have to
        # wait, and frees a segment's pages.
        return await self._in_writer(self._trim_now, before, anchor, expected_start)

    def _trim_now(self, before: int, anchor: bytes, expected_start: int) -> int:
        # Not on the appends' connection: an inline commit may be using it meanwhile.
        with self._writer.connect() as conn:
            with conn.begin():  # BEGIN IMMEDIATE: the compare and the trim are one step
                found = conn.exec_driver_sql(self._start_sql).fetchone()
                start = 1 if found is None else found[0]
                trimmed = start == expected_start and before > start
                if trimmed:
                    conn.exec_driver_sql(self._set_start_sql, (before, anchor))
                    conn.exec_driver_sql(self._trim_sql, (before,))
                    start = before
            if trimmed:
                # Gives the freed pages back to the file system (a file without
                # auto_vacuum keeps them for new rows: this then does nothing). It
                # frees a page per step of the statement, and only executescript
                # steps a statement without result columns to its end.
                driver = conn.connection.dbapi_connection
                assert driver is not None
                try:
                    driver.executescript("BEGIN IMMEDIATE; PRAGMA incremental_vacuum; COMMIT")
                except sqlite3.Error as exc:  # trimmed all the same; the next trim frees them
                    if driver.in_transaction:
                        driver.execute("ROLLBACK")
                    logger.warning("freeing the pages of %s failed: %s", self.url, exc)
        return start

    async def _hot_size(self) -> int:
        """The bytes of the file's pages in use: every table of the log (owners and
        snapshots too), free pages not counted. The WAL is not counted: it is
        transient, copied back by the next checkpoint and then written over."""
        with self._translate_errors():
            conn = self._reading()
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size  # type: ignore[no-any-return]

    async def _save_snapshot(self, name: str, position: int, data: bytes, replace: bool) -> None:
        await self._in_writer(self._save_snapshot_now, name, position, data, replace)

    def _save_snapshot_now(self, name: str, position: int, data: bytes, replace: bool) -> None:
        # Not on the appends' connection: an inline commit may be using it meanwhile.
        with self._writer.begin() as conn:
            conn.exec_driver_sql(self._save_snapshot_sql, (name, position, data, replace))

    async def _load_snapshot(self, name: str) -> bytes | None:
        with self._translate_errors():
            found = self._reading().execute(self._load_snapshot_sql, (name,)).fetchone()
        return found[0] if found else None

    async def _wait(self, after: int, generation: int) -> None:
        # Polling every few ms costs CPU even when idle, so with a file watch we poll
        # only just after another process changed the files (its commit becomes
        # visible a moment after its last write), and otherwise wait for a change.
        busy = (
            self._watch is False
            or asyncio.get_running_loop().time() - self._changed_at < WATCH_BURST
        )
        await self._wakeup.wait(generation, self._poll_interval if busy else WATCH_FALLBACK)

    def _on_file_change(self) -> None:
        self._changed_at = asyncio.get_running_loop().time()
        self._wakeup.notify()

    async def _close(self) -> None:
        if self._watch:
            self._watch.stop()
        self._wakeup.notify()
        if self._read_conn is not None:
            self._read_conn.close()
        await asyncio.get_running_loop().run_in_executor(None, self._write_thread.shutdown)
        if self._write_conn is not None:
            self._write_conn.close()
        self._writer.dispose()


def _select_rows(events: str, columns: str) -> str:
    """The statement of a page of rows after a position."""
    return f"SELECT {columns} FROM {events} WHERE position > ? ORDER BY position LIMIT ?"


def _engine(url: Any, durability: str, busy_timeout: float) -> Engine:
    engine = create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
    )

    @sa_event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        _configure_connection(dbapi_connection, durability)

    @sa_event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # Writers take the lock up front: processes creating the tables at once take
        # turns, and a snapshot's compare and write are one step.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _configure_connection(connection: sqlite3.Connection, durability: str) -> None:
    # We issue BEGIN ourselves: the driver's implicit transactions start deferred, and
    # a deferred writer can fail to upgrade its lock. Readers run autocommit.
    connection.isolation_level = None
    # Before the journal mode, which writes a new file's header: a log created now
    # can give trimmed pages back (see _trim_now). On an existing file this changes
    # nothing (only a VACUUM would).
    connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={durability.upper()}")
    # 64 MiB of page cache (the default is 2 MiB): the indexes of a long log stay hot.
    connection.execute("PRAGMA cache_size=-65536")


def _connect(path: str, durability: str, busy_timeout: float) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False)
    _configure_connection(connection, durability)
    return connection


class _Busy(Exception):
    """Another connection holds the write lock (and this commit would not wait)."""


class _FileWatch:
    """Calls back when the database file or its WAL changes, from any process (inotify)."""

    def __init__(self, inotify: Any, names: set[str], callback: Callable[[], None]) -> None:
        self._inotify, self._names, self._callback = inotify, names, callback

    @classmethod
    def start(cls, path: str, callback: Callable[[], None]) -> _FileWatch | Literal[False]:
        try:
            from inotify_simple import INotify, flags
        except ImportError:  # not Linux
            return False
        directory, name = os.path.split(os.path.abspath(path))
        inotify = INotify(nonblocking=True)
        inotify.add_watch(directory, flags.MODIFY | flags.CREATE | flags.MOVED_TO)
        watch = cls(inotify, {name, f"{name}-wal"}, callback)
        asyncio.get_running_loop().add_reader(inotify.fileno(), watch._readable)
        return watch

    def _readable(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:  # the writer thread's discard read them meanwhile
            return
        if any(event.name in self._names for event in events):
            self._callback()

    def discard(self) -> None:
        """Forget the changes seen so far. Safe right after a commit of this process,
        before its tails read: any other process's commit finished by then is read
        with it, and one still being written changes the files again."""
        with contextlib.suppress(OSError, ValueError):
            self._inotify.read(timeout=0)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
        self._inotify.close()
