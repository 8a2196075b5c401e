"""Group commit with several batches in flight (``EventLog.commits_in_flight``).

The memory backend with a gate in front of its commits holds batches in flight as long
as a test needs, so what overlaps is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio

import pytest

from eventlog import LogUnavailable, MemoryEventLog, WorkerHeartbeat
from eventlog.base import MIN_SHARED_BATCH_EVENTS, Append, Operation


def heartbeats(n: int) -> list[WorkerHeartbeat]:
    return [WorkerHeartbeat() for _ in range(n)]


class GatedLog(MemoryEventLog):
    """Commits wait until the gate opens; a batch carrying worker "doomed" fails."""

    def __init__(self, commits_in_flight: int) -> None:
        super().__init__()
        self.commits_in_flight = commits_in_flight
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.batch_sizes: list[int] = []  # events of each batch, as its commit starts

    async def _commit(self, operations: list[Operation]) -> list[object]:
        self.batch_sizes.append(sum(len(o.events) for o in operations if isinstance(o, Append)))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        if any(getattr(operation, "worker", None) == "doomed" for operation in operations):
            raise LogUnavailable("doomed batch")
        return await super()._commit(operations)


async def until(condition: object) -> None:
    """Let the event loop run until ``condition()`` holds (no time needs to pass)."""
    for _ in range(1_000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("never held")


def test_one_commit_in_flight_unless_a_backend_asks() -> None:
    assert MemoryEventLog.commits_in_flight == 1


async def test_one_in_flight_batches_everything_that_waited() -> None:
    log = GatedLog(commits_in_flight=1)
    first = asyncio.create_task(log.append(heartbeats(1), worker="w0"))
    await until(lambda: log.in_flight == 1)
    rest = [asyncio.create_task(log.append(heartbeats(1), worker=f"w{i}")) for i in range(1, 50)]
    await until(lambda: len(log._pending) == 49)
    log.gate.set()
    assert await first == [1]
    assert sorted(p for batch in await asyncio.gather(*rest) for p in batch) == list(range(2, 51))
    assert log.batch_sizes == [1, 49]
    assert log.most_in_flight == 1


async def test_batches_in_flight_side_by_side_stay_gapless_and_matched() -> None:
    log = GatedLog(commits_in_flight=3)
    tasks = []
    for i in range(3):  # each starts a flusher while the ones before wait at the gate
        tasks.append(asyncio.create_task(log.append(heartbeats(5), worker=f"w{i}")))
        await until(lambda: log.in_flight == len(tasks))
    tasks += [asyncio.create_task(log.append(heartbeats(5), worker=f"w{i}")) for i in range(3, 40)]
    await until(lambda: len(log._pending) == 37)
    assert log.in_flight == 3  # the bound: the rest wait for a flusher
    log.gate.set()
    batches = [await task for task in tasks]
    assert log.most_in_flight == 3
    assert sorted(p for batch in batches for p in batch) == list(range(1, 201))
    by_position = {r.position: r.worker for r in await log.read()}
    for i, positions in enumerate(batches):
        assert positions == list(range(positions[0], positions[0] + 5))
        assert {by_position[p] for p in positions} == {f"w{i}"}


async def test_a_large_batch_is_shared_between_idle_flushers() -> None:
    log = GatedLog(commits_in_flight=2)
    per_append = MIN_SHARED_BATCH_EVENTS // 2
    tasks = [
        asyncio.create_task(log.append(heartbeats(per_append), worker=f"w{i}")) for i in range(8)
    ]
    await until(lambda: log.in_flight == 2)
    log.gate.set()
    await asyncio.gather(*tasks)
    assert log.batch_sizes == [4 * per_append, 4 * per_append]


async def test_a_small_batch_is_not_shared() -> None:
    log = GatedLog(commits_in_flight=2)
    tasks = [asyncio.create_task(log.append(heartbeats(1), worker=f"w{i}")) for i in range(20)]
    await until(lambda: log.in_flight == 1)
    log.gate.set()
    await asyncio.gather(*tasks)
    assert log.batch_sizes == [20]


async def test_a_failing_batch_fails_only_its_own_callers() -> None:
    log = GatedLog(commits_in_flight=2)
    doomed = asyncio.create_task(log.append(heartbeats(2), worker="doomed"))
    await until(lambda: log.in_flight == 1)
    fine = [asyncio.create_task(log.append(heartbeats(1), worker=f"w{i}")) for i in range(3)]
    await until(lambda: log.in_flight == 2)
    log.gate.set()
    with pytest.raises(LogUnavailable):
        await doomed
    assert sorted(p for batch in await asyncio.gather(*fine) for p in batch) == [1, 2, 3]
    assert {r.worker for r in await log.read()} == {"w0", "w1", "w2"}
    assert await log.append(heartbeats(1), worker="w") == [4]  # and the log goes on
    assert not log._flushers


async def test_close_waits_for_every_batch_in_flight() -> None:
    log = GatedLog(commits_in_flight=2)
    first = asyncio.create_task(log.append(heartbeats(1), worker="a"))
    await until(lambda: log.in_flight == 1)
    second = asyncio.create_task(log.append(heartbeats(1), worker="b"))
    await until(lambda: log.in_flight == 2)
    closing = asyncio.create_task(log.close())
    await asyncio.sleep(0)
    assert not closing.done()
    log.gate.set()
    await closing
    assert sorted([*await first, *await second]) == [1, 2]
