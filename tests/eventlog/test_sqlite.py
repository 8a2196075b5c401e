from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from eventlog import EventLog, LogUnavailable, SQLiteEventLog, WorkerHeartbeat, open_log
from tests.eventlog import _processes
from tests.eventlog.contract import HANG_GUARD, SharedEventLogContract


class TestSQLiteEventLog(SharedEventLogContract):
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
