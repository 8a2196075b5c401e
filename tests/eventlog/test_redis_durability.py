"""Redis: an append acknowledged only once replicas have it (``wait_replicas``),
so a failover to a replica loses nothing acknowledged (issue 13, row 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from eventlog import LogUnavailable, WorkerHeartbeat, open_log
from gateway.testing.servers import RedisServer, wait_until


class Replica(RedisServer):
    name = "replica"

    def __init__(self, directory: Path, primary: RedisServer) -> None:
        directory.mkdir()
        super().__init__(directory)
        self.primary = primary

    def command(self) -> list[str]:
        return [*super().command(), "--replicaof", "127.0.0.1", str(self.primary.port)]


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def replicating(replica: Replica) -> None:
    """Wait until the replica has synchronised with its primary."""
    client = redis.Redis.from_url(replica.url)

    def linked() -> bool:
        return client.info("replication")["master_link_status"] == "up"

    try:
        assert replica.process is not None
        wait_until(linked, "replication", replica.process, replica.log)
    finally:
        client.close()


async def test_an_append_returns_once_a_replica_has_it(
    primary: RedisServer, tmp_path: Path
) -> None:
    replica = Replica(tmp_path / "replica", primary)
    replica.start()
    try:
        replicating(replica)
        url = f"{primary.url}?namespace=durable&wait_replicas=1&wait_timeout=10"
        async with await open_log(url) as log:
            positions = await log.append([WorkerHeartbeat() for _ in range(3)], worker="w")
        # What the primary acknowledged is on the replica: a failover loses nothing.
        async with await open_log(f"{replica.url}?namespace=durable", read_only=True) as copy:
            assert [r.position for r in await copy.read()] == positions
    finally:
        replica.stop()


async def test_an_append_no_replica_has_is_not_acknowledged(primary: RedisServer) -> None:
    url = f"{primary.url}?namespace=durable&wait_replicas=1&wait_timeout=0.1"
    async with await open_log(url) as log:
        beat = WorkerHeartbeat()
        with pytest.raises(LogUnavailable, match="0 of 1 replicas"):
            await log.append([beat], worker="w")
    # Written on the primary all the same: a retry once replicas are back stores it
    # once (same event id), at the position it got.
    async with await open_log(f"{primary.url}?namespace=durable") as plain:
        assert await plain.append([beat], worker="w") == [1]
        assert await plain.head() == 1
