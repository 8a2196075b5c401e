"""Caps that keep one client from taking what others need: open sessions per identity
(beside the global cap), streams per identity or, anonymous, per peer address, and
the bytes of client messages a session may have waiting for answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from eventlog import MessageHandled, SessionOpened
from gateway import SessionRegistry
from gateway.answering import PENDING_ENTRY_BYTES
from gateway.app import build_app
from gateway.protocol import ProtocolError
from gateway.settings import Settings
from tests.gateway.test_auth import SECRET, bearer, claims, hs256
from tests.gateway.test_http_input import (
    INVALID_REQUEST,
    JSON_HEADERS,
    SESSION,
    assert_rpc_error,
    initialize,
    initialize_body,
    log_url,
    read_event,
    serving,
)

HANG_GUARD = 10.0


def as_user(name: str) -> dict[str, str]:
    return bearer(hs256(claims(name)))


async def test_one_identity_at_its_session_cap_gets_429_while_others_open_sessions(
    tmp_path: Path,
) -> None:
    settings = Settings(log_url=log_url(tmp_path), jwt_secret=SECRET, max_sessions_per_identity=2)
    async with serving(settings) as client:
        alice = [await initialize(client, as_user("alice")) for _ in range(2)]
        headers = {**JSON_HEADERS, **as_user("alice")}
        async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
            await assert_rpc_error(response, 429, INVALID_REQUEST)
            assert int(response.headers["Retry-After"]) > 0
            assert "per identity" in (await response.json())["error"]["message"]
        async with client.get("/sse", headers=as_user("alice")) as response:
            await assert_rpc_error(response, 429, INVALID_REQUEST)
        # Another identity is not locked out by alice's sessions.
        await initialize(client, as_user("bob"))
        async with client.get("/sse", headers=as_user("bob")) as stream:
            assert stream.status == 200
            assert (await read_event(stream))["event"] == "endpoint"
        # A session alice ends frees its place, on the same fold every worker makes.
        delete = {**JSON_HEADERS, **as_user("alice"), SESSION: alice[0]}
        async with client.delete("/mcp", headers=delete) as response:
            assert response.status == 200
        await initialize(client, as_user("alice"))


async def test_the_global_cap_still_holds_beside_the_per_identity_one(tmp_path: Path) -> None:
    settings = Settings(
        log_url=log_url(tmp_path),
        jwt_secret=SECRET,
        max_sessions=2,
        max_sessions_per_identity=5,
    )
    async with serving(settings) as client:
        await initialize(client, as_user("alice"))
        await initialize(client, as_user("bob"))
        headers = {**JSON_HEADERS, **as_user("carol")}
        async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
            await assert_rpc_error(response, 503)


async def test_anonymous_streams_are_counted_per_peer_address_not_forwarded_for(
    tmp_path: Path,
) -> None:
    """With auth off, the stream cap is per TCP peer: one client holding its streams
    does not lock out a client from another address, and a forged X-Forwarded-For
    does not get around it."""
    settings = Settings(log_url=log_url(tmp_path), max_streams_per_identity=1)
    server = TestServer(build_app(settings), host="127.0.0.1")
    async with TestClient(server) as first_peer:
        other_address = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=other_address) as second_peer:
            async with first_peer.get("/sse") as held:
                assert (await read_event(held))["event"] == "endpoint"
                forged = {"X-Forwarded-For": "203.0.113.9"}
                async with first_peer.get("/sse", headers=forged) as response:
                    await assert_rpc_error(response, 429)
                async with second_peer.get(server.make_url("/sse")) as other:
                    assert other.status == 200
                    assert (await read_event(other))["event"] == "endpoint"


async def test_pending_bytes_past_the_budget_are_refused_alike_on_every_worker(
    tmp_path: Path,
) -> None:
    """Nobody answers the session here (no stream is held), so its messages wait;
    past the byte budget both workers refuse the next one, from the same folded
    sizes, and once one is answered there is room again."""
    message = b'{"jsonrpc":"2.0","method":"notifications/x","params":{"p":"%s"}}' % (b"x" * 900)
    # Room for three: each counts its bytes and what the fold keeps of it.
    settings = Settings(pending_bytes_per_session=3 * (len(message) + PENDING_ENTRY_BYTES))
    url = log_url(tmp_path)
    first = SessionRegistry(log_url=url, worker_id="w1", settings=settings)
    second = SessionRegistry(log_url=url, worker_id="w2", settings=settings)
    await first.initialize(housekeeping=False)
    await second.initialize(housekeeping=False)
    try:
        runtime = first.runtime
        session_id = "s"
        opened = SessionOpened(session_id=session_id, transport="sse")
        await runtime.log.append([opened], worker="w1")
        await first.broadcast(session_id, message)
        await second.broadcast(session_id, message)
        await first.broadcast(session_id, message)
        for registry in (first, second):
            await registry.runtime.sync()
            with pytest.raises(ProtocolError) as refused:
                await registry.broadcast(session_id, message)
            assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        session = second.runtime.projection.session(session_id)
        assert session is not None and session.pending_bytes == 3 * len(message)
        oldest = next(iter(session.pending))
        handled = MessageHandled(session_id=session_id, message_id=oldest)
        await runtime.log.append([handled], worker="w1")
        await second.runtime.sync()
        await second.broadcast(session_id, message)
    finally:
        await asyncio.gather(first.shutdown(), second.shutdown())
