"""HTTP+SSE transport: two `sessionlog serve` processes as one gateway; bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.testing.serving import serve

# Guards against hangs only.
HANG_GUARD = 30.0


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs from a text/event-stream response; comments skipped."""
    event, data = "message", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def test_a_message_posted_to_one_worker_is_answered_on_the_others_stream(
    shared_log_url: str,
) -> None:
    with serve(shared_log_url) as worker_a, serve(shared_log_url) as worker_b:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{worker_a}/sse") as stream:
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                events = sse_events(stream)
                event, endpoint = await asyncio.wait_for(anext(events), HANG_GUARD)
                assert event == "endpoint" and endpoint.startswith("/messages/?session_id=")
                ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
                async with http.post(f"{worker_b}{endpoint}", json=ping) as posted:
                    assert posted.status == 202
                event, data = await asyncio.wait_for(anext(events), HANG_GUARD)
                assert event == "message"
                assert orjson.loads(data) == {"jsonrpc": "2.0", "id": 7, "result": {}}


@pytest.mark.parametrize(
    ("query", "body", "status", "code"),
    [
        ("", b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 400, -32600),
        ("?session_id=feed", b"{not json", 400, -32700),
        ("?session_id=feed", b'{"id":1,"method":"ping"}', 400, -32600),
        ("?session_id=feed", b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', 400, -32600),
        ("?session_id=feed", b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 404, -32600),
    ],
)
async def test_bad_posts_get_a_status_and_a_json_rpc_error(
    tmp_path: Path, query: str, body: bytes, status: int, code: int
) -> None:
    with serve(f"sqlite:///{tmp_path}/log.db") as base:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/messages/{query}", data=body) as response:
                assert response.status == status
                answer = await response.json(content_type=None)
                assert answer["jsonrpc"] == "2.0" and answer["error"]["code"] == code
            async with http.post(f"{base}/messages/?session_id=x", data=b"x" * 5_000_000) as big:
                assert big.status == 413
