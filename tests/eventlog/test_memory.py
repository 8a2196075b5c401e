from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eventlog import EventLog, MemoryEventLog, open_log
from eventlog.base import StoredEvent
from tests.eventlog.contract import EventLogContract
from tests.eventlog.retention_contract import RetentionContract


class TestMemoryEventLog(EventLogContract, RetentionContract):
    @pytest.fixture
    async def log_url(self) -> str:
        return "memory://"

    async def write_raw(self, log: EventLog, data: bytes) -> None:
        assert isinstance(log, MemoryEventLog)
        log._store(log.clock(), "raw", StoredEvent(f"raw{await log.head()}", None, data))

    def archive_options(self, tmp_path: Path) -> dict[str, Any]:
        return {"archive": str(tmp_path / "archive")}

    def _row_index(self, log: EventLog, position: int) -> int:
        assert isinstance(log, MemoryEventLog)
        return position - log._first

    async def change_byte(self, log: EventLog, position: int) -> None:
        assert isinstance(log, MemoryEventLog)
        i = self._row_index(log, position)
        row = log._rows[i]
        log._rows[i] = (*row[:3], row[3][:-1] + bytes([row[3][-1] ^ 1]))

    async def delete_record(self, log: EventLog, position: int) -> None:
        assert isinstance(log, MemoryEventLog)
        i = self._row_index(log, position)
        del log._rows[i], log._links[i]

    async def swap_records(self, log: EventLog, first: int, second: int) -> None:
        assert isinstance(log, MemoryEventLog)
        i, j = self._row_index(log, first), self._row_index(log, second)
        rows = log._rows
        rows[i], rows[j] = (first, *rows[j][1:]), (second, *rows[i][1:])


async def test_each_memory_url_opens_its_own_log() -> None:
    first, second = await open_log("memory://"), await open_log("memory://")
    await first.append([], worker="w")
    assert await first.head() == await second.head() == 0
