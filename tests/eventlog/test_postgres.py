from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog import EventLog, PostgresEventLog, open_log
from eventlog.archive import ArchiveError, DirectoryArchive, decode_segment, encode_segment
from eventlog.base import Append, StoredEvent
from eventlog.chain import GENESIS, linker
from eventlog.postgres_archive import PostgresArchive
from eventlog.verify import verify
from gateway.testing.servers import PostgresServer
from tests.eventlog import _processes
from tests.eventlog.contract import (
    HANG_GUARD,
    SPAWN,
    ServerEventLogContract,
    _run_processes,
)
from tests.eventlog.retention_contract import RetentionContract, fill, read_everything


def _events_table(log: EventLog) -> str:
    assert isinstance(log, PostgresEventLog)
    return log._schema.events.name


class TestPostgresEventLog(ServerEventLogContract, RetentionContract):
    # Deleted rows' space is reused by later appends, not given back (see _hot_size).
    hot_size_shrinks = False

    @pytest.fixture
    def server(self, postgres_server: PostgresServer) -> PostgresServer:
        return postgres_server

    @pytest.fixture
    async def log_url(self, postgres_server: PostgresServer, namespace: str) -> str:
        return f"{postgres_server.url}?namespace={namespace}"

    @pytest.fixture
    async def push_log_url(self, log_url: str) -> str:
        return f"{log_url}&notify_fallback=3600"  # only NOTIFY can wake the tail

    async def write_raw(self, log: EventLog, data: bytes) -> None:
        events = log._schema.events.name  # type: ignore[attr-defined]
        await log._run(  # type: ignore[attr-defined]
            lambda conn: conn.execute(
                f"INSERT INTO {events} (position, event_id, at, worker, data) "
                "SELECT head + 1, 'raw' || (head + 1), 0, 'raw', $1 "
                f"FROM (SELECT coalesce(max(position), 0) AS head FROM {events}) AS h",
                data,
            )
        )

    # Changes behind the log's back, on the hot events table.

    async def change_byte(self, log: EventLog, position: int) -> None:
        events = _events_table(log)
        data = await log._run(  # type: ignore[attr-defined]
            lambda conn: conn.fetchval(f"SELECT data FROM {events} WHERE position = $1", position)
        )
        changed = data[:-1] + bytes([data[-1] ^ 1])
        await log._run(  # type: ignore[attr-defined]
            lambda conn: conn.execute(
                f"UPDATE {events} SET data = $2 WHERE position = $1", position, changed
            )
        )

    async def delete_record(self, log: EventLog, position: int) -> None:
        events = _events_table(log)
        await log._run(  # type: ignore[attr-defined]
            lambda conn: conn.execute(f"DELETE FROM {events} WHERE position = $1", position)
        )

    async def swap_records(self, log: EventLog, first: int, second: int) -> None:
        # One UPDATE reads both rows as they were before it.
        events = _events_table(log)
        await log._run(  # type: ignore[attr-defined]
            lambda conn: conn.execute(
                f"UPDATE {events} AS e SET at = o.at, worker = o.worker, data = o.data, "
                f"session_id = o.session_id FROM {events} AS o "
                "WHERE (e.position, o.position) IN (($1, $2), ($2, $1))",
                first,
                second,
            )
        )


async def test_password_never_appears_in_errors(namespace: str) -> None:
    from eventlog import LogUnavailable
    from gateway.testing.servers import free_port

    url = f"postgresql://user:s3cret@127.0.0.1:{free_port()}/db?namespace={namespace}"
    with pytest.raises(LogUnavailable) as raised:
        await open_log(url)
    assert "s3cret" not in str(raised.value)
    assert "user:***@127.0.0.1" in str(raised.value)


async def test_concurrent_openers_in_8_processes_create_the_log_once(
    postgres_server: PostgresServer, namespace: str
) -> None:
    # Tables and the commit function are created by whichever opener comes first.
    url = f"{postgres_server.url}?namespace={namespace}"
    barrier, results = SPAWN.Barrier(8), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_processes.open_and_append, args=(url, f"w{i}", barrier, results))
        for i in range(8)
    ]
    outcomes = await _run_processes(processes, results, 8)
    assert sorted(position for _, [position] in outcomes) == list(range(1, 9))


# -- the chain, computed in PL/pgSQL ---------------------------------------------------

workers = st.text(st.characters(exclude_characters="\x00"), max_size=40)
batches = st.lists(st.tuples(workers, st.binary(max_size=300)), min_size=1, max_size=4)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=batches,
    at=st.floats(allow_nan=False, allow_infinity=False) | st.floats(0, 4e9),
)
def test_the_commit_function_links_as_python_does(
    postgres_server: PostgresServer, namespace: str, batch: list[tuple[str, bytes]], at: float
) -> None:
    # Every example appends to the same log: each chains from the one before it.
    async def run() -> None:
        log = await open_log(f"{postgres_server.url}?namespace={namespace}", clock=lambda: at)
        try:
            head = await log.head()
            await log._commit(
                [
                    Append(worker, [StoredEvent(secrets.token_hex(8), None, data)])
                    for worker, data in batch
                ]
            )
            previous = (await log.read_chained(head - 1, 1))[0].chain if head else GENESIS
            rows = await log.read_chained(head, 100)
        finally:
            await log.close()
        link = linker("sha256")
        assert [(r.worker, r.data, r.at) for r in rows] == [(w, d, at) for w, d in batch]
        for row in rows:
            assert row.chain == link(previous, row.position, row.at, row.worker, row.data)
            previous = row.chain

    asyncio.run(run())


async def test_a_log_written_before_chains_opens_and_chains_after_its_old_rows(
    postgres_server: PostgresServer, namespace: str
) -> None:
    events = f"{namespace}_events"
    conn = await asyncpg.connect(postgres_server.url)
    try:
        await conn.execute(
            f"CREATE TABLE {events} (position bigint PRIMARY KEY, "
            "event_id varchar(64) NOT NULL UNIQUE, session_id varchar(128), "
            "at float8 NOT NULL, worker varchar(128) NOT NULL, data bytea NOT NULL)"
        )
        await conn.execute(
            f"INSERT INTO {events} SELECT p, 'old' || p, NULL, 1.5, 'old', '\\x90' "
            "FROM generate_series(1, 3) AS p"
        )
    finally:
        await conn.close()
    url = f"{postgres_server.url}?namespace={namespace}"
    reader = await open_log(url, read_only=True)  # as it is: no migration
    try:
        assert [r.chain for r in await reader.read_chained(0, 100)] == [None] * 3
        checked = await verify(reader)
        assert checked.ok and (checked.unchained, checked.checked) == (3, 0)
    finally:
        await reader.close()
    log = await open_log(url)
    try:
        await fill(log, 2)
        rows = await log.read_chained(0, 100)
        assert [r.chain for r in rows[:3]] == [None] * 3
        link, previous = linker("sha256"), GENESIS
        for row in rows[3:]:
            assert row.chain == link(previous, row.position, row.at, row.worker, row.data)
            previous = row.chain
        checked = await verify(log)
        assert checked.ok, checked.broken
        assert (checked.unchained, checked.checked) == (3, 10)
        assert await log.archive_until(8) == 8  # the unchained rows move too
        assert (await verify(log)).ok
    finally:
        await log.close()


async def test_moves_under_appends_from_another_process_keep_the_log_whole(
    postgres_server: PostgresServer, namespace: str
) -> None:
    url = f"{postgres_server.url}?namespace={namespace}"
    log = await open_log(url)
    try:
        await fill(log, 1)
        barrier = SPAWN.Barrier(2)
        appenders = [
            SPAWN.Process(target=_processes.append_many, args=(url, f"p{i}", 1500, 10, barrier))
            for i in range(2)
        ]
        for process in appenders:
            process.start()
        moves = 0
        async with asyncio.timeout(HANG_GUARD * 3):
            while any(process.is_alive() for process in appenders):
                await log.archive_until(await log.head(), segment_records=97)
                moves += 1
        for process in appenders:
            process.join()
        assert [process.exitcode for process in appenders] == [0, 0]
        head = await log.head()
        assert head == 5 + 3000
        assert [record[0] for record in await read_everything(log)] == list(range(1, head + 1))
        assert await log.start() > 1 and moves > 1
        checked = await verify(log)
        assert checked.ok, checked.broken
        assert checked.checked == head
    finally:
        await log.close()


# -- the archive table -------------------------------------------------------------


async def test_the_archive_option_picks_where_segments_go(
    postgres_server: PostgresServer, namespace: str, tmp_path: Path
) -> None:
    url = f"{postgres_server.url}?namespace={namespace}"
    expected = [
        ("", PostgresArchive),
        ("&archive=table", PostgresArchive),
        (f"&archive={tmp_path}", DirectoryArchive),
        (f"&archive=file://{tmp_path}", DirectoryArchive),
        ("&archive=none", type(None)),
    ]
    for option, kind in expected:
        log = await open_log(url + option)
        try:
            assert isinstance(log.archive, kind), option
        finally:
            await log.close()


async def test_the_archive_table_keeps_segments_and_replaces_a_leftover(
    postgres_server: PostgresServer, namespace: str
) -> None:
    log = await open_log(f"{postgres_server.url}?namespace={namespace}")
    try:
        archive = log.archive
        assert isinstance(archive, PostgresArchive)
        assert await archive.manifests() == []
        await fill(log, 10)
        rows = await log.read_chained(0, 50)
        first, blob = encode_segment(rows[:30], "sha256", GENESIS)
        await archive.write(first, blob)
        assert await archive.manifests() == [first]
        assert decode_segment(first, await archive.read(first)) == rows[:30]
        # A move killed before its trim left 1-30; the next writes 1-20 over it.
        replacement, blob = encode_segment(rows[:20], "sha256", GENESIS)
        await archive.write(replacement, blob)
        assert await archive.manifests() == [replacement]
        assert decode_segment(replacement, await archive.read(replacement)) == rows[:20]
        with pytest.raises(ArchiveError, match="missing"):
            await archive.read(first)
    finally:
        await log.close()
