from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.servers import PostgresServer, RedisServer

settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(Path(tmp_path_factory.mktemp("postgres")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    """A fresh table prefix or key prefix, so tests sharing a server never meet."""
    return f"t{secrets.token_hex(6)}"


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def shared_log_url(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> str:
    """A log that separate processes can share, once per shared backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.db"
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return f"{server.url}?namespace={namespace}"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return f"{redis.url}?namespace={namespace}"
