"""Compaction in one process, on a memory log with an archive directory: the
retention settings, what a run moves and what it keeps for open sessions, the claim
that lets one worker compact at a time. (Separate processes: test_audit_cli.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from eventlog import (
    ClientMessage,
    EventLog,
    MemoryEventLog,
    MessageHandled,
    ServerMessage,
    SessionOpened,
    WorkerHeartbeat,
    open_log,
)
from eventlog.verify import verify
from gateway.cli import main
from gateway.compaction import COMPACTION_KEY, CompactionCollector, oldest_needed
from gateway.reading import pages
from gateway.runtime import WorkerRuntime
from gateway.settings import Settings, parse_duration, parse_retention, parse_size
from projections import SERVER_HISTORY, SNAPSHOT_NAME, RegistryProjection, restore
from tests.gateway.helpers import FakeClock

DAY = 86_400.0


async def nothing(message: dict[str, Any], context: Any) -> None:
    return None


def test_retention_settings_parse() -> None:
    assert [parse_duration(text) for text in ("90s", "15m", "12h", "7d", "300", "1.5h")] == [
        90,
        900,
        43_200,
        604_800,
        300,
        5400,
    ]
    assert parse_retention("off") is None and parse_retention("OFF") is None
    assert parse_size("500MB") == 500 * 10**6 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("1048576") == 2**20 and parse_size("off") is None
    for bad in ("7 weeks", "", "-5s", "0", "d7", "1e9"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="size"):
        parse_size("12 parsecs")
    defaults = Settings()
    assert (defaults.retain, defaults.retain_size, defaults.compact_interval) == (
        7 * DAY,
        None,
        300.0,
    )


def test_a_bad_retention_flag_is_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["compact", "--log", "memory://", "--retain", "a week"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "sessionlog compact: error: argument --retain: 'a week' is not a duration "
        "(e.g. 90s, 15m, 12h, 7d, 300)"
    )


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EventLog]:
    opened = await open_log("memory://", archive=str(tmp_path / "archive"))
    yield opened
    await opened.close()


async def positions(log: EventLog) -> list[int]:
    """Every record's position, archive and hot log read as one log."""
    return [r.position async for page, _ in pages(log) for r in page]


async def started(log: EventLog, clock: FakeClock, name: str, **settings: Any) -> WorkerRuntime:
    runtime = WorkerRuntime(log, name, nothing, settings=Settings(**settings), clock=clock)
    await runtime.start(housekeeping=False)
    return runtime


async def test_a_run_moves_what_is_past_the_window_and_keeps_what_open_sessions_need(
    log: EventLog,
) -> None:
    clock = FakeClock()
    log.clock = clock
    a = await started(log, clock, "a", retain=DAY, snapshot_every=1_000_000)
    worker = "a"
    # Old history: a session with nothing waiting, heartbeats.
    await log.append([SessionOpened(session_id="idle", transport="sse")], worker=worker)
    await log.append([WorkerHeartbeat() for _ in range(50)], worker=worker)
    # An open session with a message still pending and server messages to resume from.
    await log.append([SessionOpened(session_id="open", transport="sse")], worker=worker)
    await log.append([WorkerHeartbeat() for _ in range(30)], worker=worker)
    pending = ClientMessage(session_id="open", payload=b'{"id":1}')
    (pending_at,) = await log.append([pending], worker=worker)
    await log.append([WorkerHeartbeat() for _ in range(30)], worker=worker)
    sent = await log.append(
        [ServerMessage(session_id="open", payload=b'{"n":%d}' % n) for n in range(3)],
        worker=worker,
    )
    clock.advance(2 * DAY)  # all of the above is past the window now
    await log.append([WorkerHeartbeat() for _ in range(20)], worker=worker)
    done = await a.housekeeping.compact()
    assert done is not None and done.start_before == 1
    assert done.needed_from == pending_at  # the pending message is the oldest needed
    assert done.start == pending_at == await log.start()
    assert a.housekeeping.compaction.archived == pending_at - 1

    # Every position once, below the start from the archive, the rest hot.
    head = await log.head()
    assert await positions(log) == list(range(1, head + 1))
    assert (await verify(log)).ok
    # Resuming the open session's stream from before the start serves what is kept.
    resumed = [m.position async for m in a.sent_after("open", 1, head)]
    assert resumed == sent
    # The pending message is answered once it is handled: then the server messages
    # are the oldest needed, and a run moves up to them.
    await log.append([MessageHandled(session_id="open", message_id=pending.id)], worker=worker)
    done = await a.housekeeping.compact()
    assert done is not None and done.start == sent[0]
    # A worker starting now folds from the snapshot the run saved, at or past the start.
    snapshot = await log.load_snapshot(SNAPSHOT_NAME)
    assert snapshot is not None and restore(snapshot).position + 1 >= await log.start()
    b = await started(log, clock, "b")
    await a.sync()
    await b.sync()
    assert oldest_needed(b.projection.state) == sent[0]
    assert (
        b.projection.state.sessions.keys() == a.projection.state.sessions.keys() == {"idle", "open"}
    )
    # Records within the window stay: a run now moves nothing more.
    again = await a.housekeeping.compact()
    assert again is not None and again.moved == 0
    # The metrics say what moved.
    registry = CollectorRegistry()
    registry.register(CompactionCollector(lambda: a.housekeeping.compaction))
    assert registry.get_sample_value("sessionlog_compaction_runs_total") == 3
    assert registry.get_sample_value("sessionlog_log_start_position") == sent[0]
    assert registry.get_sample_value("sessionlog_compaction_archived_records_total") == sent[0] - 1
    for runtime in (a, b):
        await runtime.stop()


async def test_the_size_budget_moves_more_but_never_what_is_needed(log: EventLog) -> None:
    clock = FakeClock()
    log.clock = clock
    # The window alone would keep everything: the size budget moves it.
    a = await started(log, clock, "a", retain=30 * DAY, retain_size=1)
    await log.append([WorkerHeartbeat() for _ in range(100)], worker="a")
    await log.append([SessionOpened(session_id="open", transport="sse")], worker="a")
    (pending_at,) = await log.append([ClientMessage(session_id="open", payload=b"{}")], worker="a")
    await log.append([WorkerHeartbeat() for _ in range(100)], worker="a")
    done = await a.housekeeping.compact()
    assert done is not None and done.start == pending_at
    await a.stop()


async def test_retention_off_moves_nothing(log: EventLog) -> None:
    clock = FakeClock()
    a = await started(log, clock, "a", retain=None)
    await log.append([WorkerHeartbeat() for _ in range(10)], worker="a")
    assert a.housekeeping.compaction.possible is not None
    await a.stop()


async def test_one_worker_compacts_at_a_time_and_a_dead_holders_claim_is_taken_over(
    log: EventLog,
) -> None:
    clock = FakeClock()
    a = await started(log, clock, "a", retain=DAY)
    b = await started(log, clock, "b", retain=DAY)
    # a holds the claim (a run of its in progress, as far as b can tell).
    assert await log.claim(COMPACTION_KEY, "a", None, role="compactor") == "a"
    await b.sync()
    assert await b.housekeeping.compact() is None  # a is alive: b leaves it
    # a stops beating: after three heartbeats' time b takes the claim over.
    clock.advance(3 * b.settings.heartbeat_interval + 1)
    await b.housekeeping.heartbeat()
    done = await b.housekeeping.compact()
    assert done is not None
    # b let go after its run: a compacts next time.
    await a.housekeeping.heartbeat()
    assert await a.housekeeping.compact() is not None
    # The claims are the log's, not any session's: the fold keeps nothing of them.
    assert COMPACTION_KEY not in a.projection.state.sessions
    for runtime in (a, b):
        await runtime.stop()


async def test_no_archive_no_compaction(tmp_path: Path) -> None:
    log = await open_log("memory://")
    runtime = WorkerRuntime(log, "a", nothing, clock=FakeClock())
    await runtime.start(housekeeping=False)
    assert "no archive" in (runtime.housekeeping.compaction.possible or "")
    await runtime.stop()
    await log.close()


def test_oldest_needed_of_an_empty_fold_is_past_it() -> None:
    assert oldest_needed(RegistryProjection().state) == 1


async def test_a_broken_chain_moves_nothing_and_is_said_not_raised(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    log.clock = clock
    a = await started(log, clock, "a", retain=DAY)
    await log.append([WorkerHeartbeat() for _ in range(20)], worker="a")
    clock.advance(2 * DAY)
    await log.append([WorkerHeartbeat()], worker="a")
    assert isinstance(log, MemoryEventLog)
    row = log._rows[5]  # someone changed a byte of position 6 in the hot log
    log._rows[5] = (*row[:3], row[3][:-1] + bytes([row[3][-1] ^ 1]))
    assert await a.housekeeping.compact() is None
    assert await log.start() == 1
    assert (
        "chain is broken" in caplog.text and "position 6" in a.housekeeping.compaction.chain_broken
    )
    registry = CollectorRegistry()
    registry.register(CompactionCollector(lambda: a.housekeeping.compaction))
    assert registry.get_sample_value("sessionlog_compaction_chain_broken") == 1
    # The claim was let go: the next run (after a repair) is not locked out.
    assert await log.claim(COMPACTION_KEY, "b", None, role="compactor") == "b"
    await a.stop()


async def test_a_resume_from_before_the_start_is_served_from_the_archive(log: EventLog) -> None:
    clock = FakeClock()
    log.clock = clock
    a = await started(log, clock, "a", retain=DAY)
    (opened,) = await log.append([SessionOpened(session_id="s", transport="sse")], worker="a")
    # More server messages than the fold keeps for resumes: the oldest may be archived.
    sent = await log.append(
        [ServerMessage(session_id="s", payload=b'{"n":%d}' % n) for n in range(SERVER_HISTORY + 5)],
        worker="a",
    )
    clock.advance(2 * DAY)
    await log.append([WorkerHeartbeat()], worker="a")
    done = await a.housekeeping.compact()
    assert done is not None and done.start == sent[5]  # the oldest message kept
    # A client resuming after the opening (an event id below the start) gets every
    # message once: five read back from the archive, the rest from the hot log.
    head = await log.head()
    resumed = [(m.position, m.payload) async for m in a.sent_after("s", opened, head)]
    assert resumed == [(p, b'{"n":%d}' % n) for n, p in enumerate(sent)]
    await a.stop()
