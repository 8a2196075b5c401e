"""The fold of what the log says about a session's upstream: its session and version,
who listens to its standalone stream, and the last event recorded from it."""

from __future__ import annotations

from eventlog import (
    Event,
    OwnerClaimed,
    OwnerReleased,
    Record,
    ServerMessage,
    SessionOpened,
    UpstreamSessionOpened,
)
from projections import RegistryProjection, SessionState


def fold(*events: Event) -> SessionState:
    projection = RegistryProjection()
    opened = SessionOpened(session_id="s", transport="streamable-http")
    for position, event in enumerate((opened, *events), start=1):
        projection.apply(Record(position=position, at=float(position), worker="w1", event=event))
    session = projection.session("s")
    assert session is not None
    return session


def listener(claimed: bool, owner: str) -> Event:
    kind = OwnerClaimed if claimed else OwnerReleased
    return kind(session_id="s", owner=owner, role="listener")


def test_the_listener_is_its_own_claim_not_the_streams_holder() -> None:
    stream_held = OwnerClaimed(session_id="s", owner="w1")
    session = fold(stream_held, listener(True, "w2"))
    assert (session.holder, session.listener) == ("w1", "w2")
    session = fold(stream_held, listener(True, "w2"), listener(False, "w1"))
    assert (session.holder, session.listener) == ("w1", "w2")  # w1 did not listen
    session = fold(stream_held, listener(True, "w2"), listener(False, "w2"))
    assert (session.holder, session.listener) == ("w1", None)
    session = fold(listener(True, "w2"), OwnerReleased(session_id="s", owner="w2"))
    assert (session.holder, session.listener) == (None, "w2")  # w2 held no stream


def test_the_upstream_session_its_version_and_its_last_event() -> None:
    opened = UpstreamSessionOpened(
        session_id="s", upstream_session="u1", protocol_version="2025-06-18"
    )
    heard = ServerMessage(session_id="s", payload=b"{}", upstream_event_id="e7")
    answered = ServerMessage(session_id="s", payload=b"{}", reply_to="m1")
    session = fold(opened, heard, answered)
    assert (session.upstream_session, session.upstream_version) == ("u1", "2025-06-18")
    assert session.upstream_event_id == "e7"  # an answer does not move it
    lost = UpstreamSessionOpened(session_id="s", upstream_session=None)
    session = fold(opened, heard, lost)
    assert (session.upstream_session, session.upstream_event_id) == (None, None)
