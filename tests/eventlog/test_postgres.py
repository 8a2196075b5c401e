from __future__ import annotations

import pytest

from eventlog import EventLog, open_log
from gateway.testing.servers import PostgresServer
from tests.eventlog import _processes
from tests.eventlog.contract import (
    SPAWN,
    ServerEventLogContract,
    _run_processes,
)


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
        events = log._schema.events.name  # type: ignore[attr-defined]
        await log._run(  # type: ignore[attr-defined]
            lambda conn: conn.execute(
                f"INSERT INTO {events} (position, event_id, at, worker, data) "
                "SELECT head + 1, 'raw' || (head + 1), 0, 'raw', $1 "
                f"FROM (SELECT coalesce(max(position), 0) AS head FROM {events}) AS h",
                data,
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


async def test_concurrent_openers_in_8_processes_create_the_log_once(
    postgres_server: PostgresServer, namespace: str
) -> None:
    # Tables and the commit function are created by whichever opener comes first.
    url = f"{postgres_server.url}?namespace={namespace}"
    barrier, results = SPAWN.Barrier(8), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_processes.open_and_append, args=(url, f"w{i}", barrier, results))
        for i in range(8)
    ]
    outcomes = await _run_processes(processes, results, 8)
    assert sorted(position for _, [position] in outcomes) == list(range(1, 9))
