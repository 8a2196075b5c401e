"""Kill -9 the gateway process holding a client's stream: the client resumes on
another process with Last-Event-ID, gets every server message after it exactly
once, and its accepted but unanswered messages are answered there. Real processes
on every shared log backend."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.protocol.sse_codec import SSEEvent, SSEParser
from gateway.testing.sdk_server import start_sdk_server, stop_sdk_server
from gateway.testing.serving import serve, serve_process

# Guards against hangs only.
HANG_GUARD = 30.0
# Short heartbeats: a killed worker counts as dead 0.6 s after its last one.
FAST_HEARTBEATS = {"SESSIONLOG_HEARTBEAT_INTERVAL": "0.2"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "takeover-test", "version": "0"},
    },
}


def tool_call(request_id: int, name: str, **arguments: Any) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent | str]:
    """A response's SSE events; a priming event (an id, no data) as its id string."""
    parser = SSEParser()
    seen = parser.last_event_id
    async for chunk in response.content.iter_any():
        for event in parser.feed(chunk):
            seen = event.id
            yield event
        if parser.last_event_id != seen:  # an id with no data: a priming event
            seen = parser.last_event_id
            assert seen is not None
            yield seen


async def next_event(stream: AsyncIterator[SSEEvent | str]) -> Any:
    return await asyncio.wait_for(anext(stream), HANG_GUARD)


async def test_http_sse_stream_resumes_on_another_worker(shared_log_url: str) -> None:
    with (
        serve_process(shared_log_url, env=FAST_HEARTBEATS) as a,
        serve(shared_log_url, env=FAST_HEARTBEATS) as b,
    ):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{a.url}/sse") as stream:
                received = events(stream)
                endpoint = await next_event(received)
                assert endpoint.event == "endpoint"
                for request_id in (1, 2):
                    ping = {"jsonrpc": "2.0", "id": request_id, "method": "ping"}
                    async with http.post(f"{b}{endpoint.data}", json=ping) as posted:
                        assert posted.status == 202
                first, second = await next_event(received), await next_event(received)
                assert [orjson.loads(e.data)["id"] for e in (first, second)] == [1, 2]
                a.process.send_signal(signal.SIGKILL)
                a.process.wait()
            # Accepted while no worker holds the stream: answered once one does.
            call = tool_call(3, "echo", text="after the kill")
            async with http.post(f"{b}{endpoint.data}", json=call) as posted:
                assert posted.status == 202
            # The client saw the first reply only, say: it resumes after that one.
            resume = {"Last-Event-ID": first.id}
            resumed_url = f"{b}{endpoint.data.replace('/messages/', '/sse')}"
            async with http.get(resumed_url, headers=resume) as stream:
                assert stream.status == 200
                received = events(stream)
                assert (await next_event(received)).event == "endpoint"
                replayed, answered = await next_event(received), await next_event(received)
    assert replayed.id == second.id and orjson.loads(replayed.data)["id"] == 2
    reply = orjson.loads(answered.data)
    assert reply["id"] == 3 and reply["result"]["content"][0]["text"] == "after the kill"
    assert int(first.id) < int(replayed.id) < int(answered.id)


@pytest.fixture(scope="module")
def gated_upstream() -> Any:
    process, url = start_sdk_server(json_response=False)
    yield url
    stop_sdk_server(process)


async def test_a_request_in_flight_on_a_killed_worker_is_answered_by_another(
    shared_log_url: str, gated_upstream: str
) -> None:
    args = ("--upstream", gated_upstream)
    with (
        serve_process(shared_log_url, *args, env=FAST_HEARTBEATS) as a,
        serve(shared_log_url, *args, env=FAST_HEARTBEATS) as b,
    ):
        async with aiohttp.ClientSession(headers=MCP_HEADERS) as http:
            async with http.post(f"{a.url}/mcp", json=INITIALIZE) as opened:
                assert opened.status == 200
                session_id = opened.headers["Mcp-Session-Id"]
                received = events(opened)
                await next_event(received)  # priming
                assert "result" in orjson.loads((await next_event(received)).data)
            headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            async with http.post(f"{a.url}/mcp", json=initialized, headers=headers) as posted:
                assert posted.status == 202
            # The upstream holds the first call with this key until its caller is gone.
            call = tool_call(7, "gate", key=session_id)
            async with http.post(f"{a.url}/mcp", json=call, headers=headers) as in_flight:
                received = events(in_flight)
                assert isinstance(await next_event(received), str)  # priming
                gated = await next_event(received)  # the upstream has the call
                assert orjson.loads(gated.data)["params"]["data"] == f"gated {session_id}"
                a.process.send_signal(signal.SIGKILL)
                a.process.wait()
            # The SDK client's move: resume the request's stream, on another worker.
            resume = {**headers, "Last-Event-ID": gated.id}
            async with http.get(f"{b}/mcp", headers=resume) as resumed:
                assert resumed.status == 200
                answers = [e async for e in events(resumed) if not isinstance(e, str)]
    assert len(answers) == 1  # the stream ends after the answer, and it comes once
    reply = orjson.loads(answers[0].data)
    assert reply["id"] == 7, reply
    assert reply["result"]["content"][0]["text"] == f"released {session_id}", reply


async def test_a_request_whose_client_went_away_is_answered_for_its_resume(
    tmp_path: Path, gated_upstream: str
) -> None:
    log_url, args = f"sqlite:///{tmp_path}/log.db", ("--upstream", gated_upstream)
    with serve(log_url, *args) as a, serve(log_url, *args) as b:
        async with aiohttp.ClientSession(headers=MCP_HEADERS) as http:
            async with http.post(f"{a}/mcp", json=INITIALIZE) as opened:
                session_id = opened.headers["Mcp-Session-Id"]
                await opened.read()
            headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
            call = tool_call(8, "gate", key=session_id)
            async with http.post(f"{a}/mcp", json=call, headers=headers) as in_flight:
                received = events(in_flight)
                await next_event(received)  # priming
                gated = await next_event(received)
                in_flight.close()  # the client goes away, mid-request
            # Another call opens the gate: the first call's answer comes back to a
            # gateway whose client is gone, and is recorded all the same.
            release = {**call, "id": 9}
            async with http.post(f"{b}/mcp", json=release, headers=headers) as released:
                assert released.status == 200
                await released.read()
            resume = {**headers, "Last-Event-ID": gated.id}
            async with http.get(f"{b}/mcp", headers=resume) as resumed, asyncio.timeout(HANG_GUARD):
                answers = [e async for e in events(resumed) if not isinstance(e, str)]
    [answer] = [orjson.loads(e.data) for e in answers]
    assert answer["id"] == 8
    assert answer["result"]["content"][0]["text"] == f"opened {session_id}"
