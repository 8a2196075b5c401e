"""Header parsing on its own."""

from __future__ import annotations

import pytest

from gateway.protocol import INVALID_REQUEST, ProtocolError
from gateway.protocol.headers import (
    Accept,
    EventId,
    decode_header_value,
    parse_accept,
    parse_event_id,
    parse_session_id,
)


@pytest.mark.parametrize(
    ("value", "accept"),
    [
        (None, Accept(json=True, sse=True)),
        ("application/json", Accept(json=True, sse=False)),
        ("text/event-stream", Accept(json=False, sse=True)),
        ("application/json, text/event-stream", Accept(json=True, sse=True)),
        ("*/*", Accept(json=True, sse=True)),
        ("application/*;q=0.5, text/*", Accept(json=True, sse=True)),
        ("Application/JSON; charset=utf-8", Accept(json=True, sse=False)),
        ("application/json;q=0, text/event-stream", Accept(json=False, sse=True)),
        ("text/html", Accept(json=False, sse=False)),
        ("", Accept(json=False, sse=False)),
    ],
)
def test_accept(value: str | None, accept: Accept) -> None:
    assert parse_accept(value) == accept


def test_event_ids() -> None:
    assert parse_event_id(None) is None
    assert parse_event_id("42") == EventId(42)
    message_id = "0" * 31 + "a"
    assert parse_event_id(f"7/{message_id}", with_message=True) == EventId(7, message_id)


@pytest.mark.parametrize(
    ("value", "with_message"),
    [
        ("", False),
        ("-1", False),
        ("1e3", False),
        ("٣", False),  # a digit, but not an ASCII one
        ("9" * 5000, False),  # no log is that long: not an int to build
        ("7/" + "a" * 32, False),  # a request's id where only positions are
        ("7/short", True),
        ("7/" + "é" * 32, True),
    ],
)
def test_event_ids_that_none_of_ours_carries_are_400(value: str, with_message: bool) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_event_id(value, with_message=with_message)
    assert (caught.value.status, caught.value.code) == (400, INVALID_REQUEST)
    assert len(caught.value.message) < 200  # a huge header is not echoed whole


def test_session_ids() -> None:
    assert parse_session_id(None) is None
    assert parse_session_id("abc-DEF_1") == "abc-DEF_1"
    for bad in ["", "a b", "\xff\xfe", "\x00", "a" * 129]:
        with pytest.raises(ProtocolError):
            parse_session_id(bad)


def test_header_values_may_be_base64() -> None:
    assert decode_header_value("plain") == "plain"
    assert decode_header_value("=?base64?w6k=?=") == "é"
    assert decode_header_value("=?base64?!!?=") is None
    assert decode_header_value("=?base64?/w==?=") is None  # not UTF-8
    assert decode_header_value(None) is None
