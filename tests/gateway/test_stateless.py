"""Protocol 2026-07-28 through the gateway: stateless requests served beside the
handshake-era sessions on /mcp, recorded in the log with their caller, and
subscriptions/listen streams fed from the log across workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import mcp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from eventlog import (
    ChangePublished,
    OwnerClaimed,
    StatelessAnswer,
    StatelessRequest,
    WorkerStarted,
    open_log,
)
from gateway import tools
from gateway.protocol import (
    HEADER_MISMATCH,
    METHOD_NOT_FOUND,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from gateway.protocol.sse_codec import SSEEvent, SSEParser
from gateway.settings import Settings
from gateway.testing.sdk_server import start_sdk_server, stop_sdk_server
from gateway.testing.serving import serve_process
from gateway.upstream_changes import RELAY_KEY
from tests.gateway.helpers import HANG_GUARD
from tests.gateway.test_http_input import initialize, log_url, serving
from tests.gateway.test_upstream_fidelity import VersionedUpstream

MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
}
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
BOTH = "application/json, text/event-stream"
TOOLS_CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


def modern(method: str, request_id: Any = 1, **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": method,
        "params": {**params, "_meta": ENVELOPE},
    }


def headers(method: str, accept: str = BOTH, **more: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Accept": accept,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
        **more,
    }


async def call(
    client: TestClient | aiohttp.ClientSession,
    url: str,
    method: str,
    accept: str = BOTH,
    **params: Any,
) -> tuple[int, dict[str, Any]]:
    extra = {"Mcp-Name": params["name"]} if method == "tools/call" else {}
    async with asyncio.timeout(HANG_GUARD):
        async with client.post(
            url, json=modern(method, **params), headers=headers(method, accept, **extra)
        ) as response:
            if response.content_type == "text/event-stream":
                events = SSEParser().feed(await response.read())
                return response.status, orjson.loads(events[-1].data)
            assert response.content_type == "application/json"
            return response.status, await response.json()


# -- requests -----------------------------------------------------------------------------


async def test_server_discover_says_what_is_served(tmp_path: Path) -> None:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        status, reply = await call(client, "/mcp", "server/discover")
    assert status == 200, reply
    result = reply["result"]
    assert MODERN in result["supportedVersions"]
    assert result["capabilities"] == tools.MODERN_CAPABILITIES
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "sessionlog"
    assert (result["resultType"], result["cacheScope"], result["ttlMs"]) == (
        "complete",
        "private",
        0,
    )


@pytest.mark.parametrize("accept", [BOTH, "application/json", "text/event-stream"])
async def test_built_in_tools_answer_as_json_or_one_event(tmp_path: Path, accept: str) -> None:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        status, listed = await call(client, "/mcp", "tools/list", accept)
        assert status == 200 and [t["name"] for t in listed["result"]["tools"]] == ["echo"]
        assert listed["result"]["resultType"] == "complete"
        status, echoed = await call(
            client, "/mcp", "tools/call", accept, name="echo", arguments={"text": "hi"}
        )
        assert status == 200
        assert echoed["result"]["content"] == [{"type": "text", "text": "hi"}]
        assert echoed["result"]["resultType"] == "complete"


async def test_an_unknown_method_is_404_with_the_request_id(tmp_path: Path) -> None:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        status, reply = await call(client, "/mcp", "ping")  # not a 2026 method
    assert (status, reply["id"], reply["error"]["code"]) == (404, 1, METHOD_NOT_FOUND)


async def test_the_ladder_refuses_over_http_with_status_and_error(tmp_path: Path) -> None:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        body = modern("tools/call", name="echo", arguments={"text": "x"})
        wrong_name = headers("tools/call", **{"Mcp-Name": "other"})
        async with client.post("/mcp", json=body, headers=wrong_name) as response:
            reply = await response.json()
            assert (response.status, reply["error"]["code"]) == (400, HEADER_MISMATCH)
        future = {**headers("tools/list"), "MCP-Protocol-Version": "2099-01-01"}
        body = modern("tools/list")
        body["params"]["_meta"] = {
            **ENVELOPE,
            "io.modelcontextprotocol/protocolVersion": "2099-01-01",
        }
        async with client.post("/mcp", json=body, headers=future) as response:
            reply = await response.json()
            assert (response.status, reply["error"]["code"]) == (400, UNSUPPORTED_PROTOCOL_VERSION)
            assert reply["error"]["data"]["requested"] == "2099-01-01"
            assert MODERN in reply["error"]["data"]["supported"]


async def test_a_notification_is_acknowledged(tmp_path: Path) -> None:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        notification = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}}
        async with client.post(
            "/mcp", json=notification, headers=headers("notifications/cancelled")
        ) as response:
            assert response.status == 202


async def test_both_eras_are_served_side_by_side(tmp_path: Path) -> None:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        assert (await call(client, "/mcp", "tools/list"))[0] == 200
        session_id = await initialize(client)
        assert (await call(client, "/mcp", "tools/list"))[0] == 200
    assert len(session_id) == 32


async def test_every_request_and_answer_is_recorded_with_its_caller(tmp_path: Path) -> None:
    sent = b'{"jsonrpc":"2.0", "id":"x1", "method":"tools/call",  "params":{"name":"echo",' + (
        b'"arguments":{"text":"recorded"},"_meta":' + orjson.dumps(ENVELOPE) + b"}}"
    )
    settings = Settings(log_url=log_url(tmp_path), auth_token="s3cret")
    async with serving(settings) as client:
        auth = {"Authorization": "Bearer s3cret", "Mcp-Name": "echo"}
        async with client.post(
            "/mcp", data=sent, headers=headers("tools/call", **auth)
        ) as response:
            answered = await response.read()
            assert response.status == 200
    log = await open_log(log_url(tmp_path))
    try:
        found = [r.event for r in await log.read(after=0, limit=1000)]
    finally:
        await log.close()
    requests = [e for e in found if isinstance(e, StatelessRequest)]
    answers = [e for e in found if isinstance(e, StatelessAnswer)]
    assert [(e.user, e.payload) for e in requests] == [("token", sent)]
    assert [(e.request, e.payload, e.final) for e in answers] == [(requests[0].id, answered, True)]
    assert b"s3cret" not in b"".join(e.payload for e in [*requests, *answers])


async def test_an_unreachable_upstream_is_a_502(tmp_path: Path) -> None:
    settings = Settings(log_url=log_url(tmp_path), upstream="http://127.0.0.1:9/mcp")
    async with serving(settings) as client:
        status, reply = await call(client, "/mcp", "tools/list")
    assert (status, reply["id"], reply["error"]["code"]) == (502, None, -32603)
    assert "upstream unavailable" in reply["error"]["message"]


async def test_an_older_upstream_is_bridged_one_session_a_request(tmp_path: Path) -> None:
    """An upstream that speaks only the handshake versions: the SDK's default client
    still speaks 2026-07-28 through the gateway; each request gets an upstream session
    of its own, ended after its answer; discover comes from the upstream's initialize."""
    upstream = VersionedUpstream("2025-06-18")
    async with upstream.serving() as url:
        with serve_process(f"sqlite:///{tmp_path}/log.db", "--upstream", url) as gateway:
            async with mcp.Client(f"{gateway.url}/mcp", read_timeout_seconds=10) as client:
                assert client.protocol_version == MODERN
                assert client.server_info is not None and client.server_info.name == "versioned"
                assert (await client.list_tools()).tools == []
            async with aiohttp.ClientSession() as http:
                status, discovered = await call(http, f"{gateway.url}/mcp", "server/discover")
    assert status == 200
    result = discovered["result"]
    assert MODERN in result["supportedVersions"] and "2025-06-18" in result["supportedVersions"]
    assert result["capabilities"] == upstream.result["capabilities"]
    assert result["instructions"] == upstream.result["instructions"]
    initializes = [m for _, m in upstream.posts if m.get("method") == "initialize"]
    listed = [m for _, m in upstream.posts if m.get("method") == "tools/list"]
    assert len(listed) == 1
    # A session for each request (the probe's discover is not one), each ended.
    assert len(upstream.deleted) == len(initializes) >= 3
    # The upstream session each answer came from is on its record.
    log = await open_log(f"sqlite:///{tmp_path}/log.db")
    try:
        found = [r.event for r in await log.read(after=0, limit=10_000)]
    finally:
        await log.close()
    answered_in = {e.upstream_session for e in found if isinstance(e, StatelessAnswer)}
    assert answered_in == {VersionedUpstream.SESSION}


@pytest.fixture(scope="module")
def sdk_upstream() -> Iterator[str]:
    process, url = start_sdk_server(json_response=False)
    yield url
    stop_sdk_server(process)


async def test_a_modern_upstream_gets_the_requests_as_sent(
    tmp_path: Path, sdk_upstream: str
) -> None:
    """Through two gateways on one log, the SDK's default client speaks 2026-07-28
    with the SDK's server behind them: its tools, its answers, its progress; each
    request and answer recorded."""
    url = f"sqlite:///{tmp_path}/log.db"
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, text: str | None) -> None:
        progress.append(done)

    with (
        serve_process(url, "--upstream", sdk_upstream) as a,
        serve_process(url, "--upstream", sdk_upstream) as b,
    ):
        for base in (a.url, b.url):
            async with mcp.Client(f"{base}/mcp", read_timeout_seconds=10) as client:
                assert client.protocol_version == MODERN
                assert client.server_info is not None
                assert client.server_info.name == "upstream-test"
                names = [t.name for t in (await client.list_tools()).tools]
                assert names == ["echo", "chatty_echo", "touch_tools", "gate"]
                progress.clear()
                result = await client.call_tool(
                    "chatty_echo", {"text": base}, progress_callback=on_progress
                )
                assert (result.content[0].text, progress) == (base, [1.0])
        async with aiohttp.ClientSession() as http:
            status, discovered = await call(http, f"{a.url}/mcp", "server/discover")
    assert status == 200
    # The upstream's answer, listing the handshake versions too: a client may also
    # initialize a session through the gateway.
    assert discovered["result"]["supportedVersions"][0] == MODERN
    assert "2025-11-25" in discovered["result"]["supportedVersions"]
    log = await open_log(url)
    try:
        found = [r.event for r in await log.read(after=0, limit=10_000)]
    finally:
        await log.close()
    calls = [e for e in found if isinstance(e, StatelessRequest) and b"chatty_echo" in e.payload]
    notes = [e for e in found if isinstance(e, StatelessAnswer) and not e.final]
    assert len(calls) == 2 and {n.request for n in notes} == {c.id for c in calls}


async def test_the_sdk_client_speaks_2026_to_two_gateway_processes(tmp_path: Path) -> None:
    """The SDK's default client (mode auto) probes server/discover and stays on
    2026-07-28; its requests go to either of two gateways sharing one log."""
    url = f"sqlite:///{tmp_path}/log.db"
    with serve_process(url) as a, serve_process(url) as b:
        for base in (a.url, b.url):
            async with mcp.Client(f"{base}/mcp", read_timeout_seconds=10) as client:
                assert client.protocol_version == MODERN
                assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
                result = await client.call_tool("echo", {"text": base})
                assert (result.content[0].text, result.is_error) == (base, False)
                async with client.listen(tools_list_changed=True, prompts_list_changed=True) as sub:
                    # Prompts are not served, so their changes are not honored.
                    assert sub.honored.tools_list_changed is True
                    assert not sub.honored.prompts_list_changed


# -- subscriptions/listen -----------------------------------------------------------------


class Listener:
    """A raw subscriptions/listen stream: what a client that resumes would do."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.parser = SSEParser()
        self.pending: list[SSEEvent] = []

    async def next(self) -> tuple[str | None, dict[str, Any]]:
        async with asyncio.timeout(HANG_GUARD):
            while not self.pending:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("the listen stream ended")
                self.pending.extend(self.parser.feed(chunk))
        event = self.pending.pop(0)
        return event.id, orjson.loads(event.data)


@contextlib.asynccontextmanager
async def listening(
    session: aiohttp.ClientSession,
    url: str,
    request_id: str,
    after: str | None = None,
    **wanted: Any,
) -> AsyncIterator[Listener]:
    extra = {"Last-Event-ID": after} if after is not None else {}
    async with session.post(
        url,
        json=modern("subscriptions/listen", request_id, notifications=wanted),
        headers=headers("subscriptions/listen", **extra),
    ) as response:
        assert response.status == 200, await response.text()
        yield Listener(response)


async def publish(url: str, *notifications: dict[str, Any]) -> None:
    """Append changes to the log, as any worker that learnt of them would."""
    log = await open_log(url)
    try:
        events = [ChangePublished(payload=orjson.dumps(n)) for n in notifications]
        await log.append(events, worker="test-publisher")
    finally:
        await log.close()


def updated(uri: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}


async def test_listen_needs_an_event_stream(tmp_path: Path) -> None:
    async with serving(Settings(log_url=log_url(tmp_path))) as client:
        body = modern("subscriptions/listen", notifications={"toolsListChanged": True})
        async with client.post(
            "/mcp", json=body, headers=headers("subscriptions/listen", "application/json")
        ) as response:
            assert response.status == 406


async def test_changes_reach_listeners_on_every_worker_in_order(shared_log_url: str) -> None:
    with serve_process(shared_log_url) as a, serve_process(shared_log_url) as b:
        async with aiohttp.ClientSession() as http:
            async with (
                listening(http, f"{a.url}/mcp", "on-a", toolsListChanged=True) as on_a,
                listening(http, f"{b.url}/mcp", "on-b", toolsListChanged=True) as on_b,
            ):
                for listener, name in ((on_a, "on-a"), (on_b, "on-b")):
                    _, ack = await listener.next()
                    assert ack["method"] == "notifications/subscriptions/acknowledged"
                    assert ack["params"]["notifications"] == {"toolsListChanged": True}
                    assert ack["params"]["_meta"] == {SUBSCRIPTION_ID: name}
                # Not asked for (and not served): never sent.
                await publish(shared_log_url, updated("file:///a"), TOOLS_CHANGED, TOOLS_CHANGED)
                for listener, name in ((on_a, "on-a"), (on_b, "on-b")):
                    first_id, first = await listener.next()
                    second_id, second = await listener.next()
                    assert first["method"] == second["method"] == TOOLS_CHANGED["method"]
                    assert first["params"]["_meta"] == {SUBSCRIPTION_ID: name}
                    assert int(first_id or 0) < int(second_id or 0)


async def test_a_listener_resumes_on_another_worker_after_kill_9(tmp_path: Path) -> None:
    """Beyond the specification (a dropped listen stream is not resumable there):
    with Last-Event-ID, a listener misses nothing, whichever worker it reaches."""
    url = f"sqlite:///{tmp_path}/log.db"
    with serve_process(url) as a, serve_process(url) as b:
        async with aiohttp.ClientSession() as http:
            async with listening(http, f"{a.url}/mcp", "L", toolsListChanged=True) as on_a:
                await on_a.next()  # the acknowledgement
                await publish(url, TOOLS_CHANGED)
                seen, _ = await on_a.next()
                os.kill(a.process.pid, signal.SIGKILL)
                a.process.wait()
                # Published while the listener has no stream.
                await publish(url, TOOLS_CHANGED, TOOLS_CHANGED)
            async with listening(
                http, f"{b.url}/mcp", "L", after=seen, toolsListChanged=True
            ) as on_b:
                ack_id, ack = await on_b.next()
                assert ack["method"] == "notifications/subscriptions/acknowledged"
                assert ack_id == seen
                missed = [await on_b.next(), await on_b.next()]
                await publish(url, TOOLS_CHANGED)
                live = await on_b.next()
    ids = [int(event_id or 0) for event_id, _ in [*missed, live]]
    assert ids == sorted(ids) and ids[0] > int(seen or 0) and len(set(ids)) == 3


async def test_a_stopping_worker_ends_listen_streams_with_a_result(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with serve_process(url) as a:
        async with aiohttp.ClientSession() as http:
            async with listening(http, f"{a.url}/mcp", 7, toolsListChanged=True) as on_a:
                await on_a.next()
                a.process.terminate()
                _, final = await on_a.next()
    assert final == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: 7}},
    }


FAST_HEARTBEATS = {"SESSIONLOG_HEARTBEAT_INTERVAL": "0.2"}


async def relay_holder(url: str) -> int:
    """The pid of the gateway holding the upstream's listen stream (the log says)."""
    log = await open_log(url)
    try:
        found = await log.read(after=0, limit=10_000)
    finally:
        await log.close()
    pids = {r.worker: r.event.pid for r in found if isinstance(r.event, WorkerStarted)}
    claims = [
        r.event.owner
        for r in found
        if isinstance(r.event, OwnerClaimed) and r.event.session_id == RELAY_KEY
    ]
    return pids[claims[-1]]


async def head(url: str) -> int:
    log = await open_log(url)
    try:
        return await log.head()
    finally:
        await log.close()


async def changed_until_heard(
    client: mcp.Client, listeners: list[Listener], after: int = 0
) -> None:
    """Make the upstream announce a tools change until every listener hears one
    recorded after log position ``after``: a change announced while no relay holds
    the upstream's stream is missed (level triggers)."""
    for listener in listeners:
        heard = False
        while not heard:
            await client.call_tool("touch_tools", {})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    while not heard:
                        event_id, change = await listener.next()
                        assert change["method"] == TOOLS_CHANGED["method"], change
                        heard = int(event_id or 0) > after


async def test_the_upstreams_changes_reach_listeners_on_every_worker(
    tmp_path: Path, sdk_upstream: str
) -> None:
    """One gateway holds the upstream's listen stream and records its changes; the
    listeners on both gateways hear them; kill -9 that gateway and the other takes
    the relay over."""
    url = f"sqlite:///{tmp_path}/log.db"
    args = ("--upstream", sdk_upstream)
    with (
        serve_process(url, *args, env=FAST_HEARTBEATS) as a,
        serve_process(url, *args, env=FAST_HEARTBEATS) as b,
    ):
        async with aiohttp.ClientSession() as http:
            async with (
                listening(http, f"{a.url}/mcp", "on-a", toolsListChanged=True) as on_a,
                listening(http, f"{b.url}/mcp", "on-b", toolsListChanged=True) as on_b,
                mcp.Client(f"{a.url}/mcp", read_timeout_seconds=10) as client_a,
            ):
                for listener in (on_a, on_b):
                    _, ack = await listener.next()
                    assert ack["params"]["notifications"] == {"toolsListChanged": True}
                await changed_until_heard(client_a, [on_a, on_b])
                holder = await relay_holder(url)
                survivor, listener = (b, on_b) if holder == a.process.pid else (a, on_a)
                os.kill(holder, signal.SIGKILL)
                killed_at = await head(url)
                async with mcp.Client(f"{survivor.url}/mcp", read_timeout_seconds=10) as client:
                    await changed_until_heard(client, [listener], after=killed_at)
        assert await relay_holder(url) == survivor.process.pid
