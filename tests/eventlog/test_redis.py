from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from eventlog import EventLog, OwnerClaimed, RedisEventLog, WorkerHeartbeat, open_log
from eventlog.archive import DirectoryArchive
from eventlog.base import Append, StoredEvent
from eventlog.chain import GENESIS, linker
from eventlog.codec import encode_event
from eventlog.errors import EventLogError
from eventlog.redis_streams import _packing_in_c
from eventlog.verify import verify
from gateway.testing.servers import RedisServer
from tests.eventlog import _processes
from tests.eventlog.contract import (
    HANG_GUARD,
    SPAWN,
    ServerEventLogContract,
    heartbeats,
)
from tests.eventlog.retention_contract import RetentionContract, fill, read_everything

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
        assert forever == {f"{{{namespace}}}:{name}" for name in ("events", "head", "head_link")}
        id_hashes = [key async for key in client.scan_iter(match=f"{{{namespace}}}:ids:*")]
        assert len(id_hashes) == 2
        for key in id_hashes:
            assert 0 < await client.pttl(key) <= 120_000  # two windows after its last write
    finally:
        await log.close()


def test_the_script_links_as_eventlog_chain_does(redis_server: RedisServer, namespace: str) -> None:
    """The commit script's SHA-1 link of a record is byte for byte eventlog.chain's, for
    any worker name (its UTF-8 length, not its characters), time and data; the time
    the script packs is the one the log reads back from the entry."""
    now = [0.0]
    with asyncio.Runner() as runner:
        log = runner.run(
            open_log(f"{redis_server.url}?namespace={namespace}", clock=lambda: now[0])
        )
        assert isinstance(log, RedisEventLog) and log.hash_name == "sha1"
        link = linker("sha1")
        previous = [GENESIS]
        try:

            @settings(max_examples=300, deadline=None, database=None)
            @given(
                worker=st.text(),
                at=st.floats(allow_nan=False, allow_infinity=False),
                data=st.binary(),
            )
            @example(worker="", at=-0.0, data=b"")
            @example(worker="\u00e9\U0001f600\x00", at=5e-324, data=b"\x00\xff")
            @example(worker="w", at=1.7976931348623157e308, data=b"d")
            @example(worker="w", at=1764696000.1234567, data=b"d")  # a clock's time
            def commit(worker: str, at: float, data: bytes) -> None:
                now[0] = at
                event = StoredEvent(f"e{runner.run(log.head())}", None, data)
                [[position]] = runner.run(log._commit([Append(worker, [event])]))
                [row] = runner.run(log.read_chained(position - 1, 1))
                assert (row.position, row.at, row.worker, row.data) == (position, at, worker, data)
                assert row.chain == link(previous[0], position, at, worker, data)
                previous[0] = row.chain

            commit()
            checked = runner.run(verify(log))
            assert checked.ok and checked.checked == runner.run(log.head())
        finally:
            runner.run(log.close())


async def test_entries_without_links_are_unchained_and_the_chain_starts_again_after_them(
    redis_server: RedisServer, namespace: str
) -> None:
    """Entries written by an older sessionlog (no link field), before chained ones or
    among them, stay unchained; the records after them chain from GENESIS (the script
    looks at the head entry itself when the link it kept is not the head's), and the
    log verifies."""
    url = f"{redis_server.url}?namespace={namespace}"
    log = await open_log(url)
    assert isinstance(log, RedisEventLog)
    try:
        client = log._redis

        async def write_unchained(count: int) -> None:
            for event in heartbeats(count):
                position = await client.incr(log._keys[1])
                fields = {"t": repr(1000.0 + position), "w": "old", "d": encode_event(event)}
                await client.xadd(log._stream, fields, id=f"0-{position}")

        await write_unchained(3)
        await fill(log, 2)
        await write_unchained(1)
        await fill(log, 1)
        rows = await log.read_chained(0, 100)
        unchained = [row.position for row in rows if row.chain is None]
        assert unchained == [1, 2, 3, 14]
        link, previous = linker("sha1"), GENESIS
        for row in rows:
            if row.chain is None:
                previous = GENESIS
                continue
            assert row.chain == link(previous, row.position, row.at, row.worker, row.data)
            previous = row.chain
        assert [r.position for r in await log.read()] == list(range(1, 20))
        checked = await verify(log)
        assert checked.ok, checked.broken
        assert (checked.unchained, checked.checked) == (4, 15)
    finally:
        await log.close()


async def test_moves_under_appends_of_another_process_keep_the_log_whole(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """Trims (XTRIM MINID) while another process appends: the chain holds across them,
    positions stay gapless from 1, and a tail from 0 meanwhile reads every record once
    in order, from the archive where the hot log no longer has it."""
    url = f"{redis_server.url}?namespace={namespace}"
    total = 20_000
    log = await open_log(url, archive=str(tmp_path / "archive"))
    try:
        barrier = SPAWN.Barrier(2)
        appender = SPAWN.Process(
            target=_processes.append_many, args=(url, "other", total, 50, barrier)
        )
        appender.start()

        async def tail() -> list[int]:
            seen: list[int] = []
            async for page, _ in log.tail_pages(0, limit=500):
                seen += [record.position for record in page]
                if seen[-1] == total:
                    return seen
            return seen

        async with asyncio.timeout(HANG_GUARD):
            tailing = asyncio.create_task(tail())
            await asyncio.to_thread(barrier.wait)
            moves = 0
            while appender.is_alive() or moves == 0:
                await log.archive_until(await log.head(), segment_records=1_000)
                moves += 1
                await asyncio.sleep(0)  # let the tail read between moves
            await asyncio.to_thread(appender.join)
            assert appender.exitcode == 0
            seen = await tailing
        assert seen == list(range(1, total + 1))
        assert await log.head() == total
        start = await log.start()
        assert 1 < start <= total
        assert [record[0] for record in await read_everything(log)] == seen
        checked = await verify(log)
        assert checked.ok, checked.broken
        assert (checked.archived, checked.checked) == (start - 1, total)
    finally:
        await log.close()


async def test_server_memory_is_given_back_by_a_move(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    log = await open_log(
        f"{redis_server.url}?namespace={namespace}", archive=str(tmp_path / "archive")
    )
    assert isinstance(log, RedisEventLog)
    try:
        head = await fill(log, 200, 50)
        client = log._redis
        stream, used = await log.hot_size(), (await client.info("memory"))["used_memory"]
        # Estimated from 100 nodes of 4 KiB: within a few percent of every node counted.
        assert stream == pytest.approx(await client.memory_usage(log._stream, samples=0), 0.05)
        await log.archive_until(head)
        assert await log.hot_size() < stream / 50  # the head record's node, and the stream
        assert (await client.info("memory"))["used_memory"] < used - stream / 2
    finally:
        await log.close()


async def test_the_archive_is_named_in_the_url_and_none_by_default(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """No filesystem is shared by a Redis server's clients: no archive unless named."""
    url = f"{redis_server.url}?namespace={namespace}"
    for query, archived in [("", None), ("&archive=none", None), ("&archive=file://", "error")]:
        if archived == "error":
            with pytest.raises(EventLogError, match="names no directory"):
                await open_log(url + query)
            continue
        log = await open_log(url + query)
        try:
            assert log.archive is None
            await fill(log, 2)
            with pytest.raises(EventLogError, match="no archive"):
                await log.archive_until(5)
        finally:
            await log.close()
    log = await open_log(f"{url}&archive=file://{tmp_path / 'archive'}")
    try:
        assert isinstance(log.archive, DirectoryArchive)
        assert log.archive.path == tmp_path / "archive"
        head = await fill(log, 2)
        assert await log.archive_until(head) == head
        assert (await verify(log)).archived == head - 1
    finally:
        await log.close()


async def test_a_link_that_is_not_hex_is_a_break_not_an_error(
    redis_server: RedisServer, namespace: str
) -> None:
    log = await open_log(f"{redis_server.url}?namespace={namespace}")
    try:
        await fill(log, 2)

        def garble(entries: list[Entry]) -> None:
            entries[4][1][7] = b"not hex"

        await rewrite_stream(log, garble)
        checked = await verify(log)
        assert checked.broken is not None
        assert (checked.broken.position, checked.broken.where) == (5, "hot log")
    finally:
        await log.close()
