"""``mcp-persist-proxy`` (PyPI ``mcp-persist``), the resumable MCP proxy a user would
pick instead of ``sessionlog serve --upstream``: in its own virtualenv (see venvs.py),
run as its README runs it, for the conformance tests and the proxy bench. This module
owns its version, its virtualenv and running it."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .servers import accepts, free_port, stop_process, wait_until
from .venvs import cache_dir, ensure_venv

__all__ = ["BACKENDS", "VERSION", "PersistProxy", "ensure", "persist_proxy"]

VERSION = "2.2.0"
BACKENDS = ("sqlite", "redis", "postgres")
_REQUIREMENT = f"mcp-persist[{','.join(BACKENDS)}]=={VERSION}"
_PROBE = (
    "import importlib.metadata as m, mcp_persist._cli, aiosqlite, redis, asyncpg;"
    f"assert m.version('mcp-persist') == {VERSION!r}"
)


@functools.cache
def ensure() -> Path:
    """The Python of mcp-persist's virtualenv, made on first use (about a minute)."""
    return ensure_venv(cache_dir() / f"mcp-persist-{VERSION}", [_REQUIREMENT], _PROBE)


class PersistProxy:
    """One running mcp-persist-proxy process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}"  # base URL; MCP at /mcp


@contextmanager
def persist_proxy(
    upstream: str,
    backend: str,
    store: str,
    output: Path,
    *,
    port: int | None = None,
) -> Iterator[PersistProxy]:
    """Run ``mcp-persist-proxy --upstream upstream --backend backend --url store`` on
    ``port`` (a free one if None); stopped with SIGTERM at the end unless it is gone.

    ``upstream`` is the upstream's base URL (the proxy adds ``/mcp``); ``store`` is a
    file path for sqlite, a ``redis://`` URL or a PostgreSQL DSN.
    """
    python = ensure()
    port = port or free_port()
    command = [
        str(python),
        "-m",
        "mcp_persist._cli",
        "--upstream",
        upstream,
        "--backend",
        backend,
        "--url",
        store,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with output.open("ab") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: accepts(port), "mcp-persist-proxy", process, output)
        yield PersistProxy(process, port)
    finally:
        stop_process(process)
