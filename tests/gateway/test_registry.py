"""SessionRegistry: the reference's API and semantics, on the log (one process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from eventlog import (
    ClientMessage,
    MessageHandled,
    OwnerReleased,
    ServerMessage,
    SessionClosed,
    WorkerStopped,
    open_log,
)
from gateway import HandlerContext, SessionNotFound, SessionRegistry
from gateway.held_streams import OUTBOX_LIMIT
from gateway.protocol.errors import ProtocolError
from gateway.reading import load_consistent, timeline
from gateway.settings import Settings
from gateway.testing.servers import RedisServer
from projections import SNAPSHOT_NAME, SentMessage
from tests.gateway.helpers import (
    HANG_GUARD,
    FakeClock,
    RecordingTransport,
    request,
    wait_for_record,
)


@pytest.fixture
async def registry() -> AsyncIterator[SessionRegistry]:
    registry = SessionRegistry()
    await registry.initialize()
    yield registry
    await registry.shutdown()


def test_constructor_keeps_the_reference_errors() -> None:
    with pytest.raises(ValueError, match="Invalid backend: carrier-pigeon"):
        SessionRegistry(backend="carrier-pigeon")
    with pytest.raises(ValueError, match="Redis backend requires redis_url"):
        SessionRegistry(backend="redis")
    with pytest.raises(ValueError, match="Database backend requires database_url"):
        SessionRegistry(backend="database")
    assert SessionRegistry(backend="MEMORY")._backend == "memory"
    assert SessionRegistry().settings.session_ttl == 3600
    assert SessionRegistry().settings.message_ttl == 600


async def test_none_backend_tracks_nothing() -> None:
    registry = SessionRegistry(backend="none")
    await registry.initialize()
    transport = RecordingTransport()
    await registry.add_session("s", transport)
    assert await registry.get_session("s") is None
    assert await registry.session_exists("s") is False
    assert await registry.claim_session_owner("s", "a@example.com") == "a@example.com"
    await registry.broadcast("s", request(1, "ping"))
    await registry.shutdown()


async def test_add_get_remove(registry: SessionRegistry) -> None:
    transport = RecordingTransport()
    await registry.add_session("s", transport)
    assert await registry.get_session("s") is transport
    assert registry.get_session_sync("s") is transport
    assert await registry.session_exists("s") is True
    assert await registry.get_all_session_ids() == ["s"]
    responding = asyncio.create_task(registry.respond(None, {}, "s"))
    await registry.remove_session("s")
    assert not transport.connected
    assert await registry.get_session("s") is None
    assert await registry.session_exists("s") is False
    assert await registry.get_all_session_ids() == []
    await asyncio.wait_for(responding, HANG_GUARD)  # respond() ends with its session
    history = await timeline(registry.runtime.log, "s")
    assert [type(r.event).__name__ for r in history] == [
        "SessionOpened",
        "OwnerClaimed",
        "OwnerReleased",
        "SessionClosed",
    ]
    assert history[-1].event.reason == "removed"  # type: ignore[union-attr]


async def test_a_shut_down_registry_does_not_start_again_by_itself() -> None:
    registry = SessionRegistry()
    await registry.initialize()
    await registry.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        await registry.add_session("s", RecordingTransport())
    await registry.initialize()  # unless asked to
    await registry.add_session("s", RecordingTransport())
    assert await registry.session_exists("s") is True
    await registry.shutdown()


async def test_broadcast_to_a_session_that_does_not_exist_fails(registry: SessionRegistry) -> None:
    with pytest.raises(SessionNotFound, match="nowhere"):
        await registry.broadcast("nowhere", request(1, "ping"))


async def test_every_broadcast_is_answered_in_order_even_before_respond(
    registry: SessionRegistry,
) -> None:
    transport = RecordingTransport()
    await registry.add_session("s", transport)
    # Two messages before anyone reads: the reference's memory backend keeps the last.
    await registry.broadcast("s", request(1, "initialize", protocolVersion="2025-06-18"))
    await registry.broadcast("s", request(2, "ping"))
    responding = asyncio.create_task(registry.respond(None, {}, "s"))
    await registry.broadcast("s", request(3, "tools/list"))
    await registry.broadcast("s", {"jsonrpc": "2.0", "method": "notifications/initialized"})
    sent = await transport.wait_for(3)
    assert [m["id"] for m in sent] == [1, 2, 3]
    assert sent[0]["result"]["protocolVersion"] == "2025-06-18"
    assert sent[0]["result"]["serverInfo"]["name"] == "sessionlog"
    assert sent[1] == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert sent[2]["error"]["code"] == -32601
    # The notification gets no reply; wait (on the log's tail) for it to be handled.
    log = registry.runtime.log
    notification = await wait_for_record(
        log,
        lambda r: isinstance(r.event, ClientMessage) and b"notifications/" in r.event.payload,
    )
    await wait_for_record(
        log,
        lambda r: (
            isinstance(r.event, MessageHandled) and r.event.message_id == notification.event.id
        ),
    )
    await registry.runtime.sync()
    session = registry.runtime.projection.session("s")
    assert session is not None
    assert session.pending == {}
    await registry.remove_session("s")
    await responding


async def test_a_handler_gets_each_message_once_with_its_context() -> None:
    seen: list[tuple[Any, HandlerContext]] = []

    async def handler(message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any] | None:
        seen.append((message["id"], ctx))
        if message["method"] == "boom":
            raise RuntimeError("upstream exploded")
        return {"jsonrpc": "2.0", "id": message["id"], "result": {"echo": message["params"]}}

    registry = SessionRegistry(handler=handler)
    await registry.initialize()
    transport = RecordingTransport()
    await registry.add_session("s", transport)
    responding = asyncio.create_task(registry.respond("srv", {"email": "a@example.com"}, "s"))
    await registry.broadcast("s", request(1, "tools/call", name="echo"))
    await registry.broadcast("s", request(2, "boom"))
    sent = await transport.wait_for(2)
    assert sent[0] == {"jsonrpc": "2.0", "id": 1, "result": {"echo": {"name": "echo"}}}
    assert sent[1]["error"]["code"] == -32603 and "exploded" in sent[1]["error"]["data"]
    assert [(i, c.session_id, c.server_id, c.user) for i, c in seen] == [
        (1, "s", "srv", {"email": "a@example.com"}),
        (2, "s", "srv", {"email": "a@example.com"}),
    ]
    records = await registry.runtime.log.read()
    replies = [r.event for r in records if isinstance(r.event, ServerMessage)]
    handled = [r.event for r in records if isinstance(r.event, MessageHandled)]
    assert len(replies) == 2 and len(handled) == 2
    await registry.shutdown()
    await asyncio.wait_for(responding, HANG_GUARD)


async def test_initialize_logic(registry: SessionRegistry) -> None:
    with pytest.raises(ProtocolError) as missing:
        await registry.handle_initialize_logic({"capabilities": {}})
    assert (missing.value.status, missing.value.code) == (400, -32002)
    await registry.add_session("s", RecordingTransport())
    body = {
        "protocol_version": "1999-01-01",
        "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "c", "version": "1"},
    }
    result = await registry.handle_initialize_logic(body, session_id="s")
    assert result["protocolVersion"] == "2025-11-25"  # we offer our newest instead
    assert await registry.get_client_capabilities("s") == {"elicitation": {}}
    assert await registry.has_elicitation_capability("s") is True
    assert await registry.get_elicitation_capable_sessions() == ["s"]
    session = registry.runtime.projection.session("s")
    assert session is not None and session.client_info == {"name": "c", "version": "1"}
    await registry.store_client_capabilities("s", {"roots": {}})
    assert await registry.has_elicitation_capability("s") is False
    # What the session speaks (the version agreed), kept from the initialize.
    assert session.protocol_version == "2025-11-25"
    # Through respond(), a missing version is a JSON-RPC error with the same code.
    transport = RecordingTransport()
    await registry.add_session("t", transport)
    responding = asyncio.create_task(registry.respond(None, {}, "t"))
    await registry.broadcast("t", request(7, "initialize"))
    (reply,) = await transport.wait_for(1)
    assert reply["error"] == {"code": -32002, "message": "initialize needs a protocolVersion"}
    await registry.remove_session("t")
    await responding


async def test_session_owner_is_compare_and_set(registry: SessionRegistry) -> None:
    await registry.add_session("s", RecordingTransport())
    assert await registry.get_session_owner("s") is None
    assert await registry.claim_session_owner("s", "alice@example.com") == "alice@example.com"
    assert await registry.claim_session_owner("s", "bob@example.com") == "alice@example.com"
    await registry.set_session_owner("s", "bob@example.com")
    assert await registry.get_session_owner("s") == "bob@example.com"
    await registry.set_session_owner("s", None)
    assert await registry.get_session_owner("s") is None
    assert await registry.claim_session_owner("s", "carol@example.com") == "carol@example.com"
    await registry.remove_session("s")
    assert await registry.get_session_owner("s") is None


async def test_unreachable_backend_gives_none_then_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    registry = SessionRegistry(backend="redis", redis_url=server.url)
    try:
        await registry.initialize(housekeeping=False)
        await registry.add_session("s", RecordingTransport())
        server.kill()
        assert await registry.session_exists("elsewhere") is None
        assert await registry.claim_session_owner("s", "a@example.com") is None
        assert await registry.get_session_owner("s") is None
        assert await registry.get_client_capabilities("s") is None
        server.start()
        assert await registry.session_exists("s") is True
        assert await registry.claim_session_owner("s", "a@example.com") == "a@example.com"
    finally:
        await registry.shutdown()
        server.stop()


async def test_workers_start_from_the_newest_snapshot(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    first = SessionRegistry(log_url=url, settings=Settings(snapshot_every=10))
    await first.initialize(housekeeping=False)
    for i in range(8):
        await first.add_session(f"s{i}", RecordingTransport())
    await first.runtime.sync()
    for _ in range(100):  # the tail saves the snapshot as it passes position 10
        if await first.runtime.log.load_snapshot(SNAPSHOT_NAME):
            break
        await asyncio.sleep(0.01)
    log = await open_log(url)
    try:
        restored = (await load_consistent(log)).projection
        assert restored.position >= 10
        second = SessionRegistry(log_url=url)
        await second.initialize(housekeeping=False)
        assert second.runtime.projection.state.sessions == first.runtime.projection.state.sessions
        assert await second.session_exists("s7") is True
        await second.shutdown()
    finally:
        await log.close()
        await first.shutdown()


async def test_idle_sessions_expire_once_across_workers(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path}/log.db"
    workers = [
        SessionRegistry(log_url=url, clock=clock, session_ttl=100, message_ttl=50) for _ in range(3)
    ]
    for worker in workers:
        await worker.initialize(housekeeping=False)
    held, orphan = RecordingTransport(), RecordingTransport()
    await workers[0].add_session("held", held)
    await workers[1].add_session("orphan", orphan)
    await workers[1].broadcast("orphan", request(1, "ping"))
    # Worker 1 leaves: its session stays open, with nobody holding its stream.
    await workers[1].runtime.log.release("orphan", workers[1].worker_id)
    clock.advance(60)
    for worker in workers:
        await worker.runtime.housekeeping.heartbeat()
    await asyncio.gather(*(worker.runtime.housekeeping.sweep() for worker in workers))
    assert await workers[2].session_exists("orphan") is True  # idle 60 s < 100 s
    clock.advance(60)
    for worker in workers:
        await worker.runtime.housekeeping.heartbeat()
    await asyncio.gather(*(worker.runtime.housekeeping.sweep() for worker in workers))
    assert await workers[2].session_exists("orphan") is False
    assert await workers[2].session_exists("held") is True  # a live worker holds it
    records = await workers[2].runtime.log.read(limit=10_000)
    closes = [r.event for r in records if isinstance(r.event, SessionClosed)]
    outcomes = [r.event for r in records if isinstance(r.event, MessageHandled)]
    assert [(c.session_id, c.reason) for c in closes] == [("orphan", "expired")]
    assert [(o.message_id, o.outcome) for o in outcomes] == [
        (
            records[[type(r.event).__name__ for r in records].index("ClientMessage")].event.id,
            "expired",
        )
    ]
    for worker in workers:
        await worker.shutdown()


async def test_a_dead_workers_session_is_taken_over_and_its_messages_answered_once(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path}/log.db"
    dead = SessionRegistry(log_url=url, clock=clock, worker_id="dead")
    await dead.initialize(housekeeping=False)
    await dead.add_session("s", RecordingTransport())
    await dead.broadcast("s", request(1, "ping"))
    await dead.broadcast("s", request(2, "ping"))
    # It dies: no WorkerStopped, no release, its transport gone with it.
    await dead.runtime.log.close()
    clock.advance(60)
    heir = SessionRegistry(log_url=url, clock=clock, worker_id="heir")
    await heir.initialize(housekeeping=False)
    assert heir.runtime.projection.is_alive("dead", clock(), heir.settings.worker_ttl) is False
    transport = RecordingTransport()
    await heir.add_session("s", transport)  # the client reconnected here
    assert await heir.runtime.log.claim("s", "someone", expected="dead") == "heir"
    responding = asyncio.create_task(heir.respond(None, {}, "s"))
    sent = await transport.wait_for(2)
    assert [m["id"] for m in sent] == [1, 2]
    # Sweeping queues pending messages again; none is answered twice.
    await heir.runtime.housekeeping.sweep()
    await heir.runtime.sync()
    records = await heir.runtime.log.read(limit=10_000)
    assert len([r for r in records if isinstance(r.event, ServerMessage)]) == 2
    await heir.shutdown()
    await asyncio.wait_for(responding, HANG_GUARD)


async def test_sessions_cost_no_tasks_and_workers_announce_themselves() -> None:
    registry = SessionRegistry(worker_id="w")
    await registry.initialize()
    tasks_before = len(asyncio.all_tasks())
    for i in range(50):
        await registry.add_session(f"s{i}", RecordingTransport())
    assert len(asyncio.all_tasks()) == tasks_before  # one tail serves them all
    await registry.runtime.housekeeping.heartbeat()
    log = registry.runtime.log
    await registry.shutdown()
    # A closed memory log can still be read: what the worker wrote, start to stop.
    kinds = [type(r.event).__name__ for r in await log.read(limit=1_000) if r.worker == "w"]
    assert kinds[0] == "WorkerStarted" and kinds[-1] == "WorkerStopped"
    assert "WorkerHeartbeat" in kinds


async def test_a_message_appended_here_goes_out_once_durable_and_in_log_order(
    registry: SessionRegistry,
) -> None:
    transport = RecordingTransport()
    await registry.add_session("s", transport)
    runtime = registry.runtime
    await runtime.sync()
    head, now = runtime.projection.position, runtime.clock()

    def message(method: str) -> bytes:
        return b'{"jsonrpc":"2.0","method":"%s"}' % method.encode()

    # Everything before it folded: it goes out at once, before the log even holds it.
    runtime.streams.send_appended("s", SentMessage(head + 1, message("a"), None), head + 1, now)
    assert (await transport.wait_for(1))[0]["method"] == "a"
    # A record before its batch is not folded yet: the tail sends it, after that one.
    runtime.streams.send_appended("s", SentMessage(head + 3, message("c"), None), head + 3, now)
    events = [ServerMessage(session_id="s", payload=message(m)) for m in "abc"]
    await runtime.log.append(events, worker="elsewhere")
    sent = await transport.wait_for(3)
    await runtime.sync()
    assert [m["method"] for m in sent] == ["a", "b", "c"]  # "a" once: the tail skips it


async def test_an_http_sse_post_on_the_holder_is_answered_in_one_append(
    registry: SessionRegistry,
) -> None:
    transport = RecordingTransport()
    await registry.add_session("s", transport)
    runtime = registry.runtime
    context = HandlerContext("s", None, {})
    responder = asyncio.create_task(runtime.answers.respond("s", context))
    await runtime.sync()
    commits = runtime.log.stats.commits
    ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
    await runtime.answers.receive("s", b'{"jsonrpc":"2.0","id":7,"method":"ping"}', ping)
    assert runtime.log.stats.commits == commits + 1  # message, reply and outcome together
    assert (await transport.wait_for(1)) == [{"jsonrpc": "2.0", "id": 7, "result": {}}]
    responder.cancel()


class StuckTransport(RecordingTransport):
    """A client that stops reading: every send waits forever."""

    async def send_message(self, message: dict[str, Any]) -> None:
        await asyncio.Event().wait()


async def test_a_client_that_does_not_read_loses_its_stream_not_the_memory(
    registry: SessionRegistry,
) -> None:
    transport = StuckTransport()
    await registry.add_session("s", transport)
    runtime = registry.runtime
    events = [
        ServerMessage(session_id="s", payload=b'{"jsonrpc":"2.0","method":"n"}')
        for _ in range(OUTBOX_LIMIT + 2)  # one more than fits, besides the one being sent
    ]
    await runtime.log.append(events, worker="elsewhere")
    await transport.wait_disconnected()
    released = await wait_for_record(
        runtime.log, lambda r: isinstance(r.event, OwnerReleased) and r.event.reason is not None
    )
    assert released.event.reason == "slow_client"  # type: ignore[union-attr]
    assert registry.get_session_sync("s") is None
    assert await registry.session_exists("s") is True  # resumable: only the stream ended


async def test_stopping_a_worker_releases_its_streams_with_a_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    registry = SessionRegistry(log_url=url)
    await registry.initialize()
    transports = [RecordingTransport(), RecordingTransport()]
    for number, transport in enumerate(transports):
        await registry.add_session(f"s{number}", transport)
    await registry.shutdown()
    assert not any(transport.connected for transport in transports)
    async with await open_log(url) as log:
        records = await log.read(0, 1000)
    released = {
        r.event.session_id: r.event.reason for r in records if isinstance(r.event, OwnerReleased)
    }
    assert released == {"s0": "worker_stopped", "s1": "worker_stopped"}
    assert isinstance(records[-1].event, WorkerStopped)
    # Still open: a client may resume its session on another worker.
    assert not any(isinstance(r.event, SessionClosed) for r in records)


async def test_the_registry_never_records_capabilities_it_cannot_read_back(
    tmp_path: Path,
) -> None:
    # The same input through the registry's own API (the reference's, which other
    # HTTP front ends call): an initialize whose clientInfo is not an object.
    registry = SessionRegistry(log_url=f"sqlite:///{tmp_path}/log.db")
    await registry.initialize(housekeeping=False)
    try:
        body = {"protocolVersion": "2025-11-25", "clientInfo": "t", "capabilities": ["x"]}
        with contextlib.suppress(ProtocolError):
            await registry.handle_initialize_logic(body, "s1")
    finally:
        await registry.shutdown()
    log = await open_log(f"sqlite:///{tmp_path}/log.db")
    try:
        await log.read(0, 100_000)
        assert log.stats.undecodable == 0
    finally:
        await log.close()
