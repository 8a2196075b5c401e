from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventlog import (
    CapabilitiesRecorded,
    ClientMessage,
    CodecError,
    MessageHandled,
    OwnerClaimed,
    OwnerReleased,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
    decode_event,
    encode_event,
)

ids = st.text(min_size=1, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=4)

events = st.one_of(
    st.builds(SessionOpened, id=ids, session_id=ids, transport=ids, user=st.none() | ids),
    st.builds(
        SessionClosed,
        id=ids,
        session_id=ids,
        reason=st.sampled_from(["client", "disconnected", "expired", "removed", "worker_lost"]),
    ),
    st.builds(OwnerClaimed, id=ids, session_id=ids, owner=ids, previous=st.none() | ids),
    st.builds(OwnerReleased, id=ids, session_id=ids, owner=ids),
    st.builds(ClientMessage, id=ids, session_id=ids, payload=st.binary(max_size=200)),
    st.builds(
        ServerMessage,
        id=ids,
        session_id=ids,
        payload=st.binary(max_size=200),
        reply_to=st.none() | ids,
    ),
    st.builds(
        MessageHandled,
        id=ids,
        session_id=ids,
        message_id=ids,
        outcome=st.sampled_from(["handled", "expired"]),
    ),
    st.builds(
        CapabilitiesRecorded,
        id=ids,
        session_id=ids,
        protocol_version=ids,
        client_info=json_objects,
        capabilities=json_objects,
    ),
    st.builds(WorkerStarted, id=ids, host=st.text(max_size=20), pid=st.integers(0, 2**22)),
    st.builds(WorkerHeartbeat, id=ids),
    st.builds(WorkerStopped, id=ids),
)


@given(events)
def test_encode_then_decode_returns_the_event(event: object) -> None:
    assert decode_event(encode_event(event)) == event  # type: ignore[arg-type]


def test_payloads_stay_the_bytes_the_client_sent() -> None:
    raw = b'{"jsonrpc": "2.0",  "id": 1, "method": "tools/call"}'
    decoded = decode_event(encode_event(ClientMessage(session_id="s", payload=raw)))
    assert isinstance(decoded, ClientMessage)
    assert decoded.payload is not raw and decoded.payload == raw


def test_events_get_fresh_unguessable_ids() -> None:
    a, b = WorkerHeartbeat(), WorkerHeartbeat()
    assert a.id != b.id and len(a.id) == 32


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode({"type": "NotAnEvent", "id": "1"}),
        msgspec.msgpack.encode(
            {"type": "SessionClosed", "id": "1", "session_id": "s", "reason": "bored"}
        ),
        msgspec.msgpack.encode([1, 2, 3]),
    ],
)
def test_undecodable_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_event(data)


def test_an_older_reader_ignores_fields_added_later() -> None:
    newer = msgspec.msgpack.encode(
        {"type": "WorkerHeartbeat", "id": "h1", "load": 0.5, "sessions": 12}
    )
    assert decode_event(newer) == WorkerHeartbeat(id="h1")


def test_decode_records_keeps_order_and_hands_undecodable_rows_to_skip() -> None:
    from eventlog.codec import Record, decode_records

    opened = SessionOpened(session_id="s1", transport="sse")
    closed = SessionClosed(session_id="s1", reason="client")
    future = msgspec.msgpack.encode({"type": "FromTheFuture", "id": "f"})
    rows = [
        (1, 10.0, "w1", encode_event(opened)),
        (2, 11.0, "w2", future),
        (3, 12.0, "w1", encode_event(closed)),
    ]
    skipped: list[tuple[int, CodecError]] = []
    records = decode_records(rows, lambda position, exc: skipped.append((position, exc)))
    assert records == [
        Record(position=1, at=10.0, worker="w1", event=opened),
        Record(position=3, at=12.0, worker="w1", event=closed),
    ]
    assert [position for position, _ in skipped] == [2]
    assert isinstance(skipped[0][1], CodecError)
