"""tools/call throughput: `sessionlog serve` against the official MCP SDK server.

Both serve one ``echo`` tool: the SDK's ``MCPServer`` (one process, as its docs run
it) and ``sessionlog serve`` with 1 and 2 workers and its built-in ``echo`` (on the
embedded SQLite log: every call is two durable appends). One load generator
drives both, in this process, over raw HTTP: each of N concurrent client sessions
initializes, then calls ``echo`` back to back for a fixed time. Streamable HTTP
calls ask for SSE responses (the SDK server's default mode); HTTP+SSE calls are
POSTed and answered on the session's stream. Reported: calls/s, latency
percentiles, and server CPU per call (user + system time of the server's processes,
as /proc counts it, over the run). The load generator shares the machine's cores
with the servers, as it would in a test on one box.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.protocol.sse_codec import SSEParser
from gateway.testing.sdk_server import sdk_server
from gateway.testing.serving import serve_process

from .harness import Row, ScenarioResult, cpu_seconds, measured, percentile, process_tree

__all__ = ["scenario"]

TRANSPORTS = ("streamable-http", "sse")
HANG_GUARD = 30.0
ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    },
}


def tool_call(request_id: int, tool: str, **arguments: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


def _call(request_id: int) -> dict[str, Any]:
    return tool_call(request_id, "echo", text=f"call {request_id}")


async def _sse_messages(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    parser = SSEParser()
    async for chunk in response.content.iter_any():
        for event in parser.feed(chunk):
            if event.event == "message":
                yield orjson.loads(event.data)
            elif event.event == "endpoint":
                yield {"endpoint": event.data}


class StreamableClient:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.headers = http, url, dict(ACCEPT)

    async def open(self) -> None:
        async with self.http.post(self.url, json=INITIALIZE, headers=self.headers) as response:
            response.raise_for_status()
            self.headers["Mcp-Session-Id"] = response.headers["Mcp-Session-Id"]
            await self._answer(response, 0)
        self.headers["MCP-Protocol-Version"] = "2025-11-25"
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with self.http.post(self.url, json=initialized, headers=self.headers) as response:
            response.raise_for_status()

    async def call(self, request_id: int) -> None:
        message = _call(request_id)
        async with self.http.post(self.url, json=message, headers=self.headers) as response:
            response.raise_for_status()
            answer = await self._answer(response, request_id)
        if "result" not in answer:
            raise RuntimeError(f"echo failed: {answer}")

    async def _answer(self, response: aiohttp.ClientResponse, request_id: int) -> dict[str, Any]:
        if response.content_type == "application/json":
            return await response.json()
        answer = None
        # Read to the end of the stream (the server ends it after the answer), so the
        # connection is kept for the next call.
        async for message in _sse_messages(response):
            if message.get("id") == request_id:
                answer = message
        if answer is None:
            raise RuntimeError("the response stream ended without an answer")
        return answer

    async def close(self) -> None:
        pass


class SSEClient:
    """HTTP+SSE: answers come on the session's stream, matched to calls by id."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def open(self) -> None:
        self.stream = await self.http.get(self.url, headers={"Accept": "text/event-stream"})
        self.messages = _sse_messages(self.stream)
        endpoint = (await anext(self.messages))["endpoint"]
        base = self.url.rsplit("/", 1)[0]
        self.endpoint = base + endpoint
        self.reader = asyncio.create_task(self._read())
        await self.call(0, INITIALIZE)
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with self.http.post(self.endpoint, json=initialized) as response:
            response.raise_for_status()

    async def _read(self) -> None:
        async for message in self.messages:
            waiter = self.waiting.pop(message.get("id"), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)

    async def call(self, request_id: int, message: dict[str, Any] | None = None) -> None:
        waiter = self.waiting[request_id] = asyncio.get_running_loop().create_future()
        async with self.http.post(self.endpoint, json=message or _call(request_id)) as response:
            response.raise_for_status()
        answer = await asyncio.wait_for(waiter, HANG_GUARD)
        if "result" not in answer:
            raise RuntimeError(f"call failed: {answer}")

    async def close(self) -> None:
        self.reader.cancel()
        self.stream.close()


async def drive(url: str, transport: str, clients: int, seconds: float) -> list[float]:
    """Latencies (ms) of every call N clients made back to back for ``seconds``."""
    latencies: list[float] = []
    ids = itertools.count(1)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=HANG_GUARD)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        kind = StreamableClient if transport == "streamable-http" else SSEClient
        sessions = [kind(http, url) for _ in range(clients)]
        await asyncio.gather(*(session.open() for session in sessions))
        deadline = time.monotonic() + seconds

        async def loop(session: StreamableClient | SSEClient) -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                await session.call(next(ids))
                latencies.append((time.perf_counter() - started) * 1000)

        try:
            await asyncio.wait_for(
                asyncio.gather(*(loop(session) for session in sessions)), seconds + HANG_GUARD
            )
        finally:
            await asyncio.gather(*(session.close() for session in sessions))
    return latencies


@contextlib.contextmanager
def _sessionlog(workdir: Path, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    log = f"sqlite:///{workdir}/tools-call-{workers}-{secrets.token_hex(4)}.db"
    with serve_process(log, "--workers", str(workers)) as served:
        yield served.process, served.url


@contextlib.contextmanager
def _sdk(transport: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with sdk_server(transport=transport) as (process, url):
        yield process, url.rsplit("/", 1)[0]


async def _measure(
    process: subprocess.Popen[bytes], url: str, transport: str, clients: int, seconds: float
) -> dict[str, Any]:
    server = process_tree(process)
    await drive(url, transport, clients, min(1.0, seconds))  # warm-up: imports, caches
    cpu_before, started = cpu_seconds(server), time.perf_counter()
    latencies = await drive(url, transport, clients, seconds)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(server) - cpu_before
    return {
        "calls": len(latencies),
        "calls_per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "cpu_ms_per_call": 1000 * cpu / max(1, len(latencies)),
    }


def scenario(quick: bool, workdir: Path) -> ScenarioResult:
    seconds = 1.0 if quick else 10.0
    client_counts = (1, 20)
    cases: list[dict[str, Any]] = []
    systems: list[tuple[str, int]] = (
        [("sessionlog", 1)] if quick else [("sessionlog", 1), ("sessionlog", 2), ("mcp-sdk", 1)]
    )
    for system, workers in systems:
        for transport in TRANSPORTS:
            server = _sdk(transport) if system == "mcp-sdk" else _sessionlog(workdir, workers)
            with server as (process, base):
                path = "/mcp" if transport == "streamable-http" else "/sse"
                for clients in client_counts:
                    result = asyncio.run(
                        _measure(process, base + path, transport, clients, seconds)
                    )
                    case = {
                        "system": system,
                        "workers": workers,
                        "transport": transport,
                        "clients": clients,
                        **result,
                    }
                    print(f"tools-call {case}", file=sys.stderr)
                    cases.append(case)
    rows: list[Row] = []
    for case in cases:
        parameter = f"{case['transport']}, {case['clients']} clients"
        if case["system"] == "sessionlog":
            parameter += f", {case['workers']} worker" + ("s" if case["workers"] > 1 else "")
        backend = "sqlite" if case["system"] == "sessionlog" else ""
        rows += measured(
            "tools-call",
            case["system"],
            backend,
            parameter,
            [
                ("calls/s", case["calls_per_second"], "1/s"),
                ("p50", case["p50_ms"], "ms"),
                ("p95", case["p95_ms"], "ms"),
                ("p99", case["p99_ms"], "ms"),
                ("cpu per call", case["cpu_ms_per_call"], "ms"),
            ],
        )
    return ScenarioResult(rows=rows, raw={"seconds": seconds, "cases": cases})
