"""What every backend's chain, start position and archive must do. A backend's test
class mixes ``RetentionContract`` in beside its EventLogContract and implements the
three ways to change its hot log behind the log's back (``change_byte``,
``delete_record``, ``swap_records``), with the backend's own client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventlog import EventLog, WorkerHeartbeat, open_log
from eventlog.archive import Archive, decode_segment, encode_segment
from eventlog.chain import GENESIS, ChainedRow, linker
from eventlog.verify import verify
from tests.eventlog.contract import HANG_GUARD, heartbeats


async def read_everything(log: EventLog) -> list[tuple[int, float, str, bytes]]:
    """Every record from position 1, archive and hot log as one, encoded as stored."""
    records, after = [], 0
    while True:
        page, after = await log.read_page(after, 37)  # pages that straddle segments
        if not page:
            return records
        records += [(r.position, r.at, r.worker, msgspec.msgpack.encode(r.event)) for r in page]


async def fill(log: EventLog, batches: int, size: int = 5) -> int:
    for _ in range(batches):
        await log.append(heartbeats(size), worker="w-\u00e9")
    return await log.head()


class RetentionContract:
    # PostgreSQL reuses a trimmed table's space rather than giving it back.
    hot_size_shrinks = True

    def archive_options(self, tmp_path: Path) -> dict[str, Any]:
        """How the tests' logs name their archive (default: the backend's own)."""
        return {}

    async def change_byte(self, log: EventLog, position: int) -> None:
        raise NotImplementedError

    async def delete_record(self, log: EventLog, position: int) -> None:
        raise NotImplementedError

    async def swap_records(self, log: EventLog, first: int, second: int) -> None:
        raise NotImplementedError

    @pytest.fixture
    async def retained_log(self, log_url: str, tmp_path: Path) -> AsyncIterator[EventLog]:
        log = await open_log(log_url, **self.archive_options(tmp_path))
        yield log
        await log.close()

    # -- the chain -------------------------------------------------------------

    async def test_every_record_carries_its_link(self, retained_log: EventLog) -> None:
        await fill(retained_log, 3)
        await retained_log.claim("s1", "w1")
        await retained_log.release("s1", "w1")
        rows = await retained_log.read_chained(0, 100)
        link, previous = linker(retained_log.hash_name), GENESIS
        for row in rows:
            assert row.chain == link(previous, row.position, row.at, row.worker, row.data)
            previous = row.chain
        checked = await verify(retained_log)
        assert checked.ok and checked.checked == len(rows) == await retained_log.head()
        assert checked.digest.chain == previous.hex()

    async def test_concurrent_batches_chain_in_log_order(self, retained_log: EventLog) -> None:
        await asyncio.gather(
            *(retained_log.append(heartbeats(1 + i % 7), worker=f"w{i}") for i in range(60))
        )
        checked = await verify(retained_log)
        assert checked.ok, checked.broken
        assert checked.checked == await retained_log.head()

    # -- the start position and the archive ----------------------------------------

    async def test_records_moved_to_the_archive_read_as_one_log(
        self, retained_log: EventLog
    ) -> None:
        head = await fill(retained_log, 20)
        before, digest = await read_everything(retained_log), (await verify(retained_log)).digest
        assert await retained_log.archive_until(61, segment_records=25) == 61
        assert await retained_log.start() == 61
        assert retained_log.archive is not None
        manifests = await retained_log.archive.manifests()
        assert [(m.first, m.last) for m in manifests] == [(1, 25), (26, 50), (51, 60)]
        assert await read_everything(retained_log) == before
        assert [r[0] for r in await retained_log.read_chained(0, 1000)] == list(range(61, head + 1))
        checked = await verify(retained_log, expect=digest)
        assert checked.ok, checked.broken
        assert (checked.archived, checked.checked, checked.digest) == (60, head, digest)

    async def test_the_head_record_always_stays(self, retained_log: EventLog) -> None:
        head = await fill(retained_log, 4)
        assert await retained_log.archive_until(head + 100) == head
        await retained_log.append(heartbeats(1), worker="w")
        assert await retained_log.head() == head + 1  # positions are never reused
        assert (await verify(retained_log)).ok

    async def test_a_move_stops_at_the_first_record_not_old_enough(
        self, log_url: str, tmp_path: Path
    ) -> None:
        now = [1000.0]
        log = await open_log(log_url, clock=lambda: now[0], **self.archive_options(tmp_path))
        try:
            await fill(log, 2)  # 1-10 at 1000
            now[0] = 2000.0
            head = await fill(log, 2)
            assert await log.archive_until(head, older_than=1500.0) == 11
            assert await log.archive_until(head, older_than=1500.0) == 11  # nothing more
        finally:
            await log.close()

    async def test_a_tail_left_behind_goes_on_from_the_archive(
        self, retained_log: EventLog
    ) -> None:
        head = await fill(retained_log, 10)
        seen: list[int] = []
        async with asyncio.timeout(HANG_GUARD):
            async for page, _ in retained_log.tail_pages(0, limit=7):
                seen += [record.position for record in page]
                if len(seen) == 7:  # the tail has read 1-7: 8-40 leave the hot log
                    await retained_log.archive_until(41, segment_records=10)
                    await retained_log.append(heartbeats(3), worker="w")
                if seen[-1] == head + 3:
                    break
        assert seen == list(range(1, head + 4))

    async def test_a_segment_left_by_a_killed_move_is_not_archived_and_is_replaced(
        self, retained_log: EventLog
    ) -> None:
        await fill(retained_log, 10)
        archive = retained_log.archive
        assert archive is not None
        # A move wrote 1-30 and was killed before its trim.
        rows = await retained_log.read_chained(0, 30)
        await archive.write(*encode_segment(rows, retained_log.hash_name, GENESIS))
        assert await retained_log.start() == 1
        assert (await verify(retained_log)).checked == await retained_log.head()
        # The next move, with other bounds, replaces it.
        assert await retained_log.archive_until(21) == 21
        assert [(m.first, m.last) for m in await archive.manifests()] == [(1, 20)]
        assert (await verify(retained_log)).ok

    async def test_the_hot_log_takes_less_room_after_a_move(self, retained_log: EventLog) -> None:
        for _ in range(40):
            await retained_log.append(
                [WorkerHeartbeat(id=f"{i:064d}"[-60:] + f"{_:04d}") for i in range(50)],
                worker="w" * 100,
            )
        full = await retained_log.hot_size()
        await retained_log.archive_until(await retained_log.head())
        if self.hot_size_shrinks:
            assert await retained_log.hot_size() < full
        assert (await verify(retained_log)).ok

    # -- tampering -------------------------------------------------------------------

    @pytest.mark.parametrize("change", ["byte", "delete", "swap"])
    async def test_verify_finds_the_hot_log_changed(
        self, retained_log: EventLog, change: str
    ) -> None:
        await fill(retained_log, 6)
        await retained_log.archive_until(11)
        if change == "byte":
            await self.change_byte(retained_log, 17)
        elif change == "delete":
            await self.delete_record(retained_log, 17)
        else:
            await self.swap_records(retained_log, 17, 18)
        checked = await verify(retained_log)
        assert checked.broken is not None
        assert (checked.broken.position, checked.broken.where) == (17, "hot log")

    @pytest.mark.parametrize("change", ["byte", "delete", "swap"])
    async def test_verify_finds_an_archive_segment_changed(
        self, retained_log: EventLog, change: str
    ) -> None:
        await fill(retained_log, 8)
        await retained_log.archive_until(31, segment_records=10)
        assert retained_log.archive is not None
        await change_segment(retained_log.archive, retained_log.hash_name, 11, change)
        checked = await verify(retained_log)
        assert checked.broken is not None, change
        # A changed byte shows in the segment's digest, if not in a record that decodes.
        assert checked.broken.position == 14 or (
            change == "byte" and 11 <= checked.broken.position <= 20
        ), checked.broken
        assert checked.broken.where == "archive segment 00000000000000000011-00000000000000000020"


async def change_segment(archive: Archive, hash_name: str, first: int, change: str) -> None:
    """Change the segment starting at ``first`` at its fourth record, through the
    archive's own writes: a byte of its bytes (``byte``), or as a careful attacker
    would, re-encoded with a matching digest and manifest: the record left out
    (``delete``), or swapped with the next (``swap``)."""
    [manifest] = [m for m in await archive.manifests() if m.first == first]
    blob = await archive.read(manifest)
    if change == "byte":
        changed = bytearray(blob)
        changed[len(changed) // 2] ^= 0x01
        await archive.write(manifest, bytes(changed))
        return
    rows = decode_segment(manifest, blob)
    if change == "delete":
        del rows[3]
    else:
        rows[3], rows[4] = (
            ChainedRow(rows[3].position, *rows[4][1:]),
            ChainedRow(rows[4].position, *rows[3][1:]),
        )
    forged, blob = encode_segment(rows, hash_name, bytes.fromhex(manifest.previous))
    await archive.write(
        msgspec.structs.replace(forged, first=manifest.first, last=manifest.last), blob
    )
