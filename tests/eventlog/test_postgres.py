from __future__ import annotations

import pytest

from eventlog import EventLog, open_log
from gateway.testing.servers import PostgresServer
from tests.eventlog.contract import ServerEventLogContract


class TestPostgresEventLog(ServerEventLogContract):
    @pytest.fixture
    def server(self, postgres_server: PostgresServer) -> PostgresServer:
        return postgres_server

    @pytest.fixture
    async def log_url(self, postgres_server: PostgresServer, namespace: str) -> str:
        return f"{postgres_server.url}?namespace={namespace}"

    @pytest.fixture
    async def push_log_url(self, log_url: str) -> str:
        return f"{log_url}&notify_fallback=3600"  # only NOTIFY can wake the tail

    async def write_raw(self, log: EventLog, data: bytes) -> None:
        async with log._engine.begin() as conn:  # type: ignore[attr-defined]
            events = log._schema.events  # type: ignore[attr-defined]
            head = (await conn.execute(log._schema.head)).scalar_one()  # type: ignore[attr-defined]
            await conn.execute(
                events.insert().values(
                    position=head + 1, event_id=f"raw{head + 1}", at=0, worker="raw", data=data
                )
            )


async def test_password_never_appears_in_errors(namespace: str) -> None:
    from eventlog import LogUnavailable
    from gateway.testing.servers import free_port

    url = f"postgresql://user:s3cret@127.0.0.1:{free_port()}/db?namespace={namespace}"
    with pytest.raises(LogUnavailable) as raised:
        await open_log(url)
    assert "s3cret" not in str(raised.value)
    assert "user:***@127.0.0.1" in str(raised.value)
