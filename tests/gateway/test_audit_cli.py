"""``sessionlog compact``, ``verify`` and ``export`` as real processes on a shared
log with an archive directory: replays before and after archiving print the same,
two serving workers never compact at once, and a compaction killed at random points
loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventlog import (
    ClientMessage,
    MessageHandled,
    OwnerClaimed,
    OwnerReleased,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    WorkerHeartbeat,
    open_log,
)
from eventlog.verify import verify
from gateway.compaction import COMPACTION_KEY
from gateway.reading import pages
from gateway.testing.serving import serve_process

# Guards against hangs only; nothing asserts how fast anything is.
HANG_GUARD = 60.0
DAY = 86_400.0


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path, namespace: str, archive: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.db?archive={archive}"
    server_fixture = "postgres_server" if request.param == "postgresql" else "redis_server"
    server = request.getfixturevalue(server_fixture)
    return f"{server.url}?namespace={namespace}&archive={archive}"


def sessionlog(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


async def write_sessions(url: str, count: int, first_at: float) -> None:
    """``count`` sessions s0, s1, ... a minute apart from ``first_at``: opened, a call
    answered, closed."""
    now = [first_at]
    log = await open_log(url, clock=lambda: now[0])
    try:
        for n in range(count):
            now[0] = first_at + 60 * n
            session = f"s{n}"
            call = ClientMessage(session_id=session, payload=b'{"id":%d}' % n)
            await log.append(
                [
                    SessionOpened(session_id=session, transport="streamable-http"),
                    call,
                    ServerMessage(session_id=session, payload=b'{"r":%d}' % n, reply_to=call.id),
                    MessageHandled(session_id=session, message_id=call.id),
                    SessionClosed(session_id=session, reason="client"),
                ],
                worker="writer",
            )
    finally:
        await log.close()


async def every_position(url: str) -> tuple[list[int], int, bool]:
    """(positions read, archive and hot log as one, the head, whether verify is ok),
    through a fresh read-only log."""
    log = await open_log(url, read_only=True)
    try:
        head = await log.head()
        positions = [r.position async for page, _ in pages(log, 0, head) for r in page]
        return positions, head, (await verify(log)).ok
    finally:
        await log.close()


async def start_of(url: str) -> int:
    log = await open_log(url, read_only=True)
    try:
        return await log.start()
    finally:
        await log.close()


def test_replay_export_and_verify_read_the_archive_and_hot_log_as_one(
    log_url: str, archive: Path, tmp_path: Path
) -> None:
    first_at = float(int(time.time() - 2 * DAY))  # whole seconds: every backend keeps them
    asyncio.run(write_sessions(log_url, 10, first_at))
    replayed = sessionlog("replay", "--log", log_url, "--session", "s3", "--format", "jsonl")
    assert replayed.returncode == 0, replayed.stderr
    chosen = ("--session", "s3", "--session", "s5")
    ranged = ("--since", iso(first_at + 120), "--until", iso(first_at + 240))
    exported = {
        what: sessionlog("export", "--log", log_url, *what).stdout for what in (chosen, ranged)
    }
    sessions_of = {
        what: {orjson.loads(line)["session_id"] for line in text.splitlines()}
        for what, text in exported.items()
    }
    assert sessions_of == {chosen: {"s3", "s5"}, ranged: {"s2", "s3", "s4"}}
    assert len(exported[chosen].splitlines()) == 10

    compacted = sessionlog(
        "compact", "--log", log_url, "--retain", "1d", "--archive-segment-records", "7"
    )
    assert compacted.returncode == 0, compacted.stderr
    assert "moved 50 records (1-50) to the archive" in compacted.stdout
    assert asyncio.run(start_of(log_url)) == 51
    again = sessionlog("replay", "--log", log_url, "--session", "s3", "--format", "jsonl")
    assert again.returncode == 0 and again.stdout == replayed.stdout  # byte for byte
    for what, before in exported.items():
        assert sessionlog("export", "--log", log_url, *what).stdout == before
    written = tmp_path / "export.jsonl"
    to_file = sessionlog("export", "--log", log_url, "--output", str(written))
    assert to_file.returncode == 0 and to_file.stdout == ""
    positions = [orjson.loads(line)["position"] for line in written.read_text().splitlines()]
    assert positions == list(range(1, len(positions) + 1))

    # verify: ok with a digest; the digest proves the log up to it unchanged.
    checked = sessionlog("verify", "--log", log_url, "--digest")
    assert checked.returncode == 0, checked.stderr
    summary, ok, digest_line = checked.stdout.splitlines()
    assert summary.startswith("checked ") and "50 archived" in summary
    assert summary.endswith("records/s") and ok.startswith("ok up to position ")
    digest = orjson.loads(digest_line)
    assert digest["position"] == len(positions)
    assert len(bytes.fromhex(digest["chain"])) == {"sha256": 32, "sha1": 20}[digest["hash"]]
    kept = tmp_path / "digest.json"
    kept.write_text(digest_line + "\n")
    for expect in (digest_line, str(kept)):
        proved = sessionlog("verify", "--log", log_url, "--expect", expect)
        assert proved.returncode == 0, proved.stderr
        assert proved.stdout.splitlines()[-1].endswith("matches")
    rewritten = orjson.dumps({**digest, "chain": "00" * (len(digest["chain"]) // 2)}).decode()
    refused = sessionlog("verify", "--log", log_url, "--expect", rewritten)
    assert refused.returncode == 1 and "rewritten" in refused.stdout
    # Bad input: exit 2, one line.
    for argv in (
        ("--log", "nosuch://there"),
        ("--log", log_url, "--expect", "not a digest"),
        ("--log", log_url, "--expect", '{"position": 3}'),
    ):
        bad = sessionlog("verify", *argv)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    # A changed byte in an archived segment: broken, and where.
    segment = sorted(archive.glob("*.zst"))[1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    broken = sessionlog("verify", "--log", log_url)
    assert broken.returncode == 1
    where = re.fullmatch(
        r"broken at position (\d+) in archive segment 0*8-0*14: .+",
        found := broken.stdout.splitlines()[-1],
    )
    assert where is not None and 8 <= int(where[1]) <= 14, found


def compactor_claims(records: list[Any]) -> list[tuple[str, str]]:
    """("claimed"/"released", worker) of the compaction claim, in log order."""
    return [
        ("claimed" if isinstance(r.event, OwnerClaimed) else "released", r.event.owner)
        for r in records
        if isinstance(r.event, OwnerClaimed | OwnerReleased)
        and r.event.session_id == COMPACTION_KEY
        and r.event.role == "compactor"
    ]


async def claims_until_each_compacted(url: str, workers: int, times: int) -> list[tuple[str, str]]:
    """The compaction claims in the log, read as they are appended, until ``workers``
    workers have each claimed it ``times`` times."""
    log = await open_log(url, read_only=True)
    claims: list[tuple[str, str]] = []
    try:
        async with asyncio.timeout(HANG_GUARD):
            async for page, _ in log.tail_pages(0):
                claims += compactor_claims(page)
                runs = [worker for change, worker in claims if change == "claimed"]
                if len(set(runs)) == workers and all(runs.count(w) >= times for w in set(runs)):
                    return claims
    finally:
        await log.close()
    raise AssertionError(f"the log ended; compactions so far: {claims}")


def test_two_serving_workers_never_compact_at_once(log_url: str) -> None:
    asyncio.run(write_sessions(log_url, 20, time.time() - 2 * DAY))
    env = {
        "SESSIONLOG_HEARTBEAT_INTERVAL": "0.05",
        "SESSIONLOG_COMPACT_INTERVAL": "0.1",
        "SESSIONLOG_RETAIN": "off",
        "SESSIONLOG_RETAIN_SIZE": "1",  # everything no worker needs moves
        "SESSIONLOG_ARCHIVE_SEGMENT_RECORDS": "5",
    }
    with serve_process(log_url, env=env), serve_process(log_url, env=env):
        claims = asyncio.run(claims_until_each_compacted(log_url, workers=2, times=3))
    # Claimed, released by the same worker, claimed again: never two holders at once.
    for (claimed, holder), (released, leaver) in zip(claims[::2], claims[1::2], strict=False):
        assert (claimed, released, leaver) == ("claimed", "released", holder)
    positions, head, ok = asyncio.run(every_position(log_url))
    assert positions == list(range(1, head + 1)) and ok
    assert asyncio.run(start_of(log_url)) > 1


async def append_heartbeats(url: str, count: int) -> None:
    log = await open_log(url)
    try:
        await log.append([WorkerHeartbeat() for _ in range(count)], worker="writer")
    finally:
        await log.close()


def test_a_compaction_killed_at_random_points_loses_and_duplicates_nothing(
    log_url: str, archive: Path
) -> None:
    rounds, records_per_round, segment = 15, 400, 10
    chance = random.Random()
    killed = 0
    for round_number in range(rounds):
        asyncio.run(append_heartbeats(log_url, records_per_round))
        before = len(list(archive.glob("*.manifest.json")))
        # Kill after some segments, then after a random share of the next one's
        # copy, read back and trim.
        segments, spins = chance.randrange(records_per_round // segment), chance.randrange(300)
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "compact", "--log", log_url),
                *("--retain", "off", "--retain-size", "1"),
                *("--archive-segment-records", str(segment)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        deadline = time.monotonic() + HANG_GUARD
        while process.poll() is None:
            if len(list(archive.glob("*.manifest.json"))) - before >= segments:
                for _ in range(spins):
                    os.listdir(archive)  # a random bit further in, without sleeping
                process.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "the compaction did not progress"
        _, stderr = process.communicate(timeout=HANG_GUARD)
        if process.returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert process.returncode == 0, f"round {round_number}: {stderr.decode()}"
        positions, head, ok = asyncio.run(every_position(log_url))
        assert positions == list(range(1, head + 1)), f"round {round_number}"
        assert ok, f"round {round_number}: verify failed"
    assert killed >= rounds // 2, f"only {killed} of {rounds} rounds were killed mid-run"
    # After the last kill, a compaction takes the dead one's claim over and finishes.
    last = sessionlog("compact", "--log", log_url, "--retain", "off", "--retain-size", "1")
    assert last.returncode == 0, last.stderr
    assert asyncio.run(start_of(log_url)) > rounds * records_per_round // 2
