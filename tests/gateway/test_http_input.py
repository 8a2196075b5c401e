"""The gateway's HTTP layer in-process: every bad input gets a clear status and a
JSON-RPC error body; the DNS-rebinding guard; the operator endpoints; and a property
test throwing random bodies and headers at every MCP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from eventlog import LogUnavailable, open_log
from gateway.app import build_app
from gateway.connections import GatewayRunner
from gateway.http import MAX_BODY
from gateway.settings import Settings
from gateway.streamable_http import REGISTRY

# Guards against hangs only; nothing asserts how fast anything is.
HANG_GUARD = 10.0

SESSION = "Mcp-Session-Id"
VERSION = "MCP-Protocol-Version"
BOTH = "application/json, text/event-stream"
JSON_HEADERS = {"Accept": BOTH, "Content-Type": "application/json"}
LATEST = "2025-11-25"
UNKNOWN_SESSION = "0" * 32

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
MISSING_PROTOCOL_VERSION = -32002


def initialize_body(version: str | None = LATEST) -> dict[str, Any]:
    params: dict[str, Any] = {"capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    if version is not None:
        params["protocolVersion"] = version
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


def rpc(method: str, request_id: int = 2, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


class GatewayTestServer(TestServer):
    """aiohttp's test server on the gateway's own connections, as `sessionlog serve`
    runs it (JSON-RPC answers to what the HTTP parser refuses, read timeouts, the cap)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(build_app(settings), host="127.0.0.1")
        self.settings = settings

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, self.settings, access_log=None)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(GatewayTestServer(settings)) as client:
        yield client


def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/log.db"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        yield client


# -- reading answers --------------------------------------------------------------


def parse_sse(text: str) -> list[dict[str, str]]:
    """The events of a text/event-stream body: each a dict of its fields (data lines
    joined with newlines); comments skipped."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in re.split(r"\r\n|\r|\n", text):
        if not line:
            if fields:
                events.append(fields)
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data" and "data" in fields:
            fields["data"] += "\n" + value
        else:
            fields[name] = value
    if fields:
        events.append(fields)
    return events


async def read_event(response: ClientResponse) -> dict[str, str]:
    """The next event of an open event stream."""
    lines: list[str] = []
    async with asyncio.timeout(HANG_GUARD):
        while True:
            raw = await response.content.readline()
            assert raw, "the stream ended"
            line = raw.decode().rstrip("\r\n")
            if line:
                lines.append(line)
            elif any(not kept.startswith(":") for kept in lines):
                return parse_sse("\n".join(lines))[0]
            else:
                lines.clear()


async def rpc_answer(response: ClientResponse) -> dict[str, Any]:
    """The JSON-RPC answer a POST /mcp got, as JSON or as the last message of its
    event stream."""
    async with asyncio.timeout(HANG_GUARD):
        text = await response.text()
    if response.content_type == "text/event-stream":
        messages = [e["data"] for e in parse_sse(text) if e.get("data")]
        assert messages, text
        return orjson.loads(messages[-1])
    assert response.content_type == "application/json", text
    return orjson.loads(text)


async def assert_rpc_error(response: ClientResponse, status: int, code: int | None = None) -> None:
    """``response`` is ``status`` with a JSON-RPC error body: id null, or the id of
    the request it refuses when the gateway could read that far."""
    async with asyncio.timeout(HANG_GUARD):
        text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    body = orjson.loads(text)
    assert body["jsonrpc"] == "2.0" and isinstance(body["id"], str | int | None), body
    assert isinstance(body["error"]["code"], int), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


async def initialize(client: TestClient, headers: dict[str, str] | None = None) -> str:
    """A new Streamable HTTP session's id."""
    async with asyncio.timeout(HANG_GUARD):
        async with client.post(
            "/mcp", json=initialize_body(), headers={**JSON_HEADERS, **(headers or {})}
        ) as response:
            answer = await rpc_answer(response)
            assert response.status == 200, answer
            assert answer["result"]["protocolVersion"] == LATEST
            return response.headers[SESSION]


# -- POST /mcp ------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """One POST /mcp and what it must get."""

    body: bytes
    status: int
    code: int | None = None  # of the JSON-RPC error body, when the status is >= 400
    headers: dict[str, str] = field(default_factory=dict)
    session: str | None = "open"  # "open": a session's id; "unknown"; None: no header
    answer: str | None = None  # for 200: "method_not_found", "unknown_tool", "tool_error"


def dumps(message: Any) -> bytes:
    return orjson.dumps(message)


POSTS = {
    "not-json": Post(b"{not json", 400, PARSE_ERROR),
    "empty-body": Post(b"", 400, PARSE_ERROR),
    "not-json-rpc": Post(b'{"id":1,"method":"ping"}', 400, INVALID_REQUEST),
    "wrong-jsonrpc-version": Post(
        b'{"jsonrpc":"1.0","id":1,"method":"ping"}', 400, INVALID_REQUEST
    ),
    "json-scalar": Post(b"42", 400, INVALID_REQUEST),
    "batch": Post(dumps([rpc("ping", 1), rpc("ping", 2)]), 400, INVALID_REQUEST),
    "method-not-a-string": Post(b'{"jsonrpc":"2.0","id":1,"method":7}', 400, INVALID_REQUEST),
    "id-not-string-or-number": Post(
        b'{"jsonrpc":"2.0","id":{},"method":"ping"}', 400, INVALID_REQUEST
    ),
    "initialize-without-protocol-version": Post(
        dumps(initialize_body(None)), 400, MISSING_PROTOCOL_VERSION, session=None
    ),
    "body-over-4-mib": Post(b" " * (MAX_BODY + 1), 413),
    "unsupported-protocol-version": Post(
        dumps(rpc("ping")), 400, INVALID_REQUEST, headers={VERSION: "1999-01-01"}
    ),
    "wrong-content-type": Post(dumps(rpc("ping")), 415, headers={"Content-Type": "text/plain"}),
    "no-content-type": Post(dumps(rpc("ping")), 415, headers={"Content-Type": ""}),
    "accept-neither-json-nor-event-stream": Post(
        dumps(rpc("ping")), 406, INVALID_REQUEST, headers={"Accept": "text/html"}
    ),
    "no-session-id": Post(dumps(rpc("ping")), 400, INVALID_REQUEST, session=None),
    "unknown-session-id": Post(dumps(rpc("ping")), 404, INVALID_REQUEST, session="unknown"),
    "initialize-with-session-id": Post(dumps(initialize_body()), 400, INVALID_REQUEST),
    "notification": Post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', 202),
    "response": Post(b'{"jsonrpc":"2.0","id":"s1","result":{}}', 202),
    "error-response": Post(b'{"jsonrpc":"2.0","id":"s1","error":{"code":1,"message":"x"}}', 202),
    "unknown-method": Post(dumps(rpc("no/such/method")), 200, answer="method_not_found"),
    "unknown-method-json-only": Post(
        dumps(rpc("no/such/method")),
        200,
        headers={"Accept": "application/json"},
        answer="method_not_found",
    ),
    "unknown-tool": Post(
        dumps(rpc("tools/call", name="nope", arguments={})), 200, answer="unknown_tool"
    ),
    "echo-with-bad-arguments": Post(
        dumps(rpc("tools/call", name="echo", arguments={"text": 5})), 200, answer="tool_error"
    ),
    "echo-without-arguments": Post(dumps(rpc("tools/call", name="echo")), 200, answer="tool_error"),
}


@pytest.mark.parametrize("case", POSTS.values(), ids=POSTS.keys())
async def test_post_mcp_answers_bad_input_clearly(client: TestClient, case: Post) -> None:
    headers = dict(JSON_HEADERS)
    if case.session == "open":
        headers[SESSION] = await initialize(client)
    elif case.session == "unknown":
        headers[SESSION] = UNKNOWN_SESSION
    headers.update(case.headers)
    skip = ["Content-Type"] if headers.get("Content-Type") == "" else []
    if skip:
        del headers["Content-Type"]
    async with client.post(
        "/mcp", data=case.body, headers=headers, skip_auto_headers=skip
    ) as response:
        if case.status >= 400:
            await assert_rpc_error(response, case.status, case.code)
        elif case.status == 202:
            assert response.status == 202, await response.text()
            assert await response.read() == b""
        else:
            answer = await rpc_answer(response)
            assert response.status == 200, answer
            assert answer["id"] == 2
            if case.answer == "method_not_found":
                assert answer["error"]["code"] == METHOD_NOT_FOUND, answer
            elif case.answer == "unknown_tool":  # a protocol error, as the specification says
                assert answer["error"]["code"] == INVALID_PARAMS, answer
            else:
                assert answer["result"]["isError"] is True, answer


async def test_a_chunked_body_over_4_mib_is_413(client: TestClient) -> None:
    # No Content-Length to refuse it by: the limit holds while reading.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * 2**20

    headers = {**JSON_HEADERS, SESSION: await initialize(client)}
    async with client.post("/mcp", data=chunks(), headers=headers) as response:
        await assert_rpc_error(response, 413)


async def test_initialize_answers_with_an_event_stream_and_a_session_id(client: TestClient) -> None:
    async with client.post("/mcp", json=initialize_body(), headers=JSON_HEADERS) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers[SESSION])
        events = parse_sse(await response.text())
    priming, message = events
    assert priming["id"] and priming.get("data", "") == ""
    assert message["event"] == "message" and message["id"]
    answer = orjson.loads(message["data"])
    assert answer["id"] == 1 and answer["result"]["protocolVersion"] == LATEST


@pytest.mark.parametrize(("version", "primed"), [(LATEST, True), ("2025-06-18", False)])
async def test_only_2025_11_25_response_streams_start_with_a_priming_event(
    client: TestClient, version: str, primed: bool
) -> None:
    session_id = await initialize(client)
    headers = {**JSON_HEADERS, SESSION: session_id, VERSION: version}
    async with client.post("/mcp", json=rpc("ping"), headers=headers) as response:
        assert response.status == 200
        events = parse_sse(await response.text())
    assert [bool(e.get("data")) for e in events] == ([False, True] if primed else [True])
    assert orjson.loads(events[-1]["data"]) == {"jsonrpc": "2.0", "id": 2, "result": {}}


async def test_initialize_answers_json_when_the_client_accepts_only_json(
    client: TestClient,
) -> None:
    headers = {**JSON_HEADERS, "Accept": "application/json"}
    async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers[SESSION]
        assert (await response.json())["result"]["serverInfo"]["name"] == "sessionlog"


async def test_a_content_type_with_parameters_is_json(client: TestClient) -> None:
    headers = {**JSON_HEADERS, "Content-Type": "application/json; charset=utf-8"}
    await initialize(client, headers)


async def test_server_discover_without_a_session_is_a_4xx_so_clients_fall_back(
    client: TestClient,
) -> None:
    async with client.post("/mcp", json=rpc("server/discover"), headers=JSON_HEADERS) as response:
        assert 400 <= response.status < 500
        await assert_rpc_error(response, response.status)
    # The fallback works.
    await initialize(client)


@pytest.mark.parametrize(
    ("name", "value"),
    [("clientInfo", "t"), ("clientInfo", [1]), ("capabilities", "x"), ("capabilities", 5)],
)
async def test_initialize_params_that_are_not_objects_are_400(
    tmp_path: Path, name: str, value: Any
) -> None:
    body = initialize_body()
    body["params"][name] = value
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        async with client.post("/mcp", json=body, headers=JSON_HEADERS) as response:
            await assert_rpc_error(response, 400, INVALID_PARAMS)
        async with sse_session(client) as (_, endpoint):
            async with client.post(endpoint, json=body) as response:
                await assert_rpc_error(response, 400, INVALID_PARAMS)
        await initialize(client)
    # Nothing the gateway wrote is unreadable.
    log = await open_log(log_url(tmp_path))
    try:
        await log.read(0, 100_000)
        assert log.stats.undecodable == 0
    finally:
        await log.close()


async def test_the_session_cap_is_503_with_retry_after(tmp_path: Path) -> None:
    async with serving(Settings(log_url=log_url(tmp_path), max_sessions=1)) as client:
        await initialize(client)
        async with client.post("/mcp", json=initialize_body(), headers=JSON_HEADERS) as response:
            await assert_rpc_error(response, 503, INTERNAL_ERROR)
            assert int(response.headers["Retry-After"]) > 0
        async with client.get("/sse") as response:
            await assert_rpc_error(response, 503, INTERNAL_ERROR)


async def test_too_many_streams_of_one_identity_is_429_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(log_url=log_url(tmp_path), max_streams_per_identity=1)
    async with serving(settings) as client:
        first, second = await initialize(client), await initialize(client)
        async with client.get("/mcp", headers=stream_headers(first)) as held:
            await read_event(held)
            async with client.get("/mcp", headers=stream_headers(second)) as response:
                await assert_rpc_error(response, 429)
                assert int(response.headers["Retry-After"]) > 0
            async with client.get("/sse") as response:
                await assert_rpc_error(response, 429)
        # Closed streams free their slot.
        async with asyncio.timeout(HANG_GUARD):
            while True:
                async with client.get("/mcp", headers=stream_headers(second)) as response:
                    if response.status == 200:
                        break
                    await assert_rpc_error(response, 429)
                await asyncio.sleep(0)


# -- the backend down; an undecodable record --------------------------------------------


def log_of(client: TestClient) -> Any:
    return client.server.app[REGISTRY].runtime.log


@contextlib.contextmanager
def backend_down(client: TestClient) -> Iterator[None]:
    """Every read and write of the gateway's log fails as a lost backend's would."""

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise LogUnavailable("the backend is down (test)")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("_submit", "_head", "_read_rows", "_tail_rows"):
            patch.setattr(log_of(client), name, down)
        yield


async def assert_retry_later(response: ClientResponse) -> None:
    await assert_rpc_error(response, 503, INTERNAL_ERROR)
    assert int(response.headers["Retry-After"]) > 0


async def test_backend_down_is_503_with_retry_after_and_the_gateway_recovers(
    client: TestClient,
) -> None:
    session_id = await initialize(client)
    headers = {**JSON_HEADERS, SESSION: session_id}
    async with sse_session(client) as (stream, endpoint):
        with backend_down(client):
            async with client.post("/mcp", json=initialize_body(), headers=JSON_HEADERS) as down:
                await assert_retry_later(down)
            async with client.post("/mcp", json=rpc("ping"), headers=headers) as down:
                await assert_retry_later(down)
            async with client.post(endpoint, json=rpc("ping", 8)) as down:
                await assert_retry_later(down)
            async with client.delete("/mcp", headers={SESSION: session_id}) as down:
                await assert_retry_later(down)
            # It still says how it is.
            async with client.get("/healthz") as health:
                assert health.status == 200
            async with client.get("/readyz") as ready:
                assert ready.status == 503
                assert (await ready.json())["ready"] is False
            async with client.get("/metrics") as metrics:
                assert metrics.status == 200
        # Back: the same session and stream go on, and nothing refused was kept.
        async with client.post("/mcp", json=rpc("ping"), headers=headers) as response:
            assert response.status == 200
            assert (await rpc_answer(response))["result"] == {}
        async with client.post(endpoint, json=rpc("ping", 9)) as response:
            assert response.status == 202
        answer = await read_event(stream)
        assert orjson.loads(answer["data"]) == {"jsonrpc": "2.0", "id": 9, "result": {}}
        async with client.get("/readyz") as ready:
            assert ready.status == 200
        await initialize(client)


@pytest.mark.parametrize("target", ["GET /sse", "GET /mcp"])
async def test_backend_down_a_new_stream_is_503_with_retry_after(
    client: TestClient, target: str
) -> None:
    # Not a 200 whose stream ends before its first event: the client could not tell
    # that from a broken connection, nor know when to retry.
    session_id = await initialize(client)
    headers = stream_headers(session_id) if target == "GET /mcp" else {}
    method, path = target.split(" ")
    with backend_down(client):
        async with client.request(method, path, headers=headers) as response:
            await assert_retry_later(response)


async def test_an_undecodable_record_is_skipped_and_counted_and_serving_goes_on(
    client: TestClient,
) -> None:
    session_id = await initialize(client)
    log = log_of(client)
    with sqlite3.connect(log._path) as db:
        (head,) = db.execute("SELECT max(position) FROM sessionlog_events").fetchone()
        db.execute(
            "INSERT INTO sessionlog_events (position, event_id, at, worker, data) "
            "VALUES (?, 'garbage', 0, 'test', ?)",
            (head + 1, b"\xc1 not msgpack"),
        )
    db.close()
    headers = {**JSON_HEADERS, SESSION: session_id}
    async with client.post("/mcp", json=rpc("ping"), headers=headers) as response:
        assert (await rpc_answer(response))["result"] == {}
    await initialize(client)
    async with client.get("/metrics") as response:
        text = await response.text()
    assert re.search(r"^sessionlog_log_undecodable_total 1(\.0)?$", text, re.MULTILINE), text
    async with client.get("/readyz") as response:
        assert response.status == 200


# -- GET and DELETE /mcp, other methods -------------------------------------------------


def stream_headers(session_id: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", **extra}
    if session_id is not None:
        headers[SESSION] = session_id
    return headers


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        pytest.param({"Accept": "application/json"}, 406, INVALID_REQUEST, id="accept-no-stream"),
        pytest.param({SESSION: None}, 400, INVALID_REQUEST, id="no-session-id"),
        pytest.param({SESSION: UNKNOWN_SESSION}, 404, INVALID_REQUEST, id="unknown-session"),
        pytest.param({"Last-Event-ID": "abc"}, 400, INVALID_REQUEST, id="last-event-id-words"),
        pytest.param({"Last-Event-ID": "1/short"}, 400, INVALID_REQUEST, id="last-event-id-short"),
        pytest.param({"Last-Event-ID": "-1"}, 400, INVALID_REQUEST, id="last-event-id-negative"),
        # str.isdigit() is true for "²", which int() refuses.
        pytest.param({"Last-Event-ID": "²"}, 400, INVALID_REQUEST, id="last-event-id-superscript"),
        pytest.param(
            {"Last-Event-ID": f"²/{'a' * 32}"},
            400,
            INVALID_REQUEST,
            id="request-event-id-superscript",
        ),
        pytest.param({VERSION: "1999-01-01"}, 400, INVALID_REQUEST, id="unsupported-version"),
    ],
)
async def test_get_mcp_answers_bad_input_clearly(
    client: TestClient, headers: dict[str, str | None], status: int, code: int
) -> None:
    session_id = await initialize(client)
    sent = {**stream_headers(session_id), **headers}
    async with client.get(
        "/mcp", headers={k: v for k, v in sent.items() if v is not None}
    ) as response:
        await assert_rpc_error(response, status, code)


async def test_a_second_get_stream_on_one_session_is_409(client: TestClient) -> None:
    session_id = await initialize(client)
    async with client.get("/mcp", headers=stream_headers(session_id)) as first:
        assert first.status == 200
        assert first.content_type == "text/event-stream"
        priming = await read_event(first)
        assert priming["id"].isdigit() and priming.get("data", "") == ""
        async with client.get("/mcp", headers=stream_headers(session_id)) as second:
            await assert_rpc_error(second, 409, INVALID_REQUEST)


async def test_get_with_an_unknown_request_event_id_is_an_empty_stream_that_ends(
    client: TestClient,
) -> None:
    session_id = await initialize(client)
    headers = stream_headers(session_id, **{"Last-Event-ID": f"1/{'a' * 32}"})
    async with client.get("/mcp", headers=headers) as response:
        assert response.status == 200
        async with asyncio.timeout(HANG_GUARD):
            assert parse_sse(await response.text()) == []


async def test_delete_mcp(client: TestClient) -> None:
    async with client.delete("/mcp") as response:
        await assert_rpc_error(response, 400, INVALID_REQUEST)
    async with client.delete("/mcp", headers={SESSION: UNKNOWN_SESSION}) as response:
        await assert_rpc_error(response, 404, INVALID_REQUEST)
    session_id = await initialize(client)
    async with client.delete("/mcp", headers={SESSION: session_id}) as response:
        assert response.status == 200
    headers = {**JSON_HEADERS, SESSION: session_id}
    async with client.post("/mcp", json=rpc("ping"), headers=headers) as response:
        await assert_rpc_error(response, 404, INVALID_REQUEST)
    async with client.get("/mcp", headers=stream_headers(session_id)) as response:
        await assert_rpc_error(response, 404, INVALID_REQUEST)
    async with client.delete("/mcp", headers={SESSION: session_id}) as response:
        await assert_rpc_error(response, 404, INVALID_REQUEST)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/mcp", {"GET", "POST", "DELETE"}),
        ("PATCH", "/mcp", {"GET", "POST", "DELETE"}),
        ("PUT", "/messages/", {"POST"}),
        ("DELETE", "/sse", {"GET"}),
    ],
)
async def test_other_methods_are_405_with_allow(
    client: TestClient, method: str, path: str, allowed: set[str]
) -> None:
    async with client.request(method, path, headers=JSON_HEADERS, data=b"{}") as response:
        await assert_rpc_error(response, 405, INVALID_REQUEST)
        assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


async def test_an_unknown_path_is_404_with_a_json_rpc_body(client: TestClient) -> None:
    async with client.get("/no/such/path") as response:
        await assert_rpc_error(response, 404)
    async with client.post("/mcp/extra", json=rpc("ping"), headers=JSON_HEADERS) as response:
        await assert_rpc_error(response, 404)


# -- HTTP+SSE -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sse_session(
    client: TestClient, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[ClientResponse, str]]:
    """An open GET /sse stream and its endpoint."""
    async with client.get("/sse", headers=headers) as stream:
        assert stream.status == 200, await stream.text()
        assert stream.content_type == "text/event-stream"
        event = await read_event(stream)
        assert event["event"] == "endpoint"
        assert re.fullmatch(r"/messages/\?session_id=[0-9a-f]{32}", event["data"]), event
        yield stream, event["data"]


async def test_sse_endpoint_takes_a_message_and_answers_on_the_stream(client: TestClient) -> None:
    async with sse_session(client) as (stream, endpoint):
        async with client.post(endpoint, json=rpc("ping", 7)) as posted:
            assert posted.status == 202
        event = await read_event(stream)
        assert event["event"] == "message" and event["id"].isdigit()
        assert orjson.loads(event["data"]) == {"jsonrpc": "2.0", "id": 7, "result": {}}


@pytest.mark.parametrize(
    ("query", "body", "status", "code"),
    [
        pytest.param("", dumps(rpc("ping")), 400, INVALID_REQUEST, id="no-session-id"),
        pytest.param("?session_id=", dumps(rpc("ping")), 400, INVALID_REQUEST, id="empty-id"),
        pytest.param(
            f"?session_id={UNKNOWN_SESSION}", dumps(rpc("ping")), 404, INVALID_REQUEST, id="unknown"
        ),
        pytest.param("open", b"{not json", 400, PARSE_ERROR, id="not-json"),
        pytest.param("open", b'{"id":1,"method":"ping"}', 400, INVALID_REQUEST, id="not-json-rpc"),
        pytest.param("open", dumps([rpc("ping")]), 400, INVALID_REQUEST, id="batch"),
        pytest.param("open", b" " * (MAX_BODY + 1), 413, None, id="over-4-mib"),
    ],
)
async def test_sse_post_answers_bad_input_clearly(
    client: TestClient, query: str, body: bytes, status: int, code: int | None
) -> None:
    async with sse_session(client) as (_, endpoint):
        path = endpoint if query == "open" else f"/messages/{query}"
        async with client.post(path, data=body) as response:
            await assert_rpc_error(response, status, code)


async def test_sse_resume_of_an_unknown_session_is_404(client: TestClient) -> None:
    async with client.get(f"/sse?session_id={UNKNOWN_SESSION}") as response:
        await assert_rpc_error(response, 404)


@pytest.mark.parametrize("last_event_id", ["x", "-1", "1.5", "²"])
async def test_sse_malformed_last_event_id_is_400(client: TestClient, last_event_id: str) -> None:
    async with client.get("/sse", headers={"Last-Event-ID": last_event_id}) as response:
        await assert_rpc_error(response, 400, INVALID_REQUEST)


# -- hostile input on the wire: raw bytes, where a client library would refuse --------


def raw_request(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    host: bytes | None = b"127.0.0.1",
) -> bytes:
    """An HTTP/1.1 request as bytes, headers as given (any bytes at all)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Connection: close"]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += [name + b": " + value for name, value in headers or []]
    if method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes  # a GET's event stream's: not read; a chunked one's as sent


async def exchange(port: int, request: bytes) -> RawAnswer:
    """Send ``request`` on a new connection; the answer (of a GET's event stream,
    only its head; a POST's ends with its answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(HANG_GUARD):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.rstrip(b"\r\n").split(b"\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"content-length" in headers:
                body = await reader.readexactly(int(headers[b"content-length"]))
            elif headers.get(b"content-type", b"").startswith(
                b"text/event-stream"
            ) and not request.startswith(b"POST "):
                body = b""  # a GET's stream may never end
            else:
                body = await reader.read()
    finally:
        writer.close()
    return RawAnswer(int(status_line.split(b" ")[1]), headers, body)


def assert_raw_rpc_error(answer: RawAnswer, status: int | None = None) -> dict[str, Any]:
    """``answer`` is a 4xx (``status`` if given) with a JSON-RPC error body."""
    assert 400 <= answer.status < 500, answer
    if status is not None:
        assert answer.status == status, answer
    assert answer.headers[b"content-type"].startswith(b"application/json"), answer
    error = orjson.loads(answer.body)
    assert error["jsonrpc"] == "2.0" and isinstance(error["error"]["code"], int), error
    assert isinstance(error["error"]["message"], str) and error["error"]["message"], error
    return error


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing was logged as an error, nor with a traceback."""
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """A JSON value ``depth`` levels of arrays and objects deep."""
    opened = b'{"a":[' * (depth // 2) + (b"[" if depth % 2 else b"")
    closed = (b"]" if depth % 2 else b"") + b"]}" * (depth // 2)
    return opened + inner + closed


def test_nested_builds_the_depth_it_says() -> None:
    from gateway.protocol.inbound import _depth

    for depth in (0, 1, 2, 127, 128, 129, 255):
        assert _depth(orjson.loads(nested(depth))) == depth


@contextlib.asynccontextmanager
async def raw_sessions(client: TestClient) -> AsyncIterator[tuple[bytes, bytes]]:
    """An open session of each transport: Streamable HTTP's and HTTP+SSE's ids."""
    async with sse_session(client) as (_, endpoint):
        yield (await initialize(client)).encode(), endpoint.rpartition("=")[2].encode()


# Bodies nested from just past the limit to past orjson's own (1024) and far beyond.
DEPTHS = [129, 255, 256, 500, 1000, 1023, 1024, 1025, 100_000]


@pytest.mark.parametrize("depth", DEPTHS)
async def test_deeply_nested_json_is_400_on_both_transports(
    client: TestClient, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    port = client.server.port
    initialize_deep = dumps(initialize_body()).replace(
        b'"capabilities":{}', b'"capabilities":{"x":' + nested(depth) + b"}"
    )
    async with raw_sessions(client) as (session, sse):
        mcp = [(b"Accept", BOTH.encode()), (b"Content-Type", b"application/json")]
        posts = {
            "ping params": (b"/mcp", [*mcp, (b"Mcp-Session-Id", session)], nested(depth)),
            "tools/call arguments": (
                b"/mcp",
                [*mcp, (b"Mcp-Session-Id", session)],
                b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo",'
                b'"arguments":{"text":' + nested(depth) + b"}}}",
            ),
            "initialize capabilities": (b"/mcp", mcp, initialize_deep),
            "a response": (
                b"/mcp",
                [*mcp, (b"Mcp-Session-Id", session)],
                b'{"jsonrpc":"2.0","id":"s1","result":' + nested(depth) + b"}",
            ),
            "stateless": (
                b"/mcp",
                [*mcp, (b"MCP-Protocol-Version", b"2026-07-28"), (b"Mcp-Method", b"tools/list")],
                b'{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":'
                b'{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
                b'"io.modelcontextprotocol/clientCapabilities":' + nested(depth) + b"}}}",
            ),
            "HTTP+SSE message": (
                b"/messages/?session_id=" + sse,
                [],
                b'{"jsonrpc":"2.0","id":2,"method":"ping","params":' + nested(depth) + b"}",
            ),
        }
        for name, (target, headers, body) in posts.items():
            answer = await exchange(port, raw_request(b"POST", target, headers, body))
            assert_raw_rpc_error(answer, 400), name
    assert_no_traceback(caplog)


async def test_json_nested_to_the_limit_is_served(client: TestClient) -> None:
    async with raw_sessions(client) as (session, sse):
        headers = [
            (b"Accept", b"application/json"),
            (b"Content-Type", b"application/json"),
            (b"Mcp-Session-Id", session),
        ]
        body = b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":' + nested(126) + b"}}"
        answer = await exchange(client.server.port, raw_request(b"POST", b"/mcp", headers, body))
        assert answer.status == 200 and orjson.loads(answer.body)["result"] == {}, answer
        target = b"/messages/?session_id=" + sse
        answer = await exchange(client.server.port, raw_request(b"POST", target, [], body))
        assert answer.status == 202, answer


# Header values no session id, event id or protocol version has, as raw bytes.
HOSTILE_VALUES = {
    "5000-digits": b"9" * 5000,
    "4300-digits-with-message": b"9" * 4300 + b"/" + b"a" * 32,
    "bytes-ff-fe": b"\xff\xfe",
    "latin-1": "caf\u00e9".encode("latin-1"),
    "utf-8": "\u00b2\u00b2".encode(),
    "control-char": b"a\x01b",
    "escape": b"\x1b[31m",
    "nul": b"a\x00b",
    "tab-inside": b"a\tb",
    "empty": b"",
    "spaces": b"   ",
    "200-chars": b"a" * 200,
    "over-8-kib": b"a" * 9000,
}


@pytest.mark.parametrize("value", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
async def test_hostile_header_values_are_4xx_with_json_rpc_bodies(
    client: TestClient, caplog: pytest.LogCaptureFixture, value: bytes
) -> None:
    port = client.server.port
    async with raw_sessions(client) as (session, sse):
        stream = [(b"Accept", b"text/event-stream")]
        post = [(b"Accept", BOTH.encode()), (b"Content-Type", b"application/json")]
        requests = {
            "GET /mcp Mcp-Session-Id": raw_request(
                b"GET", b"/mcp", [*stream, (b"Mcp-Session-Id", value)]
            ),
            "POST /mcp Mcp-Session-Id": raw_request(
                b"POST", b"/mcp", [*post, (b"Mcp-Session-Id", value)], dumps(rpc("ping"))
            ),
            "DELETE /mcp Mcp-Session-Id": raw_request(
                b"DELETE", b"/mcp", [(b"Mcp-Session-Id", value)]
            ),
            "GET /mcp Last-Event-ID": raw_request(
                b"GET", b"/mcp", [*stream, (b"Mcp-Session-Id", session), (b"Last-Event-ID", value)]
            ),
            "GET /sse Last-Event-ID": raw_request(b"GET", b"/sse", [(b"Last-Event-ID", value)]),
            "GET /sse resumed Last-Event-ID": raw_request(
                b"GET", b"/sse?session_id=" + sse, [(b"Last-Event-ID", value)]
            ),
            "GET /mcp MCP-Protocol-Version": raw_request(
                b"GET",
                b"/mcp",
                [*stream, (b"Mcp-Session-Id", session), (b"MCP-Protocol-Version", value)],
            ),
            "POST /mcp MCP-Protocol-Version": raw_request(
                b"POST",
                b"/mcp",
                [*post, (b"Mcp-Session-Id", session), (b"MCP-Protocol-Version", value)],
                dumps(rpc("ping")),
            ),
        }
        for name, request in requests.items():
            answer = await exchange(port, request)
            assert_raw_rpc_error(answer), name
    assert_no_traceback(caplog)


# Session ids in HTTP+SSE's query string, as a client could put them there.
HOSTILE_QUERIES = {
    "percent-ff-fe": b"%ff%fe",
    "raw-ff-fe": b"\xff\xfe",
    "percent-control": b"a%01b",
    "space": b"a%20b",
    "200-chars": b"a" * 200,
    "over-8-kib": b"a" * 9000,
    "repeated": b"x&session_id=y",
}


@pytest.mark.parametrize("query", HOSTILE_QUERIES.values(), ids=HOSTILE_QUERIES.keys())
async def test_hostile_sse_session_ids_are_4xx_with_json_rpc_bodies(
    client: TestClient, caplog: pytest.LogCaptureFixture, query: bytes
) -> None:
    port = client.server.port
    for request in (
        raw_request(b"GET", b"/sse?session_id=" + query),
        raw_request(b"POST", b"/messages/?session_id=" + query, body=dumps(rpc("ping"))),
    ):
        assert_raw_rpc_error(await exchange(port, request))
    assert_no_traceback(caplog)


# What aiohttp's HTTP parser refuses before any handler runs.
MALFORMED = {
    "over-8-kib-header": [(b"X-Big", b"a" * 9000)],
    "too-many-headers": [(b"X-%d" % i, b"a") for i in range(200)],
    "header-without-colon": [(b"no colon here", b"")],
    "space-before-colon": [(b"X-Bad ", b"1")],
    "bad-content-length": [(b"Content-Length", b"abc")],
    "two-content-lengths": [(b"Content-Length", b"1"), (b"Content-Length", b"2")],
    "bad-transfer-encoding": [(b"Transfer-Encoding", b"chunked, gzip, x")],
}


@pytest.mark.parametrize("headers", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"GET", b"/mcp"),
        (b"POST", b"/mcp"),
        (b"DELETE", b"/mcp"),
        (b"GET", b"/sse"),
        (b"POST", b"/messages/"),
    ],
)
async def test_requests_the_http_parser_refuses_are_400_with_json_rpc_bodies(
    client: TestClient,
    caplog: pytest.LogCaptureFixture,
    headers: list[tuple[bytes, bytes]],
    method: bytes,
    path: bytes,
) -> None:
    request = raw_request(method, path, headers)
    assert_raw_rpc_error(await exchange(client.server.port, request), 400)
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /mcp?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            id="over-8-kib-request-line",
        ),
        pytest.param(
            b"GET /sse?session_id=\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            id="raw-bytes-in-url",
        ),
        pytest.param(b"GET /mcp HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", id="http-9"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
        pytest.param(b"\x00\x01\x02 garbage\r\n\r\n", id="garbage"),
        pytest.param(b"GET\r\n\r\n", id="no-target"),
    ],
)
async def test_malformed_request_lines_are_400_with_json_rpc_bodies(
    client: TestClient, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    assert_raw_rpc_error(await exchange(client.server.port, request_bytes), 400)
    assert_no_traceback(caplog)


async def test_a_body_short_of_its_content_length_is_408_once_the_body_timeout_passes(
    tmp_path: Path,
) -> None:
    # The timeout is a real one, waited for as an event; nothing asserts how long.
    settings = Settings(log_url=log_url(tmp_path), body_timeout=0.1)
    async with serving(settings) as client, raw_sessions(client) as (session, sse):
        headers = [(b"Content-Type", b"application/json"), (b"Mcp-Session-Id", session)]
        for target in (b"/mcp", b"/messages/?session_id=" + sse):
            request = raw_request(b"POST", target, headers, b"{" * 100)
            short = request.replace(b"Content-Length: 100", b"Content-Length: 1000")
            answer = await exchange(client.server.port, short)
            assert_raw_rpc_error(answer, 408)


# -- DNS-rebinding guard ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
async def test_a_foreign_host_is_421(client: TestClient, host: str) -> None:
    headers = {**JSON_HEADERS, "Host": host}
    async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
        await assert_rpc_error(response, 421)
    async with client.get("/sse", headers={"Host": host}) as response:
        await assert_rpc_error(response, 421)


@pytest.mark.parametrize("host", ["[", "[::1", "localhost]", ""])
async def test_a_malformed_host_is_421(client: TestClient, host: str) -> None:
    async with client.get("/healthz", headers={"Host": host}) as response:
        await assert_rpc_error(response, 421)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost:9", "[::1]:80", "127.0.0.1"])
async def test_a_loopback_host_is_allowed(client: TestClient, host: str) -> None:
    await initialize(client, {"Host": host})


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost.evil.example"])
async def test_a_foreign_origin_is_403(client: TestClient, origin: str) -> None:
    headers = {**JSON_HEADERS, "Origin": origin}
    async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
        await assert_rpc_error(response, 403)


@pytest.mark.parametrize("origin", ["http://[::1", "http://[", "http://local]host"])
async def test_a_malformed_origin_is_403(client: TestClient, origin: str) -> None:
    async with client.get("/healthz", headers={"Origin": origin}) as response:
        await assert_rpc_error(response, 403)


@pytest.mark.parametrize("origin", ["http://localhost:1234", "http://127.0.0.1:80", "http://[::1]"])
async def test_a_loopback_origin_is_allowed(client: TestClient, origin: str) -> None:
    await initialize(client, {"Origin": origin})


async def test_allowed_origins_replace_the_loopback_default(tmp_path: Path) -> None:
    settings = Settings(log_url=log_url(tmp_path), allowed_origins=("https://app.example",))
    async with serving(settings) as client:
        await initialize(client, {"Origin": "https://app.example"})
        for origin in ("http://evil.example", "http://app.example", "http://localhost:1234"):
            headers = {**JSON_HEADERS, "Origin": origin}
            async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
                await assert_rpc_error(response, 403)


# -- operator endpoints -------------------------------------------------------------------


async def test_healthz(client: TestClient) -> None:
    async with client.get("/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_readyz(client: TestClient) -> None:
    await initialize(client)
    async with client.get("/readyz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["ready"] is True
    assert isinstance(body["head"], int) and isinstance(body["position"], int)
    assert 0 < body["position"] <= body["head"]


async def test_metrics(client: TestClient) -> None:
    session_id = await initialize(client)
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert re.search(r"^sessionlog_open_sessions 1(\.0)?$", text, re.MULTILINE), text
    assert "sessionlog_delivery_latency_seconds_bucket" in text
    assert "sessionlog_delivery_latency_seconds_count" in text
    # Compaction's, though none ran yet.
    assert re.search(r"^sessionlog_compaction_runs_total 0(\.0)?$", text, re.MULTILINE), text
    assert "sessionlog_log_start_position" in text
    async with client.delete("/mcp", headers={SESSION: session_id}) as response:
        assert response.status == 200
    async with client.get("/metrics") as response:
        text = await response.text()
    assert re.search(r"^sessionlog_open_sessions 0(\.0)?$", text, re.MULTILINE), text


# -- property: nothing a client sends gets a 5xx or an error without a JSON body --------------

SESSION_ALIAS = "<open>"  # stands for the fuzzer's open session of the endpoint's transport


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn about ``weight`` times as often. (``one_of``
    draws its distinct branches alike, however often one is repeated.)"""
    indexes = [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indexes).flatmap(lambda index: choices[index][1])


printable = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | printable,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(printable, children, max_size=4)
    ),
    max_leaves=10,
)
methods = st.sampled_from(
    [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "notifications/initialized",
        "server/discover",
    ]
)
initialize_params = st.fixed_dictionaries(
    {"protocolVersion": st.sampled_from(["2025-11-25", "2024-11-05", "1999-01-01"])},
    optional={"capabilities": json_values, "clientInfo": json_values},
)
tool_params = st.fixed_dictionaries(
    {}, optional={"name": st.just("echo") | json_values, "arguments": json_values}
)
# Mostly JSON-RPC 2.0 requests, notifications and responses with known methods, so
# they get past the checks to the handlers; every part sometimes anything at all.
jsonrpc = weighted((8, st.just("2.0")), (1, json_values))
ids = weighted((4, st.integers(0, 1000)), (1, st.integers()), (1, printable), (1, json_values))
params = weighted((2, initialize_params), (2, tool_params), (1, json_values))
anything = {"id": json_values, "method": json_values, "params": json_values}
messages = weighted(
    (
        4,
        st.fixed_dictionaries(
            {"jsonrpc": jsonrpc, "id": ids, "method": weighted((4, methods), (1, printable))},
            optional={"params": params},
        ),
    ),
    (
        1,
        st.fixed_dictionaries({"jsonrpc": jsonrpc, "method": methods}, optional={"params": params}),
    ),
    (
        1,
        st.fixed_dictionaries(
            {"jsonrpc": jsonrpc, "id": ids},
            optional={"result": json_values, "error": json_values},
        ),
    ),
    (1, st.fixed_dictionaries({"jsonrpc": jsonrpc}, optional=anything)),
)


def encode(value: Any) -> bytes:
    # The standard library's encoder: integers of any size, as a client may send.
    return json.dumps(value, ensure_ascii=False).encode()


# A message nested this deep (past MAX_DEPTH, or orjson's 1024), where the gateway
# passes it on as sent (ping's params) or records it (initialize's capabilities).
deep_messages = st.integers(0, 1100).map(
    lambda depth: (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{'
        b'"protocolVersion":"2025-11-25","capabilities":{"x":' + nested(depth) + b"}}}"
    )
) | st.integers(0, 1100).map(
    lambda depth: b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + nested(depth) + b"}"
)
bodies = weighted(
    (6, messages.map(encode)),
    (1, st.binary(max_size=200)),
    (1, json_values.map(encode)),
    (1, st.lists(messages, max_size=3).map(encode)),
    (1, deep_messages),
)
# Header values as no client library would send them: any bytes (CR and LF too),
# known troublemakers, or absurdly long.
hostile = weighted(
    (2, st.binary(max_size=40)),
    (1, st.sampled_from(list(HOSTILE_VALUES.values()))),
    (1, st.integers(100, 20_000).map(lambda length: b"9" * length)),
)


def header(*meaningful: str) -> st.SearchStrategy[str | bytes | None]:
    """Mostly a value that means something here; sometimes none, or anything."""
    return weighted((6, st.sampled_from(meaningful)), (1, st.none()), (2, printable), (1, hostile))


# Mostly the open session; else none, anything, or one shaped like ours but unknown.
session_ids = weighted(
    (6, st.just(SESSION_ALIAS)),
    (1, st.none()),
    (1, printable),
    (1, hostile),
    (1, st.text("0123456789abcdef", min_size=32, max_size=32)),
)
requests = st.fixed_dictionaries(
    {
        "target": st.sampled_from(
            ["POST /mcp"] * 4
            + ["GET /mcp"] * 2
            + ["DELETE /mcp"]
            + ["POST /messages/"] * 3
            + ["GET /sse"]
        ),
        "body": bodies,
        "headers": st.fixed_dictionaries(
            {
                "Accept": header(BOTH, BOTH, "application/json", "text/event-stream", "*/*"),
                "Content-Type": header("application/json", "application/json; charset=utf-8"),
                VERSION: header("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"),
                SESSION: session_ids,
                "Last-Event-ID": weighted(
                    (6, st.none()),
                    (1, st.sampled_from(["1", f"1/{'a' * 32}", "0", "²"])),
                    (1, printable),
                    (1, hostile),
                ),
                # Mostly absent: a foreign Host or Origin stops everything else.
                "Origin": weighted((12, st.none()), (1, header("http://localhost:1"))),
                "Host": weighted((12, st.none()), (1, header("localhost", "[::1"))),
            }
        ),
        "query_session": session_ids,
    }
)


class Fuzzer:
    """One in-process gateway, shared by every example of the property test."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.session = ""  # an open Streamable HTTP session
        self.sse_session = ""  # an open HTTP+SSE session
        self.sse_stream: ClientResponse | None = None

    async def start(self) -> None:
        self.session = await initialize(self.client)
        await self.open_sse()

    async def open_sse(self) -> None:
        self.close()
        self.sse_stream = await self.client.get("/sse")
        opened = await read_event(self.sse_stream)
        self.sse_session = opened["data"].rpartition("=")[2]

    def close(self) -> None:
        if self.sse_stream is not None:
            self.sse_stream.close()
            self.sse_stream = None

    async def send(self, request: dict[str, Any]) -> None:
        """Send ``request`` as raw bytes: its answer is a 2xx, or a 4xx with a
        JSON-RPC body; never a 5xx, never no answer."""
        target = request["target"]
        method, path = target.split(" ")
        sse = path in ("/sse", "/messages/")
        session = self.sse_session if sse else self.session

        def wire(value: str | bytes) -> bytes:
            value = session if value == SESSION_ALIAS else value
            return value if isinstance(value, bytes) else value.encode()

        headers = [
            (name.encode(), wire(value))
            for name, value in request["headers"].items()
            if value is not None and name != "Host"
        ]
        host = request["headers"].get("Host")
        query = request["query_session"]
        if sse and query is not None:
            value = wire(query)
            path += "?session_id=" + (
                quote(value) if isinstance(query, str) else value.decode("latin-1")
            )
        sent = raw_request(
            method.encode(),
            path.encode("latin-1"),
            headers,
            request["body"] if method == "POST" else b"",
            host=b"127.0.0.1" if host is None else wire(host),
        )
        answer = await exchange(self.client.server.port, sent)
        assert answer.status < 500, answer
        if answer.status >= 400:
            assert_raw_rpc_error(answer)
        if target == "DELETE /mcp" and answer.status == 200:
            self.session = await initialize(self.client)
        elif target == "GET /sse" and answer.status == 200 and query == SESSION_ALIAS:
            # That stream took the session over and closed it as it ended.
            await self.open_sse()


def fuzzed(target: str, **headers: str) -> dict[str, Any]:
    """A request of the property test's shape: the open session, these headers."""
    return {
        "target": target,
        "body": b"",
        "headers": {"Accept": "text/event-stream", SESSION: SESSION_ALIAS, **headers},
        "query_session": None,
    }


def test_random_requests_never_get_a_5xx_a_bare_error_or_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with asyncio.Runner() as runner:

        async def start() -> TestClient:
            client = TestClient(GatewayTestServer(Settings(log_url=log_url(tmp_path))))
            await client.start_server()
            return client

        client = runner.run(start())
        fuzzer = Fuzzer(client)
        try:
            runner.run(fuzzer.start())

            @hypothesis_settings(
                max_examples=400,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(request=requests)
            # Inputs that once got a 5xx, always tried.
            @example(request=fuzzed("GET /mcp", **{"Last-Event-ID": "²"}))
            @example(request=fuzzed("GET /sse", **{"Last-Event-ID": "²"}))
            @example(request=fuzzed("GET /mcp", Host="["))
            @example(request=fuzzed("POST /mcp", Origin="http://[::1"))
            def send(request: dict[str, Any]) -> None:
                caplog.clear()
                runner.run(fuzzer.send(request))
                assert_no_traceback(caplog)

            send()

            async def still_serving() -> None:
                async with client.get("/healthz") as response:
                    assert response.status == 200
                await initialize(client)

            runner.run(still_serving())
        finally:
            fuzzer.close()
            runner.run(client.close())
