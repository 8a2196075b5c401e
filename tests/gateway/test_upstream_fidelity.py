"""Whatever the MCP server behind ``sessionlog serve --upstream`` does, its client sees
the same through the gateway: the server's own requests (on its standalone stream or
on a call's stream) reach the client and the client's answers reach the server, from
any worker and after the worker listening to the server is killed; a call's stream
that the server ends early (SSE polling) is followed; and both hops speak the version
the server chose. Real processes throughout: the official SDK's ``MCPServer`` as the
upstream, gateways in their own processes, the SDK's client or plain HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import test_utils, web
from mcp import ClientSession, types

from eventlog import (
    CapabilitiesRecorded,
    OwnerClaimed,
    OwnerReleased,
    Record,
    UpstreamSessionOpened,
    open_log,
)
from gateway.protocol.sse_codec import SSEEvent, SSEParser
from gateway.testing.sdk_server import stop_sdk_server
from gateway.testing.serving import serve, serve_process
from gateway.upstream import Upstream
from tests.gateway.fidelity_upstream import INSTRUCTIONS, SERVER_NAME, start_fidelity_server
from tests.gateway.helpers import wait_for_record
from tests.interop.test_mcp_sdk_gateway import READ_TIMEOUT, TRANSPORTS, RoundRobin, mcp_session

# Guards against hangs only.
HANG_GUARD = 30.0
# Short heartbeats: a killed worker counts as dead 0.6 s after its last one.
FAST_HEARTBEATS = {"SESSIONLOG_HEARTBEAT_INTERVAL": "0.2"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
ROOT = "file:///work/project"


def initialize(version: str = "2025-11-25") -> dict[str, Any]:
    params = {
        "protocolVersion": version,
        "capabilities": {"roots": {}, "sampling": {}, "elicitation": {}},
        "clientInfo": {"name": "fidelity-test", "version": "0"},
    }
    return {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}


def tool_call(request_id: int, name: str, **arguments: Any) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    process, url = start_fidelity_server()
    yield url
    stop_sdk_server(process)


async def records(log_url: str) -> list[Record]:
    async with await open_log(log_url) as log:
        return await log.read(0, 100_000)


# -- the SDK client through two gateway processes ------------------------------------


async def list_roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="project")])


async def sample(context: Any, params: types.CreateMessageRequestParams) -> Any:
    [message] = params.messages
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"sampled {message.content.text}"),
        model="test-model",
    )


async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    assert params.message == "Your name?"
    return types.ElicitResult(action="accept", content={"name": "Ada"})


@contextlib.asynccontextmanager
async def through_two_gateways(
    tmp_path: Path, upstream_url: str, kind: str, **session_args: Any
) -> AsyncIterator[ClientSession]:
    """An SDK client session whose requests alternate between two gateway processes
    on one log, with a working standalone stream."""
    log_url = f"sqlite:///{tmp_path}/log.db"
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            changed.set()

    with (
        serve(log_url, "--upstream", upstream_url) as a,
        serve(log_url, "--upstream", upstream_url) as b,
    ):
        balancer = RoundRobin([urlsplit(a).port, urlsplit(b).port])  # type: ignore[list-item]
        async with mcp_session(
            kind,
            a,
            balancer,
            list_roots_callback=list_roots,
            sampling_callback=sample,
            elicitation_callback=elicit,
            message_handler=on_message,
            **session_args,
        ) as session:
            # The SDK client opens its standalone stream beside its first requests: a
            # message the server sends before that stream is open is not the
            # client's (as against the server alone). Wait until it is.
            async with asyncio.timeout(READ_TIMEOUT):
                while not changed.is_set():
                    await session.call_tool("touch_tools", {})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 0.5)
            yield session


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize(
    ("tool", "arguments", "answer"),
    [
        ("ask_roots", {}, ROOT),  # on the session's standalone stream
        ("ask_sampling", {"text": "hi"}, "sampled hi"),  # ditto
        ("ask_sampling_here", {"text": "ho"}, "sampled ho"),  # on the call's own stream
        ("ask_name", {}, "accept:Ada"),  # ditto
    ],
)
async def test_the_servers_requests_reach_the_client_and_its_answers_the_server(
    tmp_path: Path,
    upstream_url: str,
    kind: str,
    tool: str,
    arguments: dict[str, Any],
    answer: str,
) -> None:
    async with through_two_gateways(tmp_path, upstream_url, kind) as session:
        for _ in range(2):  # each gateway answers one of the client's two calls
            result = await session.call_tool(tool, arguments)
            assert (result.content[0].text, result.is_error) == (answer, False)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_calls_stream_ended_early_is_followed(
    tmp_path: Path, upstream_url: str, kind: str
) -> None:
    """The server ends the call's stream after its priming event and expects the
    gateway to resume it (SSE polling); the client sees one ordinary call."""
    progress: list[str | None] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async with through_two_gateways(tmp_path, upstream_url, kind) as session:
        result = await session.call_tool("poll", {"text": "polled"}, progress_callback=on_progress)
    assert (result.content[0].text, result.is_error) == ("polled", False)
    assert progress == ["after the close"]


# -- plain HTTP: what the log holds, and a killed listener -----------------------------


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    parser = SSEParser()
    async for chunk in response.content.iter_any():
        for event in parser.feed(chunk):
            yield event


async def next_message(stream: AsyncIterator[SSEEvent]) -> tuple[str | None, Any]:
    """The next event's id and JSON-RPC message."""
    event = await asyncio.wait_for(anext(stream), HANG_GUARD)
    return event.id, orjson.loads(event.data)


class RawSession:
    """A Streamable HTTP client session made by hand, any request to any gateway."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.headers: dict[str, str] = {}

    async def initialize(self, base: str, version: str = "2025-11-25") -> tuple[int, Any]:
        """The log position of the initialize request, and its answer."""
        async with self.http.post(f"{base}/mcp", json=initialize(version)) as response:
            assert response.status == 200, await response.text()
            session_id = response.headers["Mcp-Session-Id"]
            stream = events(response)
            event_id, answer = await next_message(stream)
        assert event_id is not None
        negotiated = answer["result"]["protocolVersion"]
        self.headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": negotiated}
        return int(event_id.partition("/")[0]), answer

    async def notify(self, base: str, message: dict[str, Any]) -> None:
        async with self.http.post(f"{base}/mcp", json=message, headers=self.headers) as posted:
            assert posted.status == 202, await posted.text()

    @contextlib.asynccontextmanager
    async def request(self, base: str, message: dict[str, Any]) -> AsyncIterator[Any]:
        """The request's response stream, as (event id, message) pairs."""
        async with self.http.post(f"{base}/mcp", json=message, headers=self.headers) as response:
            assert response.status == 200, await response.text()
            yield events(response)

    @contextlib.asynccontextmanager
    async def stream(self, base: str, after: int | None) -> AsyncIterator[Any]:
        """The session's own stream, resumed after a log position (None: a first GET,
        naming no event)."""
        headers = dict(self.headers)
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        async with self.http.get(f"{base}/mcp", headers=headers) as response:
            assert response.status == 200, await response.text()
            yield events(response)


def reply(request: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


ROOTS = {"roots": [{"uri": ROOT, "name": "project"}]}


async def answer_roots(
    session: RawSession, stream_from: str, answer_to: str, after: int | None
) -> int:
    """Take the server's first roots/list after ``after`` from the session's stream
    on one gateway, and answer it through another; its position."""
    async with session.stream(stream_from, after) as stream:
        event_id, asked = await next_message(stream)
    assert asked["method"] == "roots/list", asked
    await session.notify(answer_to, reply(asked, ROOTS))
    assert event_id is not None
    return int(event_id)


def asks_roots(record: Record) -> bool:
    return b"roots/list" in getattr(record.event, "payload", b"")


@pytest.mark.parametrize("resumed", [True, False], ids=["last-event-id", "first-get"])
async def test_the_servers_requests_wait_in_the_log_for_a_client_stream(
    tmp_path: Path, upstream_url: str, resumed: bool
) -> None:
    """The upstream asks while the client has no stream open at all: the gateway that
    opened the upstream session listens all the same, the request waits in the log,
    and the client's answer (through the other gateway) reaches the upstream. The
    stream that gets it names the initialize as its last event, or (as the SDK
    client's first GET, opened beside its first requests) names none."""
    log_url = f"sqlite:///{tmp_path}/log.db"
    args = ("--upstream", upstream_url)
    with serve(log_url, *args) as a, serve(log_url, *args) as b:
        async with aiohttp.ClientSession(headers=MCP_HEADERS) as http:
            session = RawSession(http)
            opened_at, _ = await session.initialize(a)
            await session.notify(b, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            async with session.request(b, tool_call(1, "ask_roots")) as call:
                async with await open_log(log_url) as log:
                    await wait_for_record(log, asks_roots)
                await answer_roots(session, b, a, opened_at if resumed else None)
                _, answer = await next_message(call)
            async with http.delete(f"{b}/mcp", headers=session.headers) as deleted:
                assert deleted.status == 200
            async with await open_log(log_url) as log:
                # The listener (a) lets go of the closed session, stream and claim.
                await wait_for_record(log, lets_go_of_listening)
    assert answer["id"] == 1 and answer["result"]["content"][0]["text"] == ROOT, answer


def lets_go_of_listening(record: Record) -> bool:
    return isinstance(record.event, OwnerReleased) and record.event.role == "listener"


async def test_a_killed_listener_is_taken_over(shared_log_url: str, upstream_url: str) -> None:
    """kill -9 the gateway listening to the upstream: another takes the listening over
    (one claim wins) and resumes the upstream's stream after the last event it
    recorded, so a request the upstream sent while nobody listened still arrives."""
    args = ("--upstream", upstream_url)
    with (
        serve_process(shared_log_url, *args, env=FAST_HEARTBEATS) as a,
        serve(shared_log_url, *args, env=FAST_HEARTBEATS) as b,
    ):
        async with aiohttp.ClientSession(headers=MCP_HEADERS) as http:
            session = RawSession(http)
            seen, _ = await session.initialize(a.url)  # a opens the upstream session
            await session.notify(b, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            answers = []
            for request_id in (1, 2):
                async with session.request(b, tool_call(request_id, "ask_roots")) as call:
                    seen = await answer_roots(session, b, b, seen)
                    answers.append(await next_message(call))
                if request_id == 1:
                    # At once: b has not seen a die yet, so the upstream asks nobody.
                    a.process.send_signal(signal.SIGKILL)
                    a.process.wait()
    for request_id, (_, answer) in zip((1, 2), answers, strict=True):
        assert answer["id"] == request_id and answer["result"]["content"][0]["text"] == ROOT
    log = await records(shared_log_url)
    [opened] = [r for r in log if isinstance(r.event, UpstreamSessionOpened)]
    claims = [
        r.event
        for r in log
        if isinstance(r.event, OwnerClaimed)
        and r.event.role == "listener"
        and r.event.session_id == opened.event.session_id
    ]
    assert [(c.previous, c.owner) for c in claims] == [
        (None, opened.worker),
        (opened.worker, claims[-1].owner),
    ]
    assert claims[-1].owner != opened.worker
    asked = [r.event for r in log if asks_roots(r)]
    assert len(asked) == 2  # each once
    assert all(event.upstream_event_id for event in asked)  # type: ignore[union-attr]


# -- versions ------------------------------------------------------------------------


async def test_the_client_gets_the_upstreams_initialize_result(
    tmp_path: Path, upstream_url: str
) -> None:
    """Offered the client's version (an older one here), the upstream's answer is
    the client's, unchanged, and its version is the session's."""
    params = initialize("2025-06-18")["params"]
    async with Upstream(upstream_url) as direct:
        _, expected = await direct.open_session(params)
    log_url = f"sqlite:///{tmp_path}/log.db"
    with serve(log_url, "--upstream", upstream_url) as base:
        async with aiohttp.ClientSession(headers=MCP_HEADERS) as http:
            _, answer = await RawSession(http).initialize(base, "2025-06-18")
    assert answer["result"] == expected
    assert expected["protocolVersion"] == "2025-06-18"
    assert expected["serverInfo"]["name"] == SERVER_NAME
    assert expected["instructions"] == INSTRUCTIONS
    log = await records(log_url)
    [recorded] = [r.event for r in log if isinstance(r.event, CapabilitiesRecorded)]
    assert recorded.protocol_version == "2025-06-18"
    assert recorded.capabilities == params["capabilities"]
    assert recorded.client_info == params["clientInfo"]
    [opened] = [r.event for r in log if isinstance(r.event, UpstreamSessionOpened)]
    assert opened.protocol_version == "2025-06-18"


class VersionedUpstream:
    """An MCP server that answers every initialize with one version, and keeps the
    headers and messages it is sent. It has no standalone stream (GET is 405)."""

    SESSION = "upstream-session"

    def __init__(self, version: str) -> None:
        self.result = {
            "protocolVersion": version,
            "capabilities": {"tools": {}, "experimental": {"flag": {}}},
            "serverInfo": {"name": "versioned", "version": "9"},
            "instructions": "Only the old ways.",
        }
        self.posts: list[tuple[Any, dict[str, Any]]] = []
        self.gets: list[Any] = []
        self.deleted: list[str | None] = []
        self.was_deleted = asyncio.Event()

    async def post(self, request: web.Request) -> web.Response:
        message = await request.json()
        self.posts.append((request.headers.copy(), message))
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            headers = {"Mcp-Session-Id": self.SESSION}
            return web.json_response(reply(message, self.result), headers=headers)
        return web.json_response(reply(message, {"tools": []}))

    async def get(self, request: web.Request) -> web.Response:
        self.gets.append(request.headers.copy())
        return web.Response(status=405)

    async def delete(self, request: web.Request) -> web.Response:
        self.deleted.append(request.headers.get("Mcp-Session-Id"))
        self.was_deleted.set()
        return web.Response()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post("/mcp", self.post)
        app.router.add_get("/mcp", self.get)
        app.router.add_delete("/mcp", self.delete)
        async with test_utils.TestServer(app) as server:
            yield str(server.make_url("/mcp"))


async def test_both_hops_speak_the_version_the_upstream_chose(tmp_path: Path) -> None:
    upstream = VersionedUpstream("2025-03-26")
    log_url = f"sqlite:///{tmp_path}/log.db"
    async with upstream.serving() as url:
        with serve(log_url, "--upstream", url) as base:
            async with aiohttp.ClientSession(headers=MCP_HEADERS) as http:
                session = RawSession(http)
                _, answer = await session.initialize(base, "2025-11-25")
                listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
                async with session.request(base, listing) as listed:
                    _, tools = await next_message(listed)
    assert answer["result"] == upstream.result
    assert tools == reply(listing, {"tools": []})
    (_, offered), *later = upstream.posts
    assert offered["params"]["protocolVersion"] == "2025-11-25"  # the client's offer
    assert [message.get("method") for _, message in later] == [
        "notifications/initialized",
        "tools/list",
    ]
    sent = [headers for headers, _ in later] + upstream.gets
    assert len(upstream.gets) == 1  # its standalone stream was asked for (405: none)
    assert {headers["MCP-Protocol-Version"] for headers in sent} == {"2025-03-26"}
    assert {headers["Mcp-Session-Id"] for headers in sent} == {VersionedUpstream.SESSION}
    log = await records(log_url)
    [recorded] = [r.event for r in log if isinstance(r.event, CapabilitiesRecorded)]
    assert recorded.protocol_version == "2025-03-26"


async def test_a_version_the_gateway_does_not_speak_is_an_error(tmp_path: Path) -> None:
    upstream = VersionedUpstream("2099-01-01")
    log_url = f"sqlite:///{tmp_path}/log.db"
    async with upstream.serving() as url:
        with serve(log_url, "--upstream", url) as base:
            async with aiohttp.ClientSession(headers=MCP_HEADERS) as http:
                async with http.post(f"{base}/mcp", json=initialize()) as response:
                    _, answer = await next_message(events(response))
    assert answer["error"]["code"] == -32603
    assert "chose protocol version '2099-01-01'" in answer["error"]["message"]
    assert upstream.deleted == [VersionedUpstream.SESSION]
    log = await records(log_url)
    assert not [r for r in log if isinstance(r.event, UpstreamSessionOpened)]


async def test_a_session_gone_with_its_stream_ends_its_upstream_session(tmp_path: Path) -> None:
    """An HTTP+SSE session closes when its stream does (as an expired one closes): its
    listener ends the upstream session too, not only a client's DELETE."""
    upstream = VersionedUpstream("2024-11-05")
    async with upstream.serving() as url:
        with serve(f"sqlite:///{tmp_path}/log.db", "--upstream", url) as base:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/sse") as stream:
                    received = events(stream)
                    endpoint = await asyncio.wait_for(anext(received), HANG_GUARD)
                    assert endpoint.event == "endpoint"
                    opening = initialize("2024-11-05")
                    async with http.post(f"{base}{endpoint.data}", json=opening) as posted:
                        assert posted.status == 202
                    answer = await asyncio.wait_for(anext(received), HANG_GUARD)
                    assert orjson.loads(answer.data)["result"] == upstream.result
                await asyncio.wait_for(upstream.was_deleted.wait(), HANG_GUARD)
    assert upstream.deleted == [VersionedUpstream.SESSION]
