from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog import (
    CapabilitiesRecorded,
    ClientMessage,
    Event,
    MemoryEventLog,
    MessageHandled,
    OwnerClaimed,
    OwnerReleased,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
)
from eventlog.base import StoredEvent
from gateway.reading import catch_up, state_at, timeline
from projections import (
    SERVER_HISTORY,
    ClosedSession,
    RegistryProjection,
    RegistryState,
    encode_snapshot,
    restore,
)

SESSIONS = ["s1", "s2", "s3"]
WORKERS = ["w1", "w2"]
MESSAGE_IDS = ["m1", "m2", "m3", "m4"]
# Short enough (the test clock moves 1 s a record) that the property tests forget
# closed sessions and silent workers as they go.
RETENTION = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


session_ids = st.sampled_from(SESSIONS)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        SessionOpened,
        session_id=session_ids,
        transport=st.just("sse"),
        user=st.sampled_from([None, "alice", "bob"]),
    ),
    st.builds(SessionClosed, session_id=session_ids, reason=st.sampled_from(["client", "expired"])),
    st.builds(
        OwnerClaimed,
        session_id=session_ids,
        owner=st.sampled_from([*WORKERS, "a@example.com"]),
        role=st.sampled_from(["worker", "user"]),
    ),
    st.builds(
        OwnerReleased,
        session_id=session_ids,
        owner=st.sampled_from([*WORKERS, "a@example.com"]),
        role=st.sampled_from(["worker", "user"]),
    ),
    st.builds(
        ClientMessage, id=st.sampled_from(MESSAGE_IDS), session_id=session_ids, payload=st.binary()
    ),
    st.builds(ServerMessage, session_id=session_ids, payload=st.binary()),
    st.builds(
        MessageHandled,
        session_id=session_ids,
        message_id=st.sampled_from(MESSAGE_IDS),
        outcome=st.sampled_from(["handled", "expired"]),
    ),
    st.builds(
        CapabilitiesRecorded,
        session_id=session_ids,
        protocol_version=st.just("2025-06-18"),
        capabilities=st.dictionaries(st.sampled_from(["elicitation", "roots"]), st.just({})),
    ),
    st.builds(WorkerStarted, host=st.just("h"), pid=st.integers(1, 10)),
    st.builds(WorkerHeartbeat),
    st.builds(WorkerStopped),
)
# A record a reader cannot decode, as a newer gateway might write.
UNKNOWN = msgspec.msgpack.encode({"type": "FromTheFuture", "id": "f"})
steps = st.lists(
    st.tuples(st.sampled_from(WORKERS), st.one_of(events, st.just(UNKNOWN))), max_size=60
)


async def write(steps: list[tuple[str, Event | bytes]]) -> MemoryEventLog:
    log = MemoryEventLog(clock=Clock())
    for worker, item in steps:
        if isinstance(item, bytes):
            log._store(log.clock(), worker, StoredEvent(f"raw{await log.head()}", None, item))
        else:
            await log.append([item], worker=worker)
    return log


async def fold(log: MemoryEventLog, until: int | None = None) -> RegistryProjection:
    projection = RegistryProjection(closed_retention=RETENTION)
    await catch_up(log, projection, until)
    return projection


def assert_consistent(state: RegistryState) -> None:
    """What the fold keeps alongside the sessions agrees with them."""
    for session in state.sessions.values():
        assert session.pending_bytes == sum(m.size for m in session.pending.values())
    users = [s.user for s in state.sessions.values() if s.user is not None]
    assert state.open_by_user == {user: users.count(user) for user in set(users)}


@given(steps=steps, data=st.data())
async def test_restore_then_apply_the_rest_equals_folding_everything(steps, data) -> None:
    log = await write(steps)
    head = await log.head()
    split = data.draw(st.integers(0, head))
    whole = await fold(log)
    partial = restore(encode_snapshot(await fold(log, split)), closed_retention=RETENTION)
    await catch_up(log, partial)
    assert partial.state == whole.state
    assert_consistent(whole.state)
    assert encode_snapshot(partial) == encode_snapshot(whole)
    assert whole.position == head  # undecodable records are stepped over, not stuck on


@given(steps=steps)
async def test_folding_twice_is_the_same_as_once(steps) -> None:
    log = await write(steps)
    projection = await fold(log)
    before = encode_snapshot(projection)
    for record in await log.read(limit=1_000):
        assert projection.apply(record) is False
    assert encode_snapshot(projection) == before


async def test_a_session_through_its_life() -> None:
    log = await write(
        [
            ("w1", WorkerStarted(host="h", pid=1)),
            ("w1", SessionOpened(session_id="s", transport="sse", user="u")),
            ("w1", OwnerClaimed(session_id="s", owner="w1")),
            ("w1", ClientMessage(id="m1", session_id="s", payload=b"{}")),
            ("w1", ClientMessage(id="m2", session_id="s", payload=b"[]")),
            ("w1", MessageHandled(session_id="s", message_id="m1")),
            ("w1", ServerMessage(session_id="s", payload=b'{"r":1}', reply_to="m1")),
            ("w2", OwnerClaimed(session_id="s", owner="w2", previous="w1")),
        ]
    )
    projection = await fold(log)
    session = projection.session("s")
    assert session is not None
    assert (session.holder, session.user, session.opened_by) == ("w2", "u", "w1")
    assert list(session.pending) == ["m2"]
    assert [(m.position, m.size) for m in session.pending.values()] == [(5, 2)]
    assert session.pending_bytes == 2
    assert [(m.position, m.size, m.reply_to) for m in session.sent] == [(7, 7, "m1")]
    assert projection.state.open_by_user == {"u": 1}
    assert session.last_activity == 1008.0  # the time of the newest record about it
    workers = projection.state.workers
    assert (workers["w1"].started_at, workers["w1"].last_seen) == (1001.0, 1007.0)
    assert projection.alive_workers(now=1010.0, ttl=5.0) == ["w1", "w2"]
    assert projection.alive_workers(now=1013.0, ttl=5.0) == ["w2"]
    await log.append([SessionClosed(session_id="s", reason="expired")], worker="w2")
    await catch_up(log, projection)
    assert projection.session("s") is None
    assert projection.state.closed == {"s": ClosedSession("expired", 1009.0)}
    assert projection.state.open_by_user == {}


async def test_server_history_is_bounded() -> None:
    log = await write(
        [("w", SessionOpened(session_id="s", transport="sse"))]
        + [("w", ServerMessage(session_id="s", payload=b"x")) for _ in range(SERVER_HISTORY + 5)]
    )
    sent = (await fold(log)).session("s").sent  # type: ignore[union-attr]
    assert len(sent) == SERVER_HISTORY
    assert sent[0].position == 7  # the oldest five made room


async def test_stopped_workers_are_not_alive() -> None:
    log = await write([("w1", WorkerStarted()), ("w1", WorkerStopped())])
    assert (await fold(log)).alive_workers(now=1003.0, ttl=60.0) == []


async def test_closed_sessions_and_silent_workers_are_forgotten_after_retention() -> None:
    """The window is measured in the records' own times (the test clock moves 1 s a
    record), so every worker folding the log forgets at the same record."""
    opened = [("w1", SessionOpened(session_id=f"s{i}", transport="sse")) for i in range(3)]
    closed = [("w1", SessionClosed(session_id=f"s{i}", reason="client")) for i in range(3)]
    log = await write([("w0", WorkerStarted()), *opened, *closed])  # at 1001 .. 1007
    projection = await fold(log)
    assert list(projection.state.closed) == ["s0", "s1", "s2"]  # closed at 1005, 1006, 1007
    assert "w0" in projection.state.workers
    # A heartbeat at 1016: s0 closed more than RETENTION before it, s1 not quite.
    for _ in range(9):
        await log.append([WorkerHeartbeat()], worker="w1")
    await catch_up(log, projection)
    assert list(projection.state.closed) == ["s1", "s2"]
    assert "w0" not in projection.state.workers  # last seen at 1001
    await log.append([WorkerHeartbeat()], worker="w1")
    await catch_up(log, projection)
    assert list(projection.state.closed) == ["s2"]


async def test_timeline_and_state_at() -> None:
    log = await write(
        [
            ("w1", SessionOpened(session_id="a", transport="sse")),
            ("w1", SessionOpened(session_id="b", transport="streamable-http")),
            ("w2", OwnerClaimed(session_id="a", owner="w2")),
            ("w1", SessionClosed(session_id="a", reason="client")),
        ]
    )
    records = await timeline(log, "a")
    assert [(r.position, type(r.event).__name__, r.worker) for r in records] == [
        (1, "SessionOpened", "w1"),
        (3, "OwnerClaimed", "w2"),
        (4, "SessionClosed", "w1"),
    ]
    assert await timeline(log, "missing") == []
    at_2 = await state_at(log, position=2)
    assert sorted(at_2.state.sessions) == ["a", "b"] and at_2.position == 2
    now = await state_at(log)
    assert sorted(now.state.sessions) == ["b"]
    # Times: the clock gave 1001.0, 1002.0, ... to positions 1, 2, ...
    by_time = await state_at(log, at=datetime.fromtimestamp(1003.5, UTC))
    assert by_time.position == 3 and by_time.session("a").holder == "w2"  # type: ignore[union-attr]
    before_all = await state_at(log, at=datetime.fromtimestamp(0, UTC))
    assert before_all.position == 0 and before_all.state.sessions == {}


# Busier logs than ``steps``: most records about sessions, so that a session is often
# opened, used and closed within one page.
busy_steps = st.lists(
    st.tuples(st.sampled_from(WORKERS), st.one_of(events, events, st.just(UNKNOWN))),
    min_size=5,
    max_size=80,
)


@settings(max_examples=300)
@given(steps=busy_steps, data=st.data())
async def test_folding_a_page_at_once_equals_folding_one_record_at_a_time(steps, data) -> None:
    """apply_all skips the work a later close in the same page drops; nothing else
    may differ, down to the order of every dict (the snapshot bytes)."""
    log = await write(steps)
    records = await log.read(limit=1_000)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=4)))
    one = RegistryProjection(closed_retention=RETENTION)
    paged = RegistryProjection(closed_retention=RETENTION)
    for record in records:
        one.apply(record)
    applied = 0
    for start, end in zip([0, *cuts], [*cuts, len(records)], strict=True):
        applied += paged.apply_all(records[start:end])
    assert applied == len(records)
    assert paged.apply_all(records) == 0  # already folded: nothing changes
    assert paged.state == one.state
    assert encode_snapshot(paged) == encode_snapshot(one)
    # Out of order, a record at or below one folded before it is passed over alike.
    shuffled = data.draw(st.permutations(records))
    one = RegistryProjection(closed_retention=RETENTION)
    paged = RegistryProjection(closed_retention=RETENTION)
    for record in shuffled:
        one.apply(record)
    paged.apply_all(shuffled)
    assert encode_snapshot(paged) == encode_snapshot(one)
