from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from eventlog import (
    EventLog,
    EventLogError,
    LogUnavailable,
    SQLiteEventLog,
    WorkerHeartbeat,
    open_log,
)
from eventlog.archive import DirectoryArchive
from eventlog.chain import GENESIS, linker
from eventlog.verify import verify
from tests.eventlog import _processes
from tests.eventlog.contract import HANG_GUARD, SPAWN, SharedEventLogContract, heartbeats
from tests.eventlog.retention_contract import RetentionContract, fill, read_everything


class TestSQLiteEventLog(SharedEventLogContract, RetentionContract):
    @pytest.fixture
    async def log_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/log.db"

    @pytest.fixture
    async def push_log_url(self, log_url: str) -> str:
        return log_url  # SQLite has no push: its tail polls the head, once per worker

    async def write_raw(self, log: EventLog, data: bytes) -> None:
        assert isinstance(log, SQLiteEventLog)
        with sqlite3.connect(log._path) as db:
            query = "SELECT coalesce(max(position), 0) FROM sessionlog_events"
            (head,) = db.execute(query).fetchone()
            db.execute(
                "INSERT INTO sessionlog_events (position, event_id, at, worker, data) "
                "VALUES (?, ?, 0, 'raw', ?)",
                (head + 1, f"raw{head + 1}", data),
            )

    # Changes to the hot log behind the log's back, as another program with the file
    # would make them.

    async def change_byte(self, log: EventLog, position: int) -> None:
        assert isinstance(log, SQLiteEventLog)
        with sqlite3.connect(log._path) as db:
            query = "SELECT data FROM sessionlog_events WHERE position = ?"
            (data,) = db.execute(query, (position,)).fetchone()
            changed = data[:-1] + bytes([data[-1] ^ 1])
            update = "UPDATE sessionlog_events SET data = ? WHERE position = ?"
            db.execute(update, (changed, position))

    async def delete_record(self, log: EventLog, position: int) -> None:
        assert isinstance(log, SQLiteEventLog)
        with sqlite3.connect(log._path) as db:
            db.execute("DELETE FROM sessionlog_events WHERE position = ?", (position,))

    async def swap_records(self, log: EventLog, first: int, second: int) -> None:
        """Swap everything but the positions and the links."""
        assert isinstance(log, SQLiteEventLog)
        columns = "event_id, session_id, at, worker, data"
        query = f"SELECT {columns} FROM sessionlog_events WHERE position = ?"
        update = (
            "UPDATE sessionlog_events SET event_id = ?, session_id = ?, at = ?, worker = ?, "
            "data = ? WHERE position = ?"
        )
        with sqlite3.connect(log._path) as db:
            a, b = (db.execute(query, (p,)).fetchone() for p in (first, second))
            # event_id is unique: out of the way first.
            db.execute(update, ("swapping", *a[1:], first))
            db.execute(update, (*a, second))
            db.execute(update, (*b, first))


@pytest.mark.parametrize("durability", ["off", "normal", "full"])
async def test_durability_is_configurable(tmp_path: Path, durability: str) -> None:
    log = await open_log(f"sqlite:///{tmp_path}/log.db?durability={durability}")
    try:
        with log._writer.connect() as conn:  # type: ignore[attr-defined]
            level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        assert level == {"off": 0, "normal": 1, "full": 2}[durability]
        assert mode == "wal"
    finally:
        await log.close()


async def test_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = await open_log("sqlite:///here.db")
    await log.close()
    assert (tmp_path / "here.db").exists()


@pytest.mark.parametrize("checkpoint_rows", [50, 1_000_000])
async def test_the_wal_is_checkpointed_by_the_writer_thread(
    tmp_path: Path, checkpoint_rows: int
) -> None:
    """SQLite's own checkpoint is off on the write connection (it would run, with an
    fsync, in whichever commit crosses its threshold, maybe on the event loop); the log
    checkpoints in its writer thread every ``checkpoint_rows`` rows instead."""
    log = await open_log(f"sqlite:///{tmp_path}/log.db", checkpoint_rows=checkpoint_rows)
    assert isinstance(log, SQLiteEventLog)
    try:
        for _ in range(400):
            await log.append([WorkerHeartbeat()], worker="w")
        # The writer thread has done what was submitted to it before this.
        await asyncio.get_running_loop().run_in_executor(log._write_thread, lambda: None)
        with sqlite3.connect(log._path) as db:
            (autocheckpoint,) = db.execute("PRAGMA wal_autocheckpoint").fetchone()
            _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        (writer_autocheckpoint,) = log._write_conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    finally:
        await log.close()
    assert autocheckpoint == 1000 and writer_autocheckpoint == 0  # off for appends only
    # Each checkpoint lets the WAL start over: it holds what came after the last one.
    written = 400 if checkpoint_rows > 400 else checkpoint_rows
    assert written <= frames <= 4 * written


async def test_a_tail_is_not_set_polling_by_its_own_process_commits(tmp_path: Path) -> None:
    """A tail polls for a moment after another process changed the files (its commit
    is visible shortly after its last write); this process's own commits wake its
    tails directly, and their file changes are not taken for another's."""
    path = tmp_path / "log.db"
    log = await open_log(f"sqlite:///{path}")
    assert isinstance(log, SQLiteEventLog)
    try:
        pages = log.tail_pages()
        for _ in range(20):
            await log.append([WorkerHeartbeat()], worker="w")
            await anext(pages)
            await asyncio.sleep(0)  # a pending file-change callback runs now
        assert log._changed_at == 0.0
        # Another log's commit (as another process's) reaches the tail through the
        # file watch, and does set it polling.
        async with await open_log(f"sqlite:///{path}") as other:
            await other.append([WorkerHeartbeat()], worker="x")
        records, _ = await asyncio.wait_for(anext(pages), 30)
        assert records[0].worker == "x" and log._changed_at != 0.0
    finally:
        await log.close()


async def test_appenders_killed_mid_commit_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """kill -9 of three appending processes, three rounds, while their commits run on
    their event loops' threads: every acknowledged append is in the log at the position
    it was acknowledged with, positions stay gapless, and no lock outlives its holder."""
    spawn = multiprocessing.get_context("spawn")
    url = f"sqlite:///{tmp_path}/log.db"
    acks = [tmp_path / f"acks-{i}" for i in range(9)]
    for round_ in range(3):
        processes, going = [], []
        for i in range(round_ * 3, round_ * 3 + 3):
            event = spawn.Event()
            process = spawn.Process(
                target=_processes.append_until_killed, args=(url, f"w{i}", str(acks[i]), event)
            )
            process.start()
            processes.append(process)
            going.append(event)
        try:
            for event in going:
                assert await asyncio.to_thread(event.wait, HANG_GUARD)
        finally:
            for process in processes:
                os.kill(process.pid, signal.SIGKILL)
            for process in processes:
                await asyncio.to_thread(process.join, HANG_GUARD)
    acknowledged = {}
    for path in acks:
        for line in path.read_text().splitlines():
            if len(fields := line.split()) == 2 and fields[1].isdigit():  # not a cut line
                acknowledged[fields[0]] = int(fields[1])
    log = await open_log(url)
    try:
        stored = {record.event.id: record.position for record in await log.read(limit=10**6)}
        assert sorted(stored.values()) == list(range(1, len(stored) + 1))
        assert len(acknowledged) >= 900
        assert all(stored.get(event_id) == position for event_id, position in acknowledged.items())
        # No dead appender's lock is left behind: this commits at once.
        assert await log.append([WorkerHeartbeat()], worker="after") == [len(stored) + 1]
    finally:
        await log.close()


async def test_a_write_lock_held_elsewhere_times_appends_out_then_they_work(
    tmp_path: Path,
) -> None:
    """Another process holding the write lock (hung mid-transaction) makes an append
    raise LogUnavailable after the log's timeout, its busy timeout, not hang; once
    the lock is let go the same log appends again."""
    url = f"sqlite:///{tmp_path}/log.db?timeout=0.2"
    log = await open_log(url)
    try:
        assert await log.append([WorkerHeartbeat()], worker="w") == [1]
        holder = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LogUnavailable, match="locked"):
                await asyncio.wait_for(log.append([WorkerHeartbeat()], worker="w"), HANG_GUARD)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert await log.append([WorkerHeartbeat()], worker="w") == [2]
    finally:
        await log.close()


# -- retention -------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE sessionlog_events (
    position INTEGER NOT NULL PRIMARY KEY,
    event_id VARCHAR(64) NOT NULL UNIQUE,
    session_id VARCHAR(128),
    at FLOAT NOT NULL,
    worker VARCHAR(128) NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE sessionlog_owners (
    session_id VARCHAR(128) NOT NULL PRIMARY KEY,
    owner VARCHAR(128) NOT NULL
);
CREATE TABLE sessionlog_snapshots (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL,
    data BLOB NOT NULL
);
"""


async def _old_format_log(path: Path, records: int) -> None:
    """A log file as sessionlog wrote it before chains: no chain column, no start table,
    no auto_vacuum. Its records are those a current log stores, copied over."""
    async with await open_log(f"sqlite:///{path.with_suffix('.new.db')}") as new:
        await fill(new, 1, records)
        rows = await new.read_chained(0, records)
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(OLD_SCHEMA)
        db.executemany(
            "INSERT INTO sessionlog_events (position, event_id, at, worker, data) "
            "VALUES (?, ?, ?, ?, ?)",
            [(r.position, f"old{r.position}", r.at, r.worker, r.data) for r in rows],
        )
    db.close()


def _columns(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(sessionlog_events)")}
    db.close()
    return columns


async def test_a_log_older_than_chains_opens_and_chains_after_its_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    await _old_format_log(path, 5)
    async with await open_log(f"sqlite:///{path}", read_only=True) as audit:
        checked = await verify(audit)
        assert (checked.ok, checked.unchained, checked.checked) == (True, 5, 0)
        assert await audit.start_anchor() == (1, GENESIS)
    assert "chain" not in _columns(path)  # a read-only open changed nothing
    async with await open_log(f"sqlite:///{path}") as log:
        assert await log.append(heartbeats(3), worker="w") == [6, 7, 8]
        rows = await log.read_chained(0, 100)
        assert [row.chain for row in rows[:5]] == [None] * 5
        link, previous = linker(log.hash_name), GENESIS  # the chain starts after them
        for row in rows[5:]:
            assert row.chain == link(previous, row.position, row.at, row.worker, row.data)
            previous = row.chain
        checked = await verify(log)
        assert (checked.ok, checked.unchained, checked.checked) == (True, 5, 3)
        # Its records move to the archive like any others.
        assert await log.archive_until(7, segment_records=4) == 7
        assert (await verify(log)).ok
        assert [r[0] for r in await read_everything(log)] == list(range(1, 9))


async def _pages(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
    db.close()
    return pages, free


async def _fill_big(log: EventLog, batches: int) -> int:
    for i in range(batches):
        await log.append(
            [WorkerHeartbeat(id=f"{i:08d}{j:056d}") for j in range(100)], worker="w" * 100
        )
    return await log.head()


async def test_a_move_gives_the_pages_of_the_records_back(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with await open_log(f"sqlite:///{path}") as log:
        head = await _fill_big(log, 20)
        pages, free = await _pages(path)
        size = await log.hot_size()
        assert await log.archive_until(head) == head
        after, free_after = await _pages(path)
        assert after < pages / 4 and free_after == 0 == free
        assert await log.hot_size() < size / 4
        assert (await verify(log)).ok


async def test_a_log_without_auto_vacuum_keeps_its_pages_for_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    await _old_format_log(path, 1)
    async with await open_log(f"sqlite:///{path}") as log:
        head = await _fill_big(log, 20)
        pages, _ = await _pages(path)
        size = await log.hot_size()
        assert await log.archive_until(head) == head
        after, free = await _pages(path)
        assert after == pages and free > pages * 3 / 4
        assert await log.hot_size() < size / 4  # free pages are not counted
        await _fill_big(log, 5)  # reuses them
        assert (await _pages(path))[0] == pages


async def test_the_archive_is_beside_the_file_unless_the_url_says(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    async with await open_log(url) as log:
        assert isinstance(log.archive, DirectoryArchive)
        assert log.archive.path == tmp_path / "log.db.archive"
    async with await open_log(url, read_only=True) as audit:
        assert isinstance(audit.archive, DirectoryArchive)
        assert audit.archive.path == tmp_path / "log.db.archive"
    async with await open_log(f"{url}?archive={tmp_path}/elsewhere") as log:
        assert isinstance(log.archive, DirectoryArchive)
        assert log.archive.path == tmp_path / "elsewhere"
    async with await open_log(f"{url}?archive=none") as log:
        assert log.archive is None
    with pytest.raises(EventLogError, match="names no directory"):
        await open_log(f"{url}?archive=")


async def test_appends_of_two_processes_at_once_chain_as_one_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    async with await open_log(url):
        pass  # the tables exist before the race
    barrier = SPAWN.Barrier(2)
    processes = [
        SPAWN.Process(target=_processes.append_many, args=(url, f"w{i}", 400, 8, barrier))
        for i in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        await asyncio.to_thread(process.join, HANG_GUARD)
        assert process.exitcode == 0
    async with await open_log(url) as log:
        assert {r.worker for r in await log.read(0, 1000)} == {"w0", "w1"}
        checked = await verify(log)
        assert checked.ok, checked.broken
        assert checked.checked == await log.head() == 800


async def test_a_trim_from_a_start_that_moved_meanwhile_changes_nothing(tmp_path: Path) -> None:
    async with await open_log(f"sqlite:///{tmp_path}/log.db") as log:
        assert isinstance(log, SQLiteEventLog)
        await fill(log, 4)
        rows = await log.read_chained(0, 10)
        assert await log._trim(6, rows[4].chain or b"", expected_start=1) == 6
        assert await log._trim(11, rows[9].chain or b"", expected_start=1) == 6  # stale
        assert await log.start_anchor() == (6, rows[4].chain)
        assert [row.position for row in await log.read_chained(0, 100)] == list(range(6, 21))
