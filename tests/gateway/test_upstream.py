"""The upstream client against the official MCP SDK server, and against small aiohttp
servers for what the SDK does not do (5xx, garbage, stalls, a dropping GET stream)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import test_utils, web

from gateway.protocol.sse_codec import SSEEvent, SSEParser
from gateway.testing.sdk_server import start_sdk_server, stop_sdk_server
from gateway.testing.servers import free_port
from gateway.upstream import (
    MAX_RESUMES,
    OnStreamMessage,
    Upstream,
    UpstreamError,
    UpstreamSessionLost,
)
from tests.gateway.fidelity_upstream import start_fidelity_server

# Guards against hangs only; nothing asserts how fast anything is.
HANG_GUARD = 30.0
# A timeout short enough for tests of the client's own timeouts.
SHORT = 0.5


class Delays:
    """A sleep for the client that does not wait: it keeps the delays asked for."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


CLIENT_PARAMS: dict[str, Any] = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "test_upstream", "version": "0"},
}


@pytest.fixture(scope="module")
def sse_server_url() -> Iterator[str]:
    process, url = start_sdk_server(json_response=False)
    yield url
    stop_sdk_server(process)


@pytest.fixture(scope="module")
def json_server_url() -> Iterator[str]:
    process, url = start_sdk_server(json_response=True)
    yield url
    stop_sdk_server(process)


@pytest.fixture(params=["sse", "json"])
def sdk_url(request: pytest.FixtureRequest) -> str:
    """Each SDK server in turn: one answering requests with SSE, one with JSON."""
    return request.getfixturevalue(f"{request.param}_server_url")


@pytest.fixture
async def upstream(sdk_url: str) -> AsyncIterator[Upstream]:
    client = Upstream(sdk_url, timeout=HANG_GUARD, sleep=Delays())
    yield client
    await client.close()


def call(request_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def open_session(upstream: Upstream) -> tuple[str, str]:
    """A session on the upstream and its negotiated protocol version."""
    session, result = await asyncio.wait_for(upstream.open_session(CLIENT_PARAMS), HANG_GUARD)
    assert session is not None
    return session, result["protocolVersion"]


# -- against the SDK server -------------------------------------------------------------


async def test_open_session_returns_the_session_and_the_initialize_result(
    upstream: Upstream,
) -> None:
    session, result = await upstream.open_session(CLIENT_PARAMS)
    assert session
    assert result["protocolVersion"] == "2025-11-25"
    assert result["serverInfo"]["name"] == "upstream-test"
    assert "tools" in result["capabilities"]


async def test_forward_lists_tools(upstream: Upstream) -> None:
    session, version = await open_session(upstream)
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    response = await upstream.forward(session, listing, protocol_version=version)
    assert response is not None and response["id"] == 2
    names = {tool["name"] for tool in response["result"]["tools"]}
    assert names == {"echo", "chatty_echo", "touch_tools", "gate"}


async def test_forward_calls_a_tool(upstream: Upstream) -> None:
    session, version = await open_session(upstream)
    response = await upstream.forward(session, call(3, "echo", text="héllo"), None, version)
    assert response is not None
    assert response["id"] == 3
    assert response["result"]["content"] == [{"type": "text", "text": "héllo"}]
    assert response["result"]["isError"] is False


async def test_notifications_reach_on_message_before_the_response(
    upstream: Upstream, request: pytest.FixtureRequest
) -> None:
    session, version = await open_session(upstream)
    seen: list[str] = []

    async def on_message(message: dict[str, Any]) -> None:
        seen.append(message["method"])

    message = call(4, "chatty_echo", text="hi")
    message["params"]["_meta"] = {"progressToken": "p4"}
    response = await upstream.forward(session, message, on_message, version)
    seen.append("response")
    assert response is not None and response["result"]["content"][0]["text"] == "hi"
    if request.node.callspec.params["sdk_url"] == "sse":
        assert seen == ["notifications/message", "notifications/progress", "response"]
    else:
        # The SDK drops request-scoped notifications in JSON-response mode.
        assert seen == ["response"]


async def test_a_notification_is_accepted_with_no_answer(upstream: Upstream) -> None:
    session, version = await open_session(upstream)
    notification = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
    assert await upstream.forward(session, notification, None, version) is None


async def test_a_4xx_with_a_jsonrpc_error_is_an_error_for_the_client(upstream: Upstream) -> None:
    session, version = await open_session(upstream)
    # The SDK answers 400 with id null to a message it cannot validate.
    malformed = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": "oops"}
    response = await upstream.forward(session, malformed, None, version)
    assert response is not None
    assert response["id"] == 5
    assert response["error"]["code"] == -32602


async def test_an_unknown_session_is_lost(upstream: Upstream) -> None:
    with pytest.raises(UpstreamSessionLost):
        await upstream.forward("no-such-session", call(6, "echo", text="x"))


async def test_an_ended_session_is_lost(upstream: Upstream) -> None:
    session, version = await open_session(upstream)
    await upstream.end_session(session)
    with pytest.raises(UpstreamSessionLost):
        await upstream.forward(session, call(7, "echo", text="x"), None, version)
    await upstream.end_session(session)  # again: the 404 is ignored


def into(received: asyncio.Queue[dict[str, Any]]) -> OnStreamMessage:
    """A listen() callback putting each message in ``received``."""

    async def on_message(message: dict[str, Any], event_id: str | None) -> None:
        received.put_nowait(message)

    return on_message


@contextlib.asynccontextmanager
async def listening(
    upstream: Upstream,
    session: str,
    version: str,
    on_message: OnStreamMessage,
    last_event_id: str | None = None,
) -> AsyncIterator[asyncio.Task[None]]:
    """listen() running, once its stream is open: the SDK drops what it sends on its
    own while there is none. Cancelled at the end."""
    opened = asyncio.Event()
    task = asyncio.create_task(
        upstream.listen(
            session, on_message, version, last_event_id=last_event_id, on_open=opened.set
        )
    )
    try:
        await asyncio.wait_for(opened.wait(), HANG_GUARD)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, UpstreamError):
            await task


async def test_listen_receives_what_the_server_sends_on_its_own(upstream: Upstream) -> None:
    session, version = await open_session(upstream)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with listening(upstream, session, version, into(received)) as task:
        await upstream.forward(session, call(2, "touch_tools"), None, version)
        message = await asyncio.wait_for(received.get(), HANG_GUARD)
        assert message == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
        assert not task.done()
    assert task.cancelled()


async def test_listen_is_lost_when_its_session_ends(upstream: Upstream) -> None:
    """Ending the session closes the open GET stream; the reconnect is answered 404."""
    session, version = await open_session(upstream)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with listening(upstream, session, version, into(received)) as task:
        await upstream.end_session(session)
        with pytest.raises(UpstreamSessionLost):
            await asyncio.wait_for(asyncio.shield(task), HANG_GUARD)


async def test_listen_on_an_unknown_session_is_lost(upstream: Upstream) -> None:
    async def on_message(message: dict[str, Any], event_id: str | None) -> None:
        raise AssertionError(message)

    with pytest.raises(UpstreamSessionLost):
        await asyncio.wait_for(upstream.listen("no-such-session", on_message), HANG_GUARD)


# -- against the SDK server that polls and asks (an event store, a `retry:`) ----------


@pytest.fixture(scope="module")
def fidelity_url() -> Iterator[str]:
    process, url = start_fidelity_server()
    yield url
    stop_sdk_server(process)


async def test_a_request_stream_the_sdk_server_ends_early_is_resumed(fidelity_url: str) -> None:
    seen: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> None:
        seen.append(message)

    async with Upstream(fidelity_url, timeout=HANG_GUARD) as upstream:
        session, version = await open_session(upstream)
        message = call(1, "poll", text="late")
        message["params"]["_meta"] = {"progressToken": "p1"}
        response = await upstream.forward(session, message, on_message, version)
    assert response is not None and response["result"]["content"][0]["text"] == "late"
    assert [m["method"] for m in seen] == ["notifications/progress"]


async def test_listen_resumes_the_sdk_servers_stream_after_an_event_id(fidelity_url: str) -> None:
    """What the server sent while nobody listened comes when a listen resumes after
    the last event id seen (as a listener taking over does)."""
    received: asyncio.Queue[tuple[dict[str, Any], str | None]] = asyncio.Queue()

    async def on_message(message: dict[str, Any], event_id: str | None) -> None:
        received.put_nowait((message, event_id))

    async with Upstream(fidelity_url, timeout=HANG_GUARD, sleep=Delays()) as upstream:
        session, version = await open_session(upstream)
        async with listening(upstream, session, version, on_message):
            await upstream.forward(session, call(1, "touch_tools"), None, version)
            changed, last_id = await asyncio.wait_for(received.get(), HANG_GUARD)
        assert changed["method"] == "notifications/tools/list_changed" and last_id
        await upstream.forward(session, call(2, "touch_tools"), None, version)  # unheard
        async with listening(upstream, session, version, on_message, last_id):
            missed, missed_id = await asyncio.wait_for(received.get(), HANG_GUARD)
    assert missed == changed and missed_id not in (None, last_id)


# -- against small aiohttp servers -------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def fake_upstream(
    post: Handler | None = None, get: Handler | None = None
) -> AsyncIterator[str]:
    """An HTTP server answering /mcp with the given handlers; yields its URL."""
    app = web.Application()
    if post is not None:
        app.router.add_post("/mcp", post)
    if get is not None:
        app.router.add_get("/mcp", get)
    async with test_utils.TestServer(app) as server:
        yield str(server.make_url("/mcp"))


def sse(*messages: dict[str, Any]) -> bytes:
    return b"".join(b"event: message\ndata: " + orjson.dumps(m) + b"\n\n" for m in messages)


async def sse_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


async def forward_to(url: str, message: dict[str, Any] | None = None, **options: Any) -> Any:
    async with Upstream(url, **options) as upstream:
        async with asyncio.timeout(HANG_GUARD):
            return await upstream.forward("s1", message or call(1, "echo", text="x"))


@pytest.mark.parametrize(
    ("status", "content_type", "body", "reason"),
    [
        (500, "text/plain", b"boom", "500 Internal Server Error: 'boom'"),
        (
            502,
            "application/json",
            b'{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m"}}',
            "502 Bad Gateway: m",
        ),
        (400, "text/html", b"<h1>Bad\nRequest</h1>", "400 Bad Request: '<h1>Bad Request</h1>'"),
        (200, "application/json", b"<html>", "is not JSON"),
        (200, "application/json", b'{"hello": "world"}', "is not a JSON-RPC message"),
        (200, "application/json", b"", "is not JSON"),
        (200, "text/html", b"<html>", "answered 200 with text/html"),
        (200, "text/event-stream", b"data: {not json\n\n", "is not JSON"),
        (200, "text/event-stream", b": nothing\n\n", "ended the stream without a response to 1"),
        (404, "text/plain", b"", "no longer knows session s1"),
    ],
)
async def test_a_bad_answer_is_an_upstream_error(
    status: int, content_type: str, body: bytes, reason: str
) -> None:
    async def post(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    async with fake_upstream(post) as url:
        with pytest.raises(UpstreamError) as raised:
            await forward_to(url)
    message = str(raised.value)
    assert reason in message and "\n" not in message


async def test_a_4xx_error_without_an_id_gets_the_requests_id() -> None:
    async def post(request: web.Request) -> web.Response:
        error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no"}}
        return web.json_response(error, status=401)

    async with fake_upstream(post) as url:
        response = await forward_to(url, call(42, "echo", text="x"))
    assert response == {"jsonrpc": "2.0", "id": 42, "error": {"code": -32600, "message": "no"}}


async def test_the_sse_answer_skips_priming_events_and_passes_server_requests_on() -> None:
    server_request = {"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage"}
    response = {"jsonrpc": "2.0", "id": 1, "result": {}}

    async def post(request: web.Request) -> web.StreamResponse:
        stream = await sse_stream(request)
        await stream.write(b"id: prime\ndata:\n\n: comment\n\n" + sse(server_request, response))
        return stream

    seen: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> None:
        seen.append(message)

    async with fake_upstream(post) as url, Upstream(url) as upstream:
        answer = await asyncio.wait_for(
            upstream.forward(None, call(1, "echo"), on_message), HANG_GUARD
        )
    # A request from the server may share the id of ours: it has a method.
    assert seen == [server_request]
    assert answer == response


async def test_nothing_listening_is_an_upstream_error_at_once() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(UpstreamError, match="cannot connect to"):
            await forward_to(url, connect_timeout=SHORT)
        async with Upstream(url) as upstream:
            with pytest.raises(UpstreamError, match="cannot connect to"):
                await upstream.open_session(CLIENT_PARAMS)


async def test_an_upstream_that_never_answers_times_out() -> None:
    release = asyncio.Event()

    async def post(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=202)

    async with fake_upstream(post) as url:
        try:
            with pytest.raises(UpstreamError, match=f"did not answer within {SHORT}s"):
                await forward_to(url, timeout=SHORT)
        finally:
            release.set()


async def test_a_stalled_sse_answer_times_out_after_what_it_sent() -> None:
    release = asyncio.Event()
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}

    async def post(request: web.Request) -> web.StreamResponse:
        stream = await sse_stream(request)
        await stream.write(sse(progress))
        await release.wait()
        return stream

    seen: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> None:
        seen.append(message)

    async with fake_upstream(post) as url, Upstream(url, timeout=SHORT) as upstream:
        try:
            async with asyncio.timeout(HANG_GUARD):
                with pytest.raises(UpstreamError, match="did not answer within"):
                    await upstream.forward("s1", call(1, "echo"), on_message)
        finally:
            release.set()
    assert seen == [progress]


# -- a request's stream ended early (SSE polling) ------------------------------------

PRIMING = b"id: p1\nretry: 250\ndata:\n\n"
PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
QUESTION = {"jsonrpc": "2.0", "id": "q1", "method": "elicitation/create", "params": {}}
ANSWER = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}


def with_id(event_id: str, message: dict[str, Any]) -> bytes:
    return f"id: {event_id}\n".encode() + sse(message)


async def primed_then_ended(request: web.Request) -> web.StreamResponse:
    """A POST answered as SSE polling does: a priming event, a progress
    notification, and the end of the stream."""
    stream = await sse_stream(request)
    await stream.write(PRIMING + with_id("e1", PROGRESS))
    return stream


async def forward_resumed(
    get: Handler, post: Handler = primed_then_ended
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Delays]:
    """Forward a call to a server answering with ``post`` and ``get``: the answer,
    what reached on_message, and the delays the client waited."""
    seen: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> None:
        seen.append(message)

    delays = Delays()
    async with fake_upstream(post, get) as url, Upstream(url, sleep=delays) as upstream:
        async with asyncio.timeout(HANG_GUARD):
            answer = await upstream.forward("s1", call(1, "echo"), on_message, "2025-11-25")
    return answer, seen, delays


async def test_a_request_stream_ended_after_an_event_id_is_resumed() -> None:
    resumed: list[Any] = []

    async def get(request: web.Request) -> web.StreamResponse:
        resumed.append(request.headers.copy())
        stream = await sse_stream(request)
        await stream.write(with_id("e2", QUESTION) + with_id("e3", ANSWER))
        return stream

    answer, seen, delays = await forward_resumed(get)
    assert answer == ANSWER
    assert seen == [PROGRESS, QUESTION]
    assert delays.asked == [0.25]  # the priming event's retry
    [headers] = resumed
    assert headers["Last-Event-ID"] == "e1"
    assert headers["Mcp-Session-Id"] == "s1"
    assert headers["MCP-Protocol-Version"] == "2025-11-25"
    assert headers["Accept"] == "text/event-stream"


async def test_a_request_stream_broken_after_an_event_id_is_resumed() -> None:
    async def post(request: web.Request) -> web.StreamResponse:
        stream = await sse_stream(request)
        await stream.write(PRIMING)
        assert request.transport is not None
        request.transport.close()  # mid-stream, no end of the chunked body
        return stream

    async def get(request: web.Request) -> web.StreamResponse:
        stream = await sse_stream(request)
        await stream.write(with_id("e3", ANSWER))
        return stream

    answer, seen, delays = await forward_resumed(get, post)
    assert (answer, seen, delays.asked) == (ANSWER, [], [0.25])


async def test_a_failed_resume_is_tried_again() -> None:
    statuses = [503, 200]

    async def get(request: web.Request) -> web.StreamResponse:
        if statuses.pop(0) == 503:
            return web.Response(status=503)
        stream = await sse_stream(request)
        await stream.write(with_id("e3", ANSWER))
        return stream

    answer, _, delays = await forward_resumed(get)
    assert answer == ANSWER
    assert delays.asked == [0.25, 0.25]


async def test_resuming_is_bounded() -> None:
    """A server that ends every stream after a new event id, and never answers."""
    resumes: list[str | None] = []

    async def get(request: web.Request) -> web.StreamResponse:
        resumes.append(request.headers.get("Last-Event-ID"))
        stream = await sse_stream(request)
        await stream.write(f"id: r{len(resumes)}\ndata:\n\n".encode())
        return stream

    with pytest.raises(UpstreamError, match=f"no response to 1 in {MAX_RESUMES} resumes"):
        await forward_resumed(get)
    assert resumes == ["e1"] + [f"r{n}" for n in range(1, MAX_RESUMES)]


@pytest.mark.parametrize(
    ("status", "raised", "reason"),
    [
        (405, UpstreamError, "refuses to resume it"),
        (404, UpstreamSessionLost, "no longer knows session s1"),
        (403, UpstreamError, "403 Forbidden"),
    ],
)
async def test_a_refused_resume_is_an_upstream_error(
    status: int, raised: type[UpstreamError], reason: str
) -> None:
    async def get(request: web.Request) -> web.Response:
        return web.Response(status=status)

    with pytest.raises(raised, match=reason):
        await forward_resumed(get)


async def test_listen_resumes_after_the_last_event_id_once_retry_has_passed() -> None:
    first = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    second = {"jsonrpc": "2.0", "method": "notifications/resources/list_changed"}
    resumed_from: list[str | None] = []
    headers: list[Any] = []
    release = asyncio.Event()

    async def get(request: web.Request) -> web.StreamResponse:
        resumed_from.append(request.headers.get("Last-Event-ID"))
        headers.append(request.headers.copy())
        stream = await sse_stream(request)
        if len(resumed_from) == 1:
            # A retry, an event with an id, then the stream drops.
            await stream.write(b"retry: 250\n\nid: e1\nevent: message\ndata: ")
            await stream.write(orjson.dumps(first) + b"\n\n")
            return stream
        await stream.write(b": resumed\r\nid: e2\r\ndata: " + orjson.dumps(second) + b"\r\n\r\n")
        await release.wait()
        return stream

    received: asyncio.Queue[tuple[dict[str, Any], str | None]] = asyncio.Queue()

    async def on_message(message: dict[str, Any], event_id: str | None) -> None:
        received.put_nowait((message, event_id))

    opened: list[None] = []
    delays = Delays()
    async with fake_upstream(get=get) as url, Upstream(url, sleep=delays) as upstream:
        listening = asyncio.create_task(
            upstream.listen(
                "s1",
                on_message,
                "2025-11-25",
                last_event_id="e0",  # where an earlier listener stopped
                on_open=lambda: opened.append(None),
            )
        )
        try:
            async with asyncio.timeout(HANG_GUARD):
                assert await received.get() == (first, "e1")
                assert await received.get() == (second, "e2")
        finally:
            listening.cancel()
            release.set()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
    assert resumed_from == ["e0", "e1"]
    assert delays.asked == [0.25]  # the server's retry, before the second GET
    assert len(opened) == 2
    for sent in headers:
        assert sent["Mcp-Session-Id"] == "s1"
        assert sent["MCP-Protocol-Version"] == "2025-11-25"
        assert sent["Accept"] == "text/event-stream"


async def test_listen_returns_when_the_upstream_has_no_stream() -> None:
    async def get(request: web.Request) -> web.Response:
        return web.Response(status=405)

    async def on_message(message: dict[str, Any], event_id: str | None) -> None:
        raise AssertionError(message)

    async with fake_upstream(get=get) as url, Upstream(url) as upstream:
        assert await asyncio.wait_for(upstream.listen("s1", on_message), HANG_GUARD) is None


async def test_listen_raises_on_a_final_refusal() -> None:
    async def get(request: web.Request) -> web.Response:
        return web.Response(status=403, text="forbidden")

    async def on_message(message: dict[str, Any], event_id: str | None) -> None:
        raise AssertionError(message)

    async with fake_upstream(get=get) as url, Upstream(url) as upstream:
        with pytest.raises(UpstreamError, match="403 Forbidden: 'forbidden'"):
            await asyncio.wait_for(upstream.listen("s1", on_message), HANG_GUARD)


async def test_the_request_headers() -> None:
    seen: list[tuple[Any, bytes]] = []

    async def post(request: web.Request) -> web.Response:
        seen.append((request.headers.copy(), await request.read()))
        return web.Response(status=202)

    notification = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
    async with fake_upstream(post) as url, Upstream(url) as upstream:
        await upstream.forward("s1", notification, protocol_version="2025-06-18")
        await upstream.forward(None, notification)
    (with_session, body), (without, _) = seen
    assert with_session["Mcp-Session-Id"] == "s1"
    assert with_session["MCP-Protocol-Version"] == "2025-06-18"
    assert with_session["Accept"] == "application/json, text/event-stream"
    assert with_session["Content-Type"] == "application/json"
    assert orjson.loads(body) == notification
    assert "Mcp-Session-Id" not in without and "MCP-Protocol-Version" not in without


async def test_close_is_idempotent_and_final() -> None:
    upstream = Upstream("http://127.0.0.1:1/mcp")
    await upstream.close()
    await upstream.close()
    with pytest.raises(UpstreamError, match="closed"):
        await upstream.forward(None, call(1, "echo"))


# -- the SSE parser ----------------------------------------------------------------------

STREAM = (
    "\ufeff: a comment\r\n"
    "retry: 2500\r\n"
    "id: prime\r\n"
    "data:\r\n"
    "\r\n"
    "event: message\n"
    "data: first line\n"
    "data:second line\n"
    "data:  two spaces\n"
    "\n"
    "data: carriage\r"
    "id: x\r"
    "\r"
    "event: custom\r\n"
    "unknown: field\r\n"
    "data\r\n"
    "data: \u2028 kept é\r\n"
    "\r\n"
    "data: unterminated"
).encode()


def parse(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)], parser


def test_the_sse_parser_follows_the_whatwg_rules() -> None:
    events, parser = parse([STREAM])
    assert events == [
        SSEEvent("message", "first line\nsecond line\n two spaces", "prime"),
        SSEEvent("message", "carriage", "x"),
        SSEEvent("custom", "\n\u2028 kept é", "x"),
    ]
    assert parser.retry == 2.5
    assert parser.last_event_id == "x"


def test_the_sse_parser_does_not_care_where_chunks_split() -> None:
    whole, _ = parse([STREAM])
    for size in (1, 2, 3, 7):
        chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
        assert parse(chunks)[0] == whole


def test_a_priming_event_sets_the_last_event_id_only() -> None:
    events, parser = parse([b"id: 42\ndata:\n\n"])
    assert events == []
    assert parser.last_event_id == "42"
