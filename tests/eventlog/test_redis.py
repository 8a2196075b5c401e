from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from eventlog import EventLog, OwnerClaimed, RedisEventLog, WorkerHeartbeat, open_log
from eventlog.redis_streams import _packing_in_c
from gateway.testing.servers import RedisServer
from tests.eventlog.contract import ServerEventLogContract, heartbeats
from tests.eventlog.retention_contract import RetentionContract

# An entry as the log's client reads it raw: (b"0-<position>", [b"t", at, b"w", worker,
# b"d", data, b"h", link]).
Entry = tuple[bytes, list[bytes]]


class TestRedisEventLog(ServerEventLogContract, RetentionContract):
    @pytest.fixture
    def server(self, redis_server: RedisServer) -> RedisServer:
        return redis_server

    @pytest.fixture
    async def log_url(self, redis_server: RedisServer, namespace: str) -> str:
        return f"{redis_server.url}?namespace={namespace}"

    @pytest.fixture
    async def push_log_url(self, log_url: str) -> str:
        return f"{log_url}&block=3600"  # XREAD BLOCK wakes on XADD, or never

    async def write_raw(self, log: EventLog, data: bytes) -> None:
        assert isinstance(log, RedisEventLog)
        client = log._redis
        position = await client.incr(log._keys[1])
        await client.xadd(log._stream, {"t": "0", "w": "raw", "d": data}, id=f"0-{position}")

    def archive_options(self, tmp_path: Path) -> dict[str, Any]:
        return {"archive": str(tmp_path / "archive")}

    async def change_byte(self, log: EventLog, position: int) -> None:
        def change(entries: list[Entry]) -> None:
            _, fields = entries[position - entries_start(entries)]
            data = fields[5]
            fields[5] = data[:-1] + bytes([data[-1] ^ 1])

        await rewrite_stream(log, change)

    async def delete_record(self, log: EventLog, position: int) -> None:
        assert isinstance(log, RedisEventLog)
        assert await log._redis.xdel(log._stream, f"0-{position}") == 1

    async def swap_records(self, log: EventLog, first: int, second: int) -> None:
        def swap(entries: list[Entry]) -> None:
            start = entries_start(entries)
            (_, a), (_, b) = entries[first - start], entries[second - start]
            # Everything but the link, which stays in place.
            a[:6], b[:6] = b[:6], a[:6]

        await rewrite_stream(log, swap)


def entries_start(entries: list[Entry]) -> int:
    return int(entries[0][0][2:])


async def rewrite_stream(log: EventLog, change: Callable[[list[Entry]], None]) -> None:
    """Write the log's stream again, as ``change`` left its entries, each under its own
    id: a stream entry cannot be edited in place, nor added again below the last id."""
    assert isinstance(log, RedisEventLog)
    client = log._redis
    entries = [(entry_id, list(fields)) for entry_id, fields in await client.xrange(log._stream)]
    change(entries)
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(log._stream)
        for entry_id, fields in entries:
            pipe.execute_command("XADD", log._stream, entry_id, *fields)
        await pipe.execute()


@pytest.mark.parametrize("block", [0.5, 5.0, 3600.0])
async def test_reads_wait_longer_than_a_tail_blocks(block: float) -> None:
    """An idle tail's XREAD BLOCK is not cut off by the socket's read timeout (redis-py
    8's default is 5 s): that counted as an outage, and the tail backed off."""
    log = RedisEventLog("redis://127.0.0.1:1/0", block=block, timeout=1.0)
    assert log._tail_redis.connection_pool.connection_kwargs["socket_timeout"] == block + 1.0
    assert log._redis.connection_pool.connection_kwargs["socket_timeout"] == 1.0


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 4, b"\x00\xff\r\n", 1.5, 0.1, 10**30, -3, "é", memoryview(b"mv")),
        ("CLIENT SETINFO", "LIB-NAME", "redis-py"),  # a subcommand in the name
        (b"CONFIG GET", "maxmemory"),
        ("PING",),
    ],
)
def test_commands_are_packed_in_c_byte_for_byte_as_redis_py_packs_them(args: tuple) -> None:
    in_c, in_python = _packing_in_c(Connection)(), Connection()
    assert type(in_c) is not Connection
    assert b"".join(in_c.pack_command(*args)) == b"".join(
        bytes(part) for part in in_python.pack_command(*args)
    )
    with pytest.raises(DataError):
        in_c.pack_command("SET", "k", None)


async def test_commits_in_flight_side_by_side_stay_gapless(
    redis_server: RedisServer, namespace: str
) -> None:
    """Batches sent before the one before them is answered: positions stay gapless
    from 1 and every caller gets its own results."""
    log = await open_log(f"{redis_server.url}?namespace={namespace}")
    try:
        assert log.commits_in_flight > 1
        appends = [log.append(heartbeats(60), worker=f"w{i}") for i in range(40)]
        claims = [log.claim(f"s{i % 5}", f"c{i}") for i in range(40)]
        results = await asyncio.gather(*appends, *claims)
        assert log.stats.commits > 1
        batches, owners = results[:40], results[40:]
        for session in range(5):
            assert len({owners[i] for i in range(session, 40, 5)}) == 1
        records = await log.read(limit=10_000)
        assert [r.position for r in records] == list(range(1, 40 * 60 + 5 + 1))
        by_position = {r.position: r.worker for r in records}
        for i, positions in enumerate(batches):
            assert positions == list(range(positions[0], positions[0] + 60))
            assert {by_position[p] for p in positions} == {f"w{i}"}
        claimed = [r.event for r in records if isinstance(r.event, OwnerClaimed)]
        assert sorted(e.owner for e in claimed) == sorted(set(owners))
    finally:
        await log.close()


async def test_event_ids_are_remembered_for_the_dedupe_window_then_forgotten(
    redis_server: RedisServer, namespace: str
) -> None:
    """An id appended again within a window of its first append (by the log's clock,
    a worker's clock behind or ahead by less than a window) is stored once; the
    hashes that remember ids expire, so ids are not kept forever."""
    now = 1_000_000.0  # 40 s into a 60 s bucket
    log = await open_log(
        f"{redis_server.url}?namespace={namespace}&dedupe_window=60", clock=lambda: now
    )
    assert isinstance(log, RedisEventLog)
    try:
        event = WorkerHeartbeat()
        [first] = await log.append([event], worker="w")
        for offset in (59.0, -50.0, 79.0):
            now = 1_000_000.0 + offset
            assert await log.append([event], worker="w") == [first]
        now = 1_000_000.0 + 180.0  # three windows on: forgotten
        assert await log.append([event], worker="w") == [first + 1]
        client = log._redis
        forever = {
            key.decode()
            async for key in client.scan_iter(match=f"{{{namespace}}}:*")
            if await client.pttl(key) == -1
        }
        assert forever == {f"{{{namespace}}}:{name}" for name in ("events", "head")}
        id_hashes = [key async for key in client.scan_iter(match=f"{{{namespace}}}:ids:*")]
        assert len(id_hashes) == 2
        for key in id_hashes:
            assert 0 < await client.pttl(key) <= 120_000  # two windows after its last write
    finally:
        await log.close()
