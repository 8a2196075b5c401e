"""The EventLog conformance suite. Each backend's test module subclasses these.

``EventLogContract`` holds for every backend; ``SharedEventLogContract`` adds what
separate OS processes sharing one log must see; ``ServerEventLogContract`` adds a
server killed and restarted mid-test. None has a ``Test`` prefix, so pytest collects
them only through their subclasses.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from eventlog import (
    CapabilitiesRecorded,
    ClientMessage,
    CodecError,
    EventLog,
    EventLogError,
    LogUnavailable,
    MessageHandled,
    OwnerClaimed,
    OwnerReleased,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
    open_log,
)
from eventlog.base import Append, Claim, Operation, Release, _stored
from gateway.testing.servers import _Server
from tests.eventlog import _processes

# Guards against hangs only; nothing here asserts how fast anything is.
HANG_GUARD = 60.0
SPAWN = multiprocessing.get_context("spawn")


def heartbeats(n: int) -> list[WorkerHeartbeat]:
    return [WorkerHeartbeat() for _ in range(n)]


def garbage_records() -> list[bytes]:
    """Bytes no reader can decode: not msgpack, an unknown tag, a known tag with a bad shape."""
    return [
        b"\xc1 not msgpack",
        msgspec.msgpack.encode({"type": "EventFromTheFuture", "id": "x1", "zz": 1}),
        msgspec.msgpack.encode({"type": "SessionOpened", "id": "x2", "session_id": 7}),
    ]


async def collect(log: EventLog, after: int, count: int) -> list[int]:
    positions = []
    async for record in log.tail(after=after):
        positions.append(record.position)
        if len(positions) == count:
            return positions
    raise AssertionError("tail ended")


class EventLogContract:
    @pytest.fixture
    async def log_url(self) -> str:
        raise NotImplementedError

    async def write_raw(self, log: EventLog, data: bytes) -> None:
        """Write ``data`` straight into the backend's storage as the next record."""
        raise NotImplementedError

    @pytest.fixture
    async def event_log(self, log_url: str) -> AsyncIterator[EventLog]:
        log = await open_log(log_url)
        yield log
        await log.close()

    async def test_empty_log(self, event_log: EventLog) -> None:
        assert await event_log.head() == 0
        assert await event_log.read() == []

    async def test_positions_strictly_increase_from_one_without_gaps(
        self, event_log: EventLog
    ) -> None:
        first = await event_log.append(heartbeats(3), worker="w1")
        second = await event_log.append(heartbeats(2), worker="w2")
        assert first + second == [1, 2, 3, 4, 5]
        assert await event_log.head() == 5
        records = await event_log.read()
        assert [r.position for r in records] == [1, 2, 3, 4, 5]
        assert [r.worker for r in records] == ["w1"] * 3 + ["w2"] * 2

    async def test_read_after_and_limit(self, event_log: EventLog) -> None:
        await event_log.append(heartbeats(10), worker="w")
        assert [r.position for r in await event_log.read(after=3, limit=4)] == [4, 5, 6, 7]
        assert await event_log.read(after=10) == []

    async def test_every_event_type_round_trips(self, event_log: EventLog) -> None:
        events = [
            SessionOpened(session_id="s", transport="sse", user="alice"),
            CapabilitiesRecorded(
                session_id="s",
                protocol_version="2025-06-18",
                client_info={"name": "c", "version": "1"},
                capabilities={"elicitation": {}},
            ),
            OwnerClaimed(session_id="s", owner="w1"),
            ClientMessage(session_id="s", payload=b'{"jsonrpc":"2.0","id":1,"method":"ping"}'),
            ServerMessage(
                session_id="s", payload=b'{"jsonrpc":"2.0","id":1,"result":{}}', reply_to="m1"
            ),
            MessageHandled(session_id="s", message_id="m1"),
            OwnerReleased(session_id="s", owner="w1"),
            SessionClosed(session_id="s", reason="client"),
            WorkerStarted(host="h", pid=1),
            WorkerHeartbeat(),
            WorkerStopped(),
        ]
        await event_log.append(events, worker="w1")
        assert [r.event for r in await event_log.read()] == events

    async def test_records_carry_the_clock_time(self, log_url: str) -> None:
        log = await open_log(log_url, clock=lambda: 1_700_000_000.25)
        try:
            await log.append(heartbeats(1), worker="w")
            (record,) = await log.read()
            assert record.at == 1_700_000_000.25
        finally:
            await log.close()

    async def test_same_event_id_twice_is_stored_once(self, event_log: EventLog) -> None:
        event = SessionOpened(session_id="s", transport="sse")
        assert await event_log.append([event], worker="w") == [1]
        assert await event_log.append([WorkerHeartbeat(), event], worker="w") == [2, 1]
        assert await event_log.append([event, event], worker="w") == [1, 1]
        expired = SessionClosed(id="expired:s", session_id="s", reason="expired")
        both = await asyncio.gather(
            event_log.append([expired], worker="a"), event_log.append([expired], worker="b")
        )
        assert both == [[3], [3]]
        assert [r.position for r in await event_log.read()] == [1, 2, 3]

    async def test_concurrent_batches_stay_contiguous(self, event_log: EventLog) -> None:
        batches = await asyncio.gather(
            *(event_log.append(heartbeats(7), worker=f"w{i}") for i in range(30))
        )
        for positions in batches:
            assert positions == list(range(positions[0], positions[0] + 7))
        assert sorted(p for batch in batches for p in batch) == list(range(1, 211))
        by_position = {r.position: r.worker for r in await event_log.read(limit=1000)}
        for i, positions in enumerate(batches):
            assert {by_position[p] for p in positions} == {f"w{i}"}

    async def test_a_batch_that_cannot_be_encoded_stores_nothing(self, event_log: EventLog) -> None:
        bad = CapabilitiesRecorded(
            session_id="s", protocol_version="x", capabilities={"not": object()}
        )
        with pytest.raises(CodecError):
            await event_log.append([WorkerHeartbeat(), bad], worker="w")
        assert await event_log.head() == 0

    async def test_concurrent_appends_share_commits(self, event_log: EventLog) -> None:
        await asyncio.gather(*(event_log.append(heartbeats(1), worker="w") for _ in range(200)))
        assert await event_log.head() == 200
        assert event_log.stats.operations == 200
        assert event_log.stats.commits < 200

    async def test_claim_is_compare_and_set(self, event_log: EventLog) -> None:
        assert await event_log.claim("s", "w1") == "w1"
        assert await event_log.claim("s", "w2") == "w1"  # expected None, but w1 owns it
        assert await event_log.claim("s", "w2", expected="w3") == "w1"
        assert await event_log.claim("s", "w2", expected="w1") == "w2"  # takeover
        assert await event_log.release("s", "w1") is False
        assert await event_log.release("s", "w2") is True
        assert await event_log.claim("s", "w3") == "w3"
        events = [r.event for r in await event_log.read()]
        assert [(type(e).__name__, e.owner) for e in events] == [
            ("OwnerClaimed", "w1"),
            ("OwnerClaimed", "w2"),
            ("OwnerReleased", "w2"),
            ("OwnerClaimed", "w3"),
        ]
        assert [getattr(e, "previous", None) for e in events] == [None, "w1", None, None]

    async def test_each_role_has_its_own_owner(self, event_log: EventLog) -> None:
        assert await event_log.claim("s", "w1") == "w1"
        assert await event_log.claim("s", "alice@example.com", role="user") == "alice@example.com"
        assert await event_log.claim("s", "bob@example.com", role="user") == "alice@example.com"
        assert await event_log.release("s", "w1", role="user") is False
        assert await event_log.release("s", "alice@example.com", role="user") is True
        assert await event_log.claim("s", "w2", expected="w1") == "w2"
        claimed = [r.event for r in await event_log.read() if isinstance(r.event, OwnerClaimed)]
        assert [(c.owner, c.role) for c in claimed] == [
            ("w1", "worker"),
            ("alice@example.com", "user"),
            ("w2", "worker"),
        ]

    async def test_concurrent_claims_have_one_winner(self, event_log: EventLog) -> None:
        owners = await asyncio.gather(*(event_log.claim("s", f"w{i}") for i in range(50)))
        assert len(set(owners)) == 1
        claimed = [r for r in await event_log.read() if isinstance(r.event, OwnerClaimed)]
        assert len(claimed) == 1 and claimed[0].event.owner == owners[0]

    async def test_tail_yields_existing_then_new_records_in_order(
        self, event_log: EventLog
    ) -> None:
        await event_log.append(heartbeats(5), worker="w")
        tail = asyncio.create_task(collect(event_log, after=2, count=3 + 40))
        for _ in range(20):
            await event_log.append(heartbeats(2), worker="w")
        positions = await asyncio.wait_for(tail, HANG_GUARD)
        assert positions == list(range(3, 46))

    async def test_undecodable_records_are_skipped_and_counted(self, event_log: EventLog) -> None:
        await event_log.append(heartbeats(1), worker="w")
        for data in garbage_records():
            await self.write_raw(event_log, data)
        await event_log.append(heartbeats(1), worker="w")
        assert await event_log.head() == 5
        assert [r.position for r in await event_log.read()] == [1, 5]
        assert [r.position for r in await event_log.read()] == [1, 5]
        assert event_log.stats.undecodable == 3  # each counted once, however often read
        # A tail goes on past them, even when they are the last records.
        for data in garbage_records():
            await self.write_raw(event_log, data)
        tail = asyncio.create_task(collect(event_log, after=0, count=3))
        await event_log.append(heartbeats(1), worker="w")
        assert await asyncio.wait_for(tail, HANG_GUARD) == [1, 5, 9]
        assert event_log.stats.undecodable == 6
        # read_page says how far it got, so a reader steps past undecodable rows too.
        records, reached = await event_log.read_page(after=5, limit=3)
        assert (records, reached) == ([], 8)

    async def test_snapshots_keep_the_newest(self, event_log: EventLog) -> None:
        assert await event_log.load_snapshot("registry") is None
        await event_log.save_snapshot("registry", 10, b"at ten")
        await event_log.save_snapshot("registry", 5, b"older, ignored")
        await event_log.save_snapshot("other", 1, b"\x00binary\xff")
        assert await event_log.load_snapshot("registry") == b"at ten"
        await event_log.save_snapshot("registry", 20, b"at twenty")
        assert await event_log.load_snapshot("registry") == b"at twenty"
        assert await event_log.load_snapshot("other") == b"\x00binary\xff"

    async def test_a_snapshot_told_to_replace_replaces_a_newer_one(
        self, event_log: EventLog
    ) -> None:
        # A log rolled back behind its snapshot: a worker that re-folded it saves one
        # at a lower position in place of the one that no longer describes it.
        await event_log.save_snapshot("registry", 20, b"of the log before the rollback")
        await event_log.save_snapshot("registry", 8, b"re-folded", replace=True)
        assert await event_log.load_snapshot("registry") == b"re-folded"
        await event_log.save_snapshot("registry", 5, b"older, ignored")
        assert await event_log.load_snapshot("registry") == b"re-folded"
        await event_log.save_snapshot("registry", 9, b"newer")
        assert await event_log.load_snapshot("registry") == b"newer"

    async def test_closed_log_refuses_appends(self, log_url: str) -> None:
        log = await open_log(log_url)
        await log.close()
        await log.close()
        with pytest.raises(Exception, match="closed"):
            await log.append(heartbeats(1), worker="w")


class SharedEventLogContract(EventLogContract):
    """Separate OS processes sharing one log."""

    async def test_a_read_only_log_reads_and_never_writes(self, log_url: str) -> None:
        async with await open_log(log_url) as log:
            [position] = await log.append(heartbeats(1), worker="w")
        async with await open_log(log_url, read_only=True) as audit:
            assert [r.position for r in await audit.read()] == [position]
            assert await audit.head() == position
            with pytest.raises(EventLogError, match="read-only"):
                await audit.append(heartbeats(1), worker="w")
            with pytest.raises(EventLogError, match="read-only"):
                await audit.claim("s", "w")
            with pytest.raises(EventLogError, match="read-only"):
                await audit.save_snapshot("s", position, b"x")
        async with await open_log(log_url) as log:
            assert await log.head() == position  # nothing was written

    async def test_claim_race_from_8_processes_has_one_winner(self, log_url: str) -> None:
        log = await open_log(log_url)  # create the storage before the race
        await log.close()
        barrier, results = SPAWN.Barrier(8), SPAWN.Queue()
        processes = [
            SPAWN.Process(target=_processes.claim, args=(log_url, "s", f"w{i}", barrier, results))
            for i in range(8)
        ]
        outcomes = await _run_processes(processes, results, 8)
        owners = {owner for _, owner in outcomes}
        assert len(owners) == 1
        (winner,) = owners
        assert winner in {worker for worker, _ in outcomes}
        log = await open_log(log_url)
        try:
            claims = [r.event for r in await log.read() if isinstance(r.event, OwnerClaimed)]
            assert [c.owner for c in claims] == [winner]
        finally:
            await log.close()

    async def test_tail_sees_every_append_of_4_processes_once_in_order(self, log_url: str) -> None:
        log = await open_log(log_url)
        await log.close()
        per_process, total = 5_000, 20_000
        barrier, results = SPAWN.Barrier(4), SPAWN.Queue()
        tailer = SPAWN.Process(target=_processes.tail_all, args=(log_url, total, results))
        appenders = [
            SPAWN.Process(
                target=_processes.append_many, args=(log_url, f"w{i}", per_process, 50, barrier)
            )
            for i in range(4)
        ]
        (positions,) = await _run_processes([tailer, *appenders], results, 1)
        assert positions == list(range(1, total + 1))
        log = await open_log(log_url)
        try:
            assert await log.head() == total
            workers: dict[str, int] = {}
            after = 0
            while batch := await log.read(after=after, limit=5000):
                for record in batch:
                    workers[record.worker] = workers.get(record.worker, 0) + 1
                after = batch[-1].position
            assert workers == {f"w{i}": per_process for i in range(4)}
        finally:
            await log.close()

    async def test_tail_in_another_process_is_woken_by_each_commit(self, push_log_url: str) -> None:
        # push_log_url turns off any timed re-read, so only a wake-up can deliver.
        log = await open_log(push_log_url)
        try:
            results = SPAWN.Queue()
            rounds = 20
            tailer = SPAWN.Process(target=_processes.tail, args=(push_log_url, 0, rounds, results))
            tailer.start()
            try:
                for expected in range(1, rounds + 1):
                    # Ping-pong: the next append only after the tail has the previous one,
                    # so the tail is usually already waiting when the commit lands.
                    await log.append(heartbeats(1), worker="w")
                    position, _ = await asyncio.to_thread(results.get, True, HANG_GUARD)
                    assert position == expected
            finally:
                tailer.join(HANG_GUARD)
                if tailer.is_alive():
                    tailer.kill()
            assert tailer.exitcode == 0
        finally:
            await log.close()


class ServerEventLogContract(SharedEventLogContract):
    """A backend that is a server of its own, which can go away and come back."""

    @pytest.fixture
    def server(self) -> _Server:
        raise NotImplementedError

    async def test_server_killed_and_restarted(self, log_url: str, server: _Server) -> None:
        log = await open_log(log_url)
        try:
            acknowledged = await log.append(heartbeats(10), worker="w")
            tail = asyncio.create_task(collect(log, after=0, count=20))
            server.kill()
            try:
                with pytest.raises(LogUnavailable) as raised:
                    await log.append(heartbeats(1), worker="w")
                assert "unavailable" in str(raised.value)
                with pytest.raises(LogUnavailable):
                    await log.head()
                with pytest.raises(LogUnavailable):
                    await log.claim("s", "w")
            finally:
                server.start()
            acknowledged += await log.append(heartbeats(10), worker="w")
            assert await asyncio.wait_for(tail, HANG_GUARD) == acknowledged
            assert [r.position for r in await log.read(limit=100)] == acknowledged
            assert await log.claim("s", "w") == "w"
        finally:
            await log.close()

    async def test_calls_after_the_server_restarted_work(
        self, log_url: str, server: _Server
    ) -> None:
        # No call fails: the pooled connections died with the server, unnoticed until
        # used (the event loop did not run in between), and are replaced.
        log = await open_log(log_url)
        try:
            assert await log.append(heartbeats(2), worker="w") == [1, 2]
            server.restart()
            assert await log.append(heartbeats(1), worker="w") == [3]
            server.restart()
            assert await log.head() == 3
            assert await log.claim("s", "w") == "w"
        finally:
            await log.close()

    async def test_server_frozen_times_out_calls_then_works_again(
        self, log_url: str, server: _Server
    ) -> None:
        """With every process of the server stopped (hung, or behind a partition),
        each call raises LogUnavailable after the log's timeout instead of hanging;
        thawed, the same object works, and a tail that ran through it delivers every
        acknowledged append."""
        log = await open_log(f"{log_url}&timeout=1")
        try:
            acknowledged = await log.append(heartbeats(5), worker="w")
            await log.save_snapshot("s", 1, b"x")
            calls = [
                lambda: log.append(heartbeats(1), worker="w"),
                log.head,
                log.read,
                lambda: log.claim("s", "w"),
                lambda: log.release("s", "w"),
                lambda: log.save_snapshot("s", 2, b"y"),
                lambda: log.load_snapshot("s"),
            ]
            tail = asyncio.create_task(collect(log, after=0, count=len(acknowledged) + 5))
            server.freeze()
            try:
                for call in calls:
                    with pytest.raises(LogUnavailable, match=r"no answer within 1\.0 s"):
                        await asyncio.wait_for(call(), HANG_GUARD)
            finally:
                server.thaw()
            acknowledged += await log.append(heartbeats(5), worker="w")
            # What timed out may have been stored all the same once the server woke.
            head = await log.head()
            everything = await asyncio.wait_for(tail, HANG_GUARD)
            if head > len(everything):
                everything += await collect(log, everything[-1], count=head - len(everything))
            assert everything == list(range(1, head + 1))
            assert set(acknowledged) <= set(everything)
        finally:
            await log.close()

    async def test_a_commit_sent_twice_is_answered_as_the_first_time(
        self, event_log: EventLog
    ) -> None:
        # A commit whose connection broke before its answer came is sent again.
        await event_log.claim("taken", "other")
        events = heartbeats(2)
        batch: list[Operation] = [
            Append("w", [_stored(events[0]), _stored(events[1]), _stored(events[0])]),
            Claim("s", "w", None, _stored(OwnerClaimed(session_id="s", owner="w"))),
            Claim("taken", "w", None, _stored(OwnerClaimed(session_id="taken", owner="w"))),
            Release("s", "w", _stored(OwnerReleased(session_id="s", owner="w"))),
            Release("taken", "w", _stored(OwnerReleased(session_id="taken", owner="w"))),
        ]
        first = await event_log._commit(batch)
        assert first == [[2, 3, 2], "w", "other", True, False]
        assert await event_log._commit(batch) == first
        assert await event_log.head() == 5  # the heartbeats, the claim and the release
        assert await event_log.claim("s", "x") == "x"  # released for good


async def _run_processes(processes: list[Any], results: Any, expected: int) -> list[Any]:
    for process in processes:
        process.start()
    outcomes = []
    try:
        for _ in range(expected):
            outcomes.append(await asyncio.to_thread(results.get, True, HANG_GUARD * 3))
    except queue.Empty:
        raise AssertionError("a process did not report") from None
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, HANG_GUARD)
            if process.is_alive():
                process.kill()
    assert [p.exitcode for p in processes] == [0] * len(processes)
    return outcomes
