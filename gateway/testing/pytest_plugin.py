"""A pytest plugin with fixtures that start real log servers: use it with
``pytest -p gateway.testing.pytest_plugin`` or ``pytest_plugins =
["gateway.testing.pytest_plugin"]`` in a conftest.py. This module owns the fixtures:

- ``postgres_server`` (session): a :class:`~gateway.testing.servers.PostgresServer`.
- ``redis_server`` (session): a :class:`~gateway.testing.servers.RedisServer`.
- ``namespace``: a fresh table or key prefix, so tests sharing a server never meet.
- ``shared_log_url``: a log URL that separate processes can share, once per shared
  backend (SQLite file, PostgreSQL, Redis); the servers start only when asked for.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import PostgresServer, RedisServer

__all__ = ["namespace", "postgres_server", "redis_server", "shared_log_url"]


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
