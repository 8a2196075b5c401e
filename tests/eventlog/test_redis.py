from __future__ import annotations

import pytest

from eventlog import EventLog, RedisEventLog
from tests.eventlog.contract import ServerEventLogContract
from tests.servers import RedisServer


class TestRedisEventLog(ServerEventLogContract):
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
