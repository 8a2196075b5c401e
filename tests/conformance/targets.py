"""The servers the conformance suite runs against, each on a free loopback port: three
"everything servers" (on the TypeScript SDK 1.x, the TypeScript SDK v2 and the Python
SDK), `sessionlog serve` in front of each (on a SQLite log; in front of the Python one
also on a Redis log), `sessionlog serve` alone, and the competing proxy
``mcp-persist-proxy`` in front of the Python one on its SQLite and its Redis store. The
Redis-protocol server the Redis targets share starts only when one of them runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.testing.persist_proxy import VERSION as PERSIST_VERSION
from gateway.testing.persist_proxy import persist_proxy
from gateway.testing.servers import RedisServer, accepts, free_port, stop_process, wait_until
from gateway.testing.serving import serve_process

from .suite import Toolchain

__all__ = ["TARGETS", "Declared", "Target", "declared", "start_targets"]

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Target:
    name: str
    label: str  # for the README
    upstream: str | None = None  # the target the proxy forwards to, if any
    proxy: str | None = None  # "sessionlog" or "mcp-persist": what the suite talks to
    backend: str | None = None  # the proxy's store: "sqlite" or "redis"

    @property
    def gateway(self) -> bool:
        """Whether the suite talks to sessionlog."""
        return self.proxy == "sessionlog"


TARGETS = {
    target.name: target
    for target in (
        Target("ts", "TypeScript SDK 1.x everything server"),
        Target(
            "sessionlog+ts", "sessionlog -> TypeScript SDK server", "ts", "sessionlog", "sqlite"
        ),
        Target("ts2", "TypeScript SDK v2 everything server"),
        Target(
            "sessionlog+ts2",
            "sessionlog -> TypeScript SDK v2 server",
            "ts2",
            "sessionlog",
            "sqlite",
        ),
        Target("py", "Python SDK everything server"),
        Target("sessionlog+py", "sessionlog -> Python SDK server", "py", "sessionlog", "sqlite"),
        Target(
            "sessionlog-redis+py",
            "sessionlog (Redis log) -> Python SDK server",
            "py",
            "sessionlog",
            "redis",
        ),
        *(
            Target(
                f"mcp-persist-{backend}+py",
                f"mcp-persist-proxy {PERSIST_VERSION} ({shown}) -> Python SDK server",
                "py",
                "mcp-persist",
                backend,
            )
            for backend, shown in (("sqlite", "SQLite"), ("redis", "Redis"))
        ),
        Target("sessionlog", "sessionlog alone (built-in tools)", None, "sessionlog", "sqlite"),
    )
}


@contextmanager
def _process(command: list[str], port: int, what: str, log: Path) -> Iterator[str]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: accepts(port), what, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, timeout=10)


@contextmanager
def _proxy(
    target: Target, upstream: str | None, redis: str | None, directory: Path
) -> Iterator[str]:
    """Run ``target``'s proxy in front of the base URL ``upstream`` (None: sessionlog
    alone), its store a file of its own or its own keys on the Redis server at
    ``redis``; yields its base URL."""
    output = directory / f"{target.name}.log"
    if target.proxy == "mcp-persist":
        assert upstream is not None and target.backend is not None
        store = redis if target.backend == "redis" else str(directory / f"{target.name}.db")
        assert store is not None
        with persist_proxy(upstream, target.backend, store, output) as proxy:
            yield proxy.url
        return
    if target.backend == "redis":
        namespace = re.sub(r"\W", "_", target.name)  # a log namespace is an identifier
        log_url = f"{redis}?namespace={namespace}"
    else:
        log_url = f"sqlite:///{directory}/{target.name}.db"
    forward = ("--upstream", f"{upstream}/mcp") if upstream else ()
    with serve_process(log_url, *forward, output=output) as served:
        yield served.url


@contextmanager
def start_targets(
    names: set[str], toolchain: Toolchain, directory: Path
) -> Iterator[dict[str, str]]:
    """Start the named targets (and the upstreams and the Redis server they need);
    {name: MCP endpoint URL}."""
    wanted = names | {TARGETS[name].upstream for name in names} - {None}
    bases: dict[str, str] = {}  # name -> base URL; every target serves MCP at /mcp
    with ExitStack() as stack:
        if "ts" in wanted:
            # Beside its node_modules, so its imports of the SDK resolve.
            script = toolchain.ts_server_dir / "everything-server.mjs"
            shutil.copyfile(HERE / "ts_everything_server.mjs", script)
            port = free_port()
            command = [str(toolchain.node), str(script), str(port)]
            bases["ts"] = stack.enter_context(
                _process(command, port, "the TypeScript everything server", directory / "ts.log")
            )
        if "ts2" in wanted:
            script = toolchain.ts2_server_dir / "everything-server.mjs"
            shutil.copyfile(HERE / "ts2_everything_server.mjs", script)
            port = free_port()
            command = [str(toolchain.node), str(script), str(port)]
            bases["ts2"] = stack.enter_context(
                _process(
                    command, port, "the TypeScript SDK v2 everything server", directory / "ts2.log"
                )
            )
        if "py" in wanted:
            port = free_port()
            command = [sys.executable, str(HERE / "sdk_everything_server.py"), str(port)]
            bases["py"] = stack.enter_context(
                _process(command, port, "the Python everything server", directory / "py.log")
            )
        redis = None
        if any(TARGETS[name].backend == "redis" for name in wanted):
            (directory / "redis").mkdir()
            server = RedisServer(directory / "redis")
            server.start()
            stack.callback(server.stop)
            redis = server.url
        for name in sorted(wanted):
            target = TARGETS[name]
            if target.proxy is not None:
                upstream = bases[target.upstream] if target.upstream else None
                bases[name] = stack.enter_context(_proxy(target, upstream, redis, directory))
        yield {name: f"{base}/mcp" for name, base in bases.items()}


@dataclass
class Declared:
    """What a server says it offers: its initialize capabilities and what it lists."""

    capabilities: dict[str, object] = field(default_factory=dict)
    names: dict[str, set[str]] = field(default_factory=dict)  # "tools" -> tool names, ...


def _rpc(url: str, body: dict[str, object], session: str | None) -> tuple[dict, str | None]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    if session:
        headers["Mcp-Session-Id"] = session
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            session = response.headers.get("Mcp-Session-Id", session)
    except urllib.error.HTTPError as error:
        return {"error": {"code": error.code, "message": error.read().decode()}}, session
    # A JSON body, or an SSE stream whose data lines carry the answer.
    for chunk in [text, *(line[5:] for line in text.splitlines() if line.startswith("data:"))]:
        try:
            message = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("id") == body.get("id"):
            return message, session
    return {}, session


def declared(url: str) -> Declared:
    """Ask the server at ``url`` (2025-11-25, a session of its own) what it offers."""
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "sessionlog-conformance-tests", "version": "1"},
        },
    }
    answer, session = _rpc(url, hello, None)
    result = Declared(capabilities=answer.get("result", {}).get("capabilities", {}))
    _rpc(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    lists = {
        "tools": ("tools/list", "tools", "name"),
        "prompts": ("prompts/list", "prompts", "name"),
        "resources": ("resources/list", "resources", "uri"),
        "resource templates": ("resources/templates/list", "resourceTemplates", "uriTemplate"),
    }
    for index, (kind, (method, key, name)) in enumerate(lists.items(), start=2):
        listed, _ = _rpc(url, {"jsonrpc": "2.0", "id": index, "method": method}, session)
        items = listed.get("result", {}).get(key, [])
        result.names[kind] = {item.get(name) for item in items if isinstance(item, dict)}
    return result
