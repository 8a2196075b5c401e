"""``sessionlog replay``: timelines and states, as tables and JSON lines; clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from eventlog import (
    ClientMessage,
    OwnerClaimed,
    SessionClosed,
    SessionOpened,
    StatelessAnswer,
    StatelessRequest,
    WorkerStarted,
    open_log,
)
from gateway.cli import main


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "log.db"
    times = iter(float(t) for t in range(1_700_000_000, 1_700_001_000))

    async def write() -> None:
        log = await open_log(f"sqlite:///{path}", clock=lambda: next(times))
        await log.append([WorkerStarted(host="h", pid=7)], worker="w1")
        await log.append([SessionOpened(session_id="s1", transport="sse")], worker="w1")
        await log.append([OwnerClaimed(session_id="s1", owner="w1")], worker="w1")
        message = ClientMessage(
            session_id="s1", payload=b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
        )
        await log.append([message], worker="w2")
        await log.append([SessionOpened(session_id="s2", transport="streamable-http")], worker="w2")
        await log.append([SessionClosed(session_id="s1", reason="client")], worker="w1")
        await log.close()

    asyncio.run(write())
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_session_timeline_as_json_lines(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--log", f"sqlite:///{log_path}", "--session", "s1", "--format", "jsonl"
    )
    assert code == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["position"], r["type"], r["worker"]) for r in lines] == [
        (2, "SessionOpened", "w1"),
        (3, "OwnerClaimed", "w1"),
        (4, "ClientMessage", "w2"),
        (6, "SessionClosed", "w1"),
    ]
    assert lines[2]["payload"] == {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert lines[0]["at"].endswith("+00:00") and lines[3]["reason"] == "client"


def test_session_timeline_up_to_a_position_as_a_table(
    log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--log", f"sqlite:///{log_path}", "--session", "s1", "--at", "3")
    assert code == 0
    assert "SessionOpened" in out and "OwnerClaimed" in out and "ClientMessage" not in out


def test_state_at_a_position_and_a_time(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{log_path}"
    code, out, _ = run(capsys, "--log", url, "--at", "5", "--format", "jsonl")
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0 and lines[0] == {"kind": "position", "position": 5}
    sessions = {row["session_id"]: row for row in lines if row["kind"] == "session"}
    assert sorted(sessions) == ["s1", "s2"]
    assert sessions["s1"]["holder"] == "w1" and sessions["s1"]["pending"] == 1
    workers = [row["worker"] for row in lines if row["kind"] == "worker"]
    assert sorted(workers) == ["w1", "w2"]
    # Now: s1 is closed. As a table, by default.
    code, out, _ = run(capsys, "--log", url)
    assert code == 0 and "s2" in out and "s1" not in out.split("Workers")[0]
    # At a time: the records up to the third (times count up from 1_700_000_000).
    third = "2023-11-14T22:13:22"  # 1_700_000_002 in UTC
    code, out, _ = run(capsys, "--log", url, "--at", third, "--format", "jsonl")
    assert code == 0 and orjson.loads(out.splitlines()[0])["position"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log", "sqlite:///{tmp}/missing.db"], "no log file at"),
        (["--log", "ftp://example.com/log"], "cannot open"),
        (["--log", "sqlite:///{log}", "--session", "nope"], "session 'nope' is not in"),
        (["--log", "sqlite:///{log}", "--at", "yesterday"], "neither a position nor"),
        (["--log", "redis://127.0.0.1:1/0"], "unavailable"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    argv: list[str],
    message: str,
    log_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [a.format(tmp=tmp_path, log=log_path) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "missing.db").exists()


def test_the_installed_command_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "replay", "--log", f"sqlite:///{tmp_path}/nope.db"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("sessionlog replay: no log file at")


async def test_follow_prints_records_as_they_are_appended(log_path: Path) -> None:
    url = f"sqlite:///{log_path}"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "replay", "--log", url),
        *("--session", "s2", "--follow", "--format", "jsonl"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        first = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert (first["position"], first["type"]) == (5, "SessionOpened")
        log = await open_log(url)
        try:
            await log.append([SessionClosed(session_id="s2", reason="expired")], worker="w3")
            await log.append([SessionOpened(session_id="other", transport="sse")], worker="w3")
        finally:
            await log.close()
        followed = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert (followed["position"], followed["type"], followed["reason"]) == (
            7,
            "SessionClosed",
            "expired",
        )
    finally:
        process.kill()
        await process.wait()


def test_what_one_identity_did_sessions_and_stateless_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--user audits stateless (2026-07-28) traffic like sessions: the identity's
    sessions with all that happened in them, its requests and their answers, and
    nobody else's."""
    url = f"sqlite:///{tmp_path}/log.db"
    mine = StatelessRequest(user="ana", payload=b'{"id":1}', answered_by="w1")
    theirs = StatelessRequest(user="bob", payload=b'{"id":2}', answered_by="w1")

    async def write() -> None:
        log = await open_log(url)
        await log.append([SessionOpened(session_id="a1", transport="sse", user="ana")], worker="w1")
        await log.append([SessionOpened(session_id="b1", transport="sse", user="bob")], worker="w1")
        await log.append([mine, theirs], worker="w1")
        await log.append([StatelessAnswer(request=theirs.id, payload=b'{"id":2}')], worker="w1")
        await log.append([StatelessAnswer(request=mine.id, payload=b'{"id":1}')], worker="w1")
        await log.append([SessionClosed(session_id="a1", reason="client")], worker="w1")
        await log.close()

    asyncio.run(write())
    code, out, _ = run(capsys, "--log", url, "--user", "ana", "--format", "jsonl")
    assert code == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [r["type"] for r in lines] == [
        "SessionOpened",
        "StatelessRequest",
        "StatelessAnswer",
        "SessionClosed",
    ]
    assert lines[2]["request"] == mine.id and lines[2]["payload"] == {"id": 1}
    code, _, err = run(capsys, "--log", url, "--user", "nobody")
    assert code == 1 and "user 'nobody'" in err
    code, _, err = run(capsys, "--log", url, "--user", "ana", "--session", "a1")
    assert code == 1 and "not both" in err


def test_an_at_with_thousands_of_digits_is_a_one_line_error(
    log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--log", f"sqlite:///{log_path}", "--at", "9" * 5000)
    assert code == 1 and out == "" and len(err.splitlines()) == 1


def test_a_file_that_is_not_a_sessionlog_log_is_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay never writes: someone else's SQLite file is a one-line error, with no
    table added and its journal mode unchanged."""
    path = tmp_path / "someone-elses.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (x)")
        db.commit()
    before = path.read_bytes()
    code, out, err = run(capsys, "--log", f"sqlite:///{path}")
    assert code == 1 and out == ""
    assert "is not a sessionlog log" in err and len(err.strip().splitlines()) == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone-elses.db"]
