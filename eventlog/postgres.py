"""PostgresEventLog: PostgreSQL through a raw asyncpg pool.

A group commit is one round trip: one call of a PL/pgSQL function, which the log
creates in its namespace when it opens. A statement outside an explicit
transaction is its own transaction, and in it the function takes a
transaction-level advisory lock (as proven event stores do, so concurrent
transactions cannot commit positions out of order), finds the event ids already
stored, compares and sets owners, inserts the new rows at ``head + 1 ...`` and
sends ``NOTIFY``. A tail ``LISTEN``s on one connection per log object.
SQLAlchemy only parses the URL and writes the tables' DDL.

The hash chain (:mod:`eventlog.chain`) is computed in that same function, from the
link of the head row it reads under the lock: SHA-256 in SQL, byte for byte the
definition in Python. Archived segments go to a table of the same database by
default (:mod:`eventlog.postgres_archive` says why).

Every call waits at most ``timeout`` seconds for the server, connecting included
(the statement on the server is cancelled too), so a hung or partitioned server
raises LogUnavailable instead of hanging its callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateTable

from ._sql_schema import SQLSchema
from ._urls import check_namespace, redact
from .archive import Archive, directory_archive
from .base import Append, Claim, EventLog, LogRow, Operation
from .chain import GENESIS, ChainedRow
from .errors import EventLogError, LogUnavailable
from .postgres_archive import PostgresArchive

__all__ = ["PostgresEventLog"]

T = TypeVar("T")

# Operation kinds, as the commit function takes them.
_APPEND, _CLAIM, _RELEASE = 0, 1, 2
# Errors that say the connection itself is gone (a server restart, a dropped link),
# besides the connection reporting itself closed.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    OSError,
)
# Errors about the request rather than the server's health: retrying will not help.
_REFUSED = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.SyntaxOrAccessError,
    asyncpg.DataError,
)
CLOSE_TIMEOUT = 5.0  # seconds to wait for connections in use when closing
DEFAULT_TIMEOUT = 3.0  # seconds any call may wait for the server


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing. The log never changes session state
    (its locks are transaction-level, its LISTEN has a connection of its own), and
    asyncpg's default reset would cost a round trip per call."""


def _lost(conn: asyncpg.Connection, exc: Exception) -> bool:
    """Whether ``exc`` means the connection is gone, not just this call."""
    if isinstance(exc, _CONNECTION_LOST):
        return True
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took back a connection that closed
        return True


class PostgresEventLog(EventLog):
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sessionlog",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        # Timeouts
        notify_fallback: float = 1.0,
        timeout: float = DEFAULT_TIMEOUT,
        # Limits
        pool_size: int = 5,
        # An Archive, or a URL's ``archive=`` option: ``table`` (the default: a table
        # of the same database), a directory path or ``file://`` URL, or ``none``.
        archive: Archive | str | None = None,
    ) -> None:
        self._schema = schema = SQLSchema(check_namespace(namespace))
        dialect = PGDialect_asyncpg()
        quote = dialect.identifier_preparer
        if isinstance(archive, Archive):
            chosen: Archive | None = archive
        elif archive is None or archive.lower() == "table":
            table = quote.quote(f"{namespace}_archive")
            chosen = PostgresArchive(self._run, table, redact(url))
        else:
            chosen = directory_archive(archive, None)
        super().__init__(url=redact(url), clock=clock, read_only=read_only, archive=chosen)
        # A waiting tail reads again this often even without a notification: a safety net.
        self._notify_fallback = notify_fallback
        # asyncpg.connect's arguments, read from the URL as SQLAlchemy reads them.
        self._timeout = timeout
        self._connect_args: dict[str, Any] = {
            **dialect.create_connect_args(make_url(url).set(drivername="postgresql+asyncpg"))[1],
            "timeout": timeout,  # to connect
            # Each statement: asyncpg gives up waiting, and the server stops working.
            "command_timeout": timeout,
            "server_settings": {"statement_timeout": str(int(timeout * 1000))},
        }
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        events, owners, snapshots, start = (
            quote.format_table(table)
            for table in (schema.events, schema.owners, schema.snapshots, schema.start)
        )
        channel = f"{namespace}_events"
        # The same key in every process that uses this namespace.
        lock_key = zlib.crc32(namespace.encode()) & 0x7FFFFFFF
        # Versioned: a changed signature or body gets a new name, so a process still
        # running an older version does not replace it with its own when it opens.
        function = quote.quote(f"{namespace}_commit_v2")
        self._channel = channel
        self._open_sql = ";\n".join(
            [
                # One simple query is one transaction: the lock is held to the end, so
                # processes opening the log at once do not race to create it.
                f"SELECT pg_advisory_xact_lock({lock_key})",
                *(
                    str(CreateTable(table, if_not_exists=True).compile(dialect=dialect))
                    for table in schema.metadata.sorted_tables
                ),
                _add_chain_column(events),
                *([chosen.create_sql] if isinstance(chosen, PostgresArchive) else []),
                _commit_function(function, events, owners, channel, lock_key),
            ]
        )
        self._commit_sql = (
            f"SELECT positions, owners FROM {function}($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )
        # Read-only opens check the log is there instead of creating it, and read a
        # log not yet migrated to chains as it is.
        self._layout_sql = (
            f"SELECT to_regclass('{events}') IS NOT NULL, to_regclass('{start}') IS NOT NULL, "
            f"EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('{events}') "
            "AND attname = 'chain' AND NOT attisdropped)"
        )
        self._read_sql = (
            f"SELECT position, at, worker, data FROM {events} "
            "WHERE position > $1 ORDER BY position LIMIT $2"
        )
        self._events_table = events
        self._read_chained_sql = _read_chained_sql(events, "chain")
        self._head_sql = f"SELECT coalesce(max(position), 0) FROM {events}"
        self._start_sql = f"SELECT position, chain FROM {start} WHERE id = 1"
        # Appends take the same lock: the start and the rows below it change together.
        self._lock_sql = f"SELECT pg_advisory_xact_lock({lock_key})"
        self._set_start_sql = (
            f"INSERT INTO {start} (id, position, chain) VALUES (1, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET position = excluded.position, chain = excluded.chain"
        )
        self._trim_sql = f"DELETE FROM {events} WHERE position < $1"
        self._hot_size_sql = f"SELECT pg_total_relation_size('{events}')"
        self._save_snapshot_sql = (
            f"INSERT INTO {snapshots} AS s (name, position, data) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position, data = excluded.data "
            "WHERE s.position < excluded.position OR $4"
        )
        self._load_snapshot_sql = f"SELECT data FROM {snapshots} WHERE name = $1"

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except _REFUSED as exc:
            raise EventLogError(f"{self.url}: {exc}") from exc
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:  # the client's or the server's
            raise LogUnavailable(
                f"{self.url} is unavailable: no answer within {self._timeout} s"
            ) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise LogUnavailable(f"{self.url} is unavailable: {exc}") from exc

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``work`` on a pooled connection, its errors translated.

        The pool does not ping a connection before lending it (a round trip per
        call): asyncpg drops connections it has seen close, and one that turns out
        dead in use (the server restarted while it sat idle) costs a second try on
        a new connection, not a failed call. Everything sent here may be sent twice:
        reads are reads, and the commit function answers a repeated commit as it
        answered the first.
        """
        pool = self._pool
        if pool is None:  # closed: a tail that reads now ends quietly
            raise LogUnavailable(f"{self.url} is closed")
        for retry in (True, False):
            with self._translate_errors():
                conn = await pool.acquire(timeout=self._timeout)
                try:
                    return await work(conn)
                except (TimeoutError, asyncio.CancelledError):
                    # Not answered in time, or the caller gave up waiting: the
                    # connection is dropped rather than kept while asyncpg cancels the
                    # statement (a hung server would answer the cancel no sooner), so
                    # releasing it does not wait.
                    conn.terminate()
                    raise
                except Exception as exc:
                    if not (retry and _lost(conn, exc)):
                        raise
                    # The server went away: every connection of the pool is stale.
                    await pool.expire_connections()
                finally:
                    await pool.release(conn)
        raise AssertionError("unreachable")

    async def _open(self) -> None:
        with self._translate_errors():
            self._pool = await asyncpg.create_pool(
                min_size=0,
                max_size=self._pool_size,
                # Kept open while idle, as a SQLAlchemy pool keeps them.
                max_inactive_connection_lifetime=0,
                reset=_keep_session,
                **self._connect_args,
            )
        if not self.read_only:
            await self._run(lambda conn: conn.execute(self._open_sql))
            return
        has_events, has_start, has_chain = await self._run(
            lambda conn: conn.fetchrow(self._layout_sql)
        )
        if not has_events:
            events = self._schema.events.name
            raise EventLogError(f"{self.url} is not a sessionlog log: no {events} table")
        # Written before chains and start positions: unchained, never trimmed.
        if not has_chain:
            self._read_chained_sql = _read_chained_sql(self._events_table, "NULL::bytea")
        if not has_start:
            self._start_sql = "SELECT 1::int8, ''::bytea"

    async def _commit(self, operations: list[Operation]) -> list[object]:
        kinds: list[int] = []
        keys: list[str | None] = []
        expected: list[str | None] = []
        counts: list[int] = []
        ids: list[str] = []
        sessions: list[str | None] = []
        workers: list[str] = []
        data: list[bytes] = []
        for operation in operations:
            if isinstance(operation, Append):
                kinds.append(_APPEND)
                keys.append(None)
                expected.append(None)
                counts.append(len(operation.events))
                worker = operation.worker
                for event in operation.events:
                    ids.append(event.event_id)
                    sessions.append(event.session_id)
                    workers.append(worker)
                    data.append(event.data)
                continue
            if isinstance(operation, Claim):
                kinds.append(_CLAIM)
                expected.append(operation.expected)
            else:
                kinds.append(_RELEASE)
                expected.append(None)
            keys.append(operation.key)
            counts.append(1)
            event = operation.event
            ids.append(event.event_id)
            sessions.append(event.session_id)
            workers.append(operation.worker)
            data.append(event.data)
        args = (kinds, keys, expected, counts, ids, sessions, workers, data, self.clock())
        positions, owners = await self._run(lambda conn: conn.fetchrow(self._commit_sql, *args))
        results: list[object] = []
        first = 0
        for operation, owner, count in zip(operations, owners, counts, strict=True):
            if isinstance(operation, Append):
                results.append(positions[first : first + count])
            elif isinstance(operation, Claim):
                results.append(owner)
            else:
                results.append(owner == operation.worker)
            first += count
        return results

    async def _read_rows(self, after: int, limit: int) -> list[LogRow]:
        rows = await self._run(lambda conn: conn.fetch(self._read_sql, after, limit))
        return [LogRow(*row) for row in rows]

    async def _read_chained(self, after: int, limit: int) -> list[ChainedRow]:
        rows = await self._run(lambda conn: conn.fetch(self._read_chained_sql, after, limit))
        return [ChainedRow(*row) for row in rows]

    async def _head(self) -> int:
        return await self._run(lambda conn: conn.fetchval(self._head_sql))  # type: ignore[no-any-return]

    async def _start(self) -> tuple[int, bytes]:
        row = await self._run(lambda conn: conn.fetchrow(self._start_sql))
        return (1, GENESIS) if row is None else (row[0], row[1])

    async def _trim(self, before: int, anchor: bytes, expected_start: int) -> int:
        async def trim(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                await conn.execute(self._lock_sql)
                row = await conn.fetchrow(self._start_sql)
                start = 1 if row is None else row[0]
                if start != expected_start or before <= start:
                    return start  # type: ignore[no-any-return]
                await conn.execute(self._set_start_sql, before, anchor)
                await conn.execute(self._trim_sql, before)
                return before

        return await self._run(trim)

    async def _hot_size(self) -> int:
        """The events table's size on disk: rows, indexes and TOAST.

        A trim deletes rows; it does not give their space back to the filesystem
        (only ``VACUUM FULL`` would, rewriting the table under an exclusive lock).
        Autovacuum marks the dead rows' pages free, and later appends fill them, so
        under retention the size stays flat rather than shrinking.
        """
        return await self._run(lambda conn: conn.fetchval(self._hot_size_sql))  # type: ignore[no-any-return]

    async def _save_snapshot(self, name: str, position: int, data: bytes, replace: bool) -> None:
        save = self._save_snapshot_sql
        await self._run(lambda conn: conn.execute(save, name, position, data, replace))

    async def _load_snapshot(self, name: str) -> bytes | None:
        return await self._run(lambda conn: conn.fetchval(self._load_snapshot_sql, name))  # type: ignore[no-any-return]

    async def _tail_rows(self, after: int, limit: int) -> list[LogRow]:
        try:
            return await super()._tail_rows(after, limit)
        except LogUnavailable:
            # The LISTEN connection may be as dead as the pool's, without knowing it
            # yet (a partition sends no reset): the next wait listens anew.
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.terminate()
            raise

    async def _wait(self, after: int, generation: int) -> None:
        if self._closed:
            return  # not another LISTEN connection: the tail reads, fails and ends
        if self._listener is None or self._listener.is_closed():
            await self._start_listening()
            return  # commits before LISTEN took effect were not notified: read again
        await self._wakeup.wait(generation, self._notify_fallback)

    async def _start_listening(self) -> None:
        await self._stop_listening()
        with self._translate_errors():
            conn = await asyncpg.connect(**self._connect_args)
            try:
                await conn.add_listener(self._channel, self._on_notify)
                # A dropped connection wakes the tail too, so it notices and reconnects.
                conn.add_termination_listener(self._on_notify)
            except BaseException:
                conn.terminate()
                raise
            self._listener = conn

    def _on_notify(self, *_args: object) -> None:
        self._wakeup.notify()

    async def _stop_listening(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None:
            return
        try:  # politely, so the server does not log a lost client
            await conn.close(timeout=CLOSE_TIMEOUT)
        except (Exception, TimeoutError):
            conn.terminate()

    async def _close(self) -> None:
        self._wakeup.notify()
        await self._stop_listening()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await pool.close()
            except (Exception, TimeoutError):
                pool.terminate()


def _read_chained_sql(events: str, chain: str) -> str:
    return (
        f"SELECT position, at, worker, data, {chain} FROM {events} "
        "WHERE position > $1 ORDER BY position LIMIT $2"
    )


def _add_chain_column(events: str) -> str:
    """The migration of a log written before chains: its events get a ``chain``
    column (old rows stay NULL: unchained). Checked first, so an open of an up to
    date log does not take the exclusive lock ALTER TABLE takes even when the column
    is there, which would stall every reader and appender meanwhile."""
    return f"""DO $migrate$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute
                   WHERE attrelid = '{events}'::regclass AND attname = 'chain'
                   AND NOT attisdropped) THEN
        ALTER TABLE {events} ADD COLUMN chain bytea;
    END IF;
END $migrate$"""


def _commit_function(name: str, events: str, owners: str, channel: str, lock_key: int) -> str:
    """CREATE OR REPLACE the function that applies one group commit.

    It takes the operations as parallel arrays: per operation its kind (append,
    claim, release), owners key, expected owner (claims) and number of events; per
    event its id, session id, worker and data; and the time. It returns per event
    its position (null for the event of a claim or release that did not happen) and
    per operation the owner: after the call for a claim, before it for a release.
    An event whose id is already stored keeps its position; so a claim or release
    whose event is stored already was this very commit, sent again after its
    connection broke, and is answered as it was then.

    Each new row's link (:func:`eventlog.chain.link`) is computed here, after the
    link of the head row read under the lock, so it is the stored previous record's
    whoever wrote it: hex of the previous link (empty before position 1 and after
    a row written before chains), the position as int8, the time as float8 (the
    very double stored in ``at``), the worker's UTF-8 length as int4, the worker's
    UTF-8 bytes and the data, all big-endian, hashed with SHA-256.
    """
    return f"""CREATE OR REPLACE FUNCTION {name}(
    _kinds int2[], _keys text[], _expected text[], _counts int4[],
    _ids text[], _sessions text[], _workers text[], _data bytea[], _at float8,
    OUT positions int8[], OUT owners text[]
) LANGUAGE plpgsql AS $body$
DECLARE
    _keep bool[] := array_fill(true, ARRAY[cardinality(_ids)]);
    _known int8[];
    _head int8 := 0;
    _link bytea;
    _fresh int4[];  -- the events to insert, by index into the arrays, in order
    _links bytea[] := '{{}}';
    _time bytea := float8send(_at);
    _first int := 1;
    _current text;
BEGIN
    PERFORM pg_advisory_xact_lock({lock_key});
    SELECT coalesce(array_agg(e.position ORDER BY t.i), '{{}}') INTO _known
    FROM unnest(_ids) WITH ORDINALITY AS t(id, i)
    LEFT JOIN {events} AS e ON e.event_id = t.id;
    owners := array_fill(NULL::text, ARRAY[cardinality(_kinds)]);
    FOR _k IN 1 .. cardinality(_kinds) LOOP
        IF _kinds[_k] <> {_APPEND} THEN
            IF _known[_first] IS NOT NULL THEN  -- it happened then: the worker was the owner
                owners[_k] := _workers[_first];
            ELSIF _kinds[_k] = {_CLAIM} THEN
                SELECT o.owner INTO _current FROM {owners} AS o WHERE o.session_id = _keys[_k];
                IF _current IS NOT DISTINCT FROM _expected[_k] THEN
                    INSERT INTO {owners} AS o (session_id, owner)
                    VALUES (_keys[_k], _workers[_first])
                    ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner;
                    _current := _workers[_first];
                ELSE
                    _keep[_first] := false;
                END IF;
                owners[_k] := _current;
            ELSE
                SELECT o.owner INTO _current FROM {owners} AS o WHERE o.session_id = _keys[_k];
                IF _current = _workers[_first] THEN
                    DELETE FROM {owners} AS o WHERE o.session_id = _keys[_k];
                ELSE
                    _keep[_first] := false;
                END IF;
                owners[_k] := _current;
            END IF;
        END IF;
        _first := _first + _counts[_k];
    END LOOP;
    -- An event id twice in one batch is stored once, at its first occurrence.
    SELECT coalesce(array_agg(f.i ORDER BY f.i), '{{}}') INTO _fresh FROM (
        SELECT DISTINCT ON (t.id) t.i
        FROM unnest(_ids, _keep, _known) WITH ORDINALITY AS t(id, keep, known, i)
        WHERE t.keep AND t.known IS NULL ORDER BY t.id, t.i
    ) AS f;
    IF cardinality(_fresh) > 0 THEN
        SELECT e.position, e.chain INTO _head, _link
        FROM {events} AS e ORDER BY e.position DESC LIMIT 1;
        _head := coalesce(_head, 0);
        -- _links[0] is the head row's link; one statement a row, the loop's cost.
        _links[0] := coalesce(_link, '');
        FOR _n IN 1 .. cardinality(_fresh) LOOP
            _links[_n] := sha256(convert_to(encode(_links[_n - 1], 'hex'), 'UTF8')
                                 || int8send(_head + _n) || _time
                                 || int4send(octet_length(convert_to(_workers[_fresh[_n]], 'UTF8')))
                                 || convert_to(_workers[_fresh[_n]], 'UTF8') || _data[_fresh[_n]]);
        END LOOP;
        INSERT INTO {events} (position, event_id, session_id, at, worker, data, chain)
        SELECT _head + f.n, _ids[f.i], _sessions[f.i], _at, _workers[f.i], _data[f.i],
               _links[f.n]
        FROM unnest(_fresh) WITH ORDINALITY AS f(i, n);
        PERFORM pg_notify('{channel}', '');
    END IF;
    SELECT coalesce(array_agg(coalesce(b.known, CASE WHEN b.keep THEN f.position END)
                              ORDER BY b.i), '{{}}')
    INTO positions
    FROM unnest(_ids, _keep, _known) WITH ORDINALITY AS b(id, keep, known, i)
    LEFT JOIN (SELECT _ids[f.i] AS id, _head + f.n AS position
               FROM unnest(_fresh) WITH ORDINALITY AS f(i, n)) AS f ON f.id = b.id;
END
$body$"""
