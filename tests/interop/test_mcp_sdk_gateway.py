"""The official MCP Python SDK client (2.x) against `sessionlog serve`, over both
transports: with --workers 2, across two gateway processes sharing a log (each
request to the other process, as a round-robin load balancer would send them),
and through --upstream to a server built with the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from eventlog import UpstreamSessionOpened, open_log
from gateway.testing.sdk_server import start_sdk_server, stop_sdk_server
from gateway.testing.serving import serve

READ_TIMEOUT = 10  # s; the SDK waits forever for an answer without one
TRANSPORTS = ["streamable-http", "sse"]


class RoundRobin(httpx2.AsyncHTTPTransport):
    """Sends each request to the next of several gateway ports, as a load balancer."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self._ports = itertools.cycle(ports)
        self.sent: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = next(self._ports)
        self.sent.append(port)
        request.url = request.url.copy_with(port=port)
        return await super().handle_async_request(request)


def _client(transport: httpx2.AsyncBaseTransport | None, **kwargs: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(30, read=300), **kwargs)


@asynccontextmanager
async def mcp_session(
    kind: str, base: str, balancer: RoundRobin | None = None, **session_args: Any
) -> AsyncIterator[ClientSession]:
    """An initialized SDK ClientSession to the gateway at ``base`` over ``kind``."""
    if kind == "sse":

        def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> Any:
            return _client(balancer, headers=headers, auth=auth)

        streams = sse_client(f"{base}/sse", httpx_client_factory=factory)
    else:
        streams = streamable_http_client(f"{base}/mcp", http_client=_client(balancer))
    async with streams as (read, write, *_):
        async with ClientSession(
            read, write, read_timeout_seconds=READ_TIMEOUT, **session_args
        ) as session:
            await session.initialize()
            yield session


async def _lists_and_echoes(session: ClientSession, tools: list[str]) -> None:
    listed = await session.list_tools()
    assert [tool.name for tool in listed.tools] == tools
    for text in ("one", "two", "three"):
        result = await session.call_tool("echo", {"text": text})
        assert (result.content[0].text, result.is_error) == (text, False)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_two_workers_on_one_port(tmp_path: Path, kind: str) -> None:
    with serve(f"sqlite:///{tmp_path}/log.db", "--workers", "2") as base:
        async with mcp_session(kind, base) as session:
            await _lists_and_echoes(session, ["echo"])


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_each_request_to_the_other_gateway_process(shared_log_url: str, kind: str) -> None:
    with serve(shared_log_url) as a, serve(shared_log_url) as b:
        ports = [urlsplit(a).port, urlsplit(b).port]
        balancer = RoundRobin(ports)  # type: ignore[arg-type]
        async with mcp_session(kind, a, balancer) as session:
            await _lists_and_echoes(session, ["echo"])
            with pytest.raises(MCPError) as unknown:
                await session.call_tool("nope", {})
            assert unknown.value.error.code == -32602
        assert set(balancer.sent) == set(ports)


@pytest.fixture(scope="module")
def sdk_upstream() -> Any:
    process, url = start_sdk_server(json_response=False)
    yield url
    stop_sdk_server(process)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_through_an_upstream_sdk_server(tmp_path: Path, sdk_upstream: str, kind: str) -> None:
    logged: list[Any] = []

    async def on_log(params: Any) -> None:
        logged.append(params.data)

    with serve(f"sqlite:///{tmp_path}/log.db", "--upstream", sdk_upstream) as a:
        with serve(f"sqlite:///{tmp_path}/log.db", "--upstream", sdk_upstream) as b:
            balancer = RoundRobin([urlsplit(a).port, urlsplit(b).port])  # type: ignore[list-item]
            async with mcp_session(kind, a, balancer, logging_callback=on_log) as session:
                await _lists_and_echoes(session, ["echo", "chatty_echo", "touch_tools", "gate"])
                result = await session.call_tool("chatty_echo", {"text": "hello"})
                assert (result.content[0].text, result.is_error) == ("hello", False)
    # The upstream's log message for that call, relayed on the call's own stream
    # (Streamable HTTP) or on the session's stream (HTTP+SSE).
    assert logged == ["echoing hello"]
    if kind == "streamable-http":
        # The client's DELETE at the end ended the upstream session as well.
        async with await open_log(f"sqlite:///{tmp_path}/log.db") as log:
            records = await log.read(0, 10_000)
        [upstream_session] = [
            r.event.upstream_session
            for r in records
            if isinstance(r.event, UpstreamSessionOpened) and r.event.upstream_session
        ]
        async with httpx2.AsyncClient() as http:
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            headers = {
                "Mcp-Session-Id": upstream_session,
                "Accept": "application/json, text/event-stream",
            }
            assert (await http.post(sdk_upstream, json=ping, headers=headers)).status_code == 404


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_dead_upstream_is_an_error_not_a_hang(tmp_path: Path, kind: str) -> None:
    process, url = start_sdk_server(json_response=True)
    with serve(f"sqlite:///{tmp_path}/log.db", "--upstream", url) as base:
        async with mcp_session(kind, base) as session:
            assert (await session.call_tool("echo", {"text": "up"})).content[0].text == "up"
            stop_sdk_server(process)
            with pytest.raises(Exception, match="upstream unavailable"):
                await session.call_tool("echo", {"text": "down"})


async def test_the_sdk_default_client_falls_back_from_server_discover(tmp_path: Path) -> None:
    with serve(f"sqlite:///{tmp_path}/log.db") as base:
        async with mcp.Client(f"{base}/mcp", read_timeout_seconds=READ_TIMEOUT) as client:
            result = await client.call_tool("echo", {"text": "auto"})
            assert (result.content[0].text, result.is_error) == ("auto", False)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_the_upstreams_own_messages_reach_the_clients_stream(
    tmp_path: Path, sdk_upstream: str, kind: str
) -> None:
    """touch_tools makes the upstream send tools/list_changed on its standalone stream,
    which the worker listening to it records and the worker holding the client's
    stream sends; the client's own GET may open after the first call's change, so the
    call is repeated until one arrives."""
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            changed.set()

    with serve(f"sqlite:///{tmp_path}/log.db", "--upstream", sdk_upstream) as base:
        async with mcp_session(kind, base, message_handler=on_message) as session:
            async with asyncio.timeout(READ_TIMEOUT):
                while not changed.is_set():
                    await session.call_tool("touch_tools", {})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 0.5)
