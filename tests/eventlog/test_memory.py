from __future__ import annotations

import pytest

from eventlog import EventLog, MemoryEventLog, open_log
from eventlog.base import StoredEvent
from tests.eventlog.contract import EventLogContract


class TestMemoryEventLog(EventLogContract):
    @pytest.fixture
    async def log_url(self) -> str:
        return "memory://"

    async def write_raw(self, log: EventLog, data: bytes) -> None:
        assert isinstance(log, MemoryEventLog)
        log._store(log.clock(), "raw", StoredEvent(f"raw{await log.head()}", None, data))


async def test_each_memory_url_opens_its_own_log() -> None:
    first, second = await open_log("memory://"), await open_log("memory://")
    await first.append([], worker="w")
    assert await first.head() == await second.head() == 0
