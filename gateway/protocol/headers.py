"""The HTTP headers MCP gives meaning to, parsed and checked without any I/O."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from . import errors

__all__ = [
    "LAST_EVENT_ID",
    "METHOD_HEADER",
    "NAME_HEADER",
    "SESSION_HEADER",
    "VERSION_HEADER",
    "Accept",
    "EventId",
    "decode_header_value",
    "parse_accept",
    "parse_event_id",
    "parse_session_id",
]

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
METHOD_HEADER = "Mcp-Method"
NAME_HEADER = "Mcp-Name"
LAST_EVENT_ID = "Last-Event-ID"

# Limits
MAX_SESSION_ID = 128  # characters; ours are 32
MAX_POSITION_DIGITS = 19  # a log position fits in a signed 64-bit integer

# The specification: a session id holds visible ASCII only (0x21-0x7E).
_SESSION_ID = re.compile(r"[\x21-\x7e]+")
_BASE64_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=")


@dataclass(frozen=True, slots=True)
class Accept:
    """Which of MCP's two answer types a client takes."""

    json: bool
    sse: bool


def parse_accept(value: str | None) -> Accept:
    """``Accept`` as MCP reads it: media ranges with wildcards; a range with ``q=0``
    is refused. No header at all accepts anything (RFC 9110)."""
    if value is None:
        return Accept(json=True, sse=True)
    json = sse = False
    for item in value.split(","):
        media, *parameters = (part.strip().lower() for part in item.split(";"))
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in parameters):
            continue
        if media in ("*/*", "application/*", "application/json"):
            json = True
        if media in ("*/*", "text/*", "text/event-stream"):
            sse = True
    return Accept(json=json, sse=sse)


def parse_session_id(value: str | None) -> str | None:
    """The ``Mcp-Session-Id`` header's value, if it has one that could be a session.

    Raises:
        ProtocolError: 400 for a value no session could have (not visible ASCII, or long).
    """
    if value is None:
        return None
    if len(value) > MAX_SESSION_ID or not _SESSION_ID.fullmatch(value):
        raise errors.invalid_request("Mcp-Session-Id must be 1-128 visible ASCII characters")
    return value


@dataclass(frozen=True, slots=True)
class EventId:
    """A ``Last-Event-ID``: a log position, and for a request's own stream the id of
    the message it answers."""

    position: int
    message_id: str | None = None


def parse_event_id(value: str | None, *, with_message: bool = False) -> EventId | None:
    """Parse ``Last-Event-ID``: ``<position>``, or ``<position>/<message id>`` where
    ``with_message`` (Streamable HTTP's request streams).

    Raises:
        ProtocolError: 400 for a value none of our events carries.
    """
    if value is None:
        return None
    position, slash, message_id = value.partition("/")
    if (
        not (position.isascii() and position.isdigit())
        or len(position) > MAX_POSITION_DIGITS
        or (slash and not with_message)
        or (slash and not (len(message_id) == 32 and message_id.isascii() and message_id.isalnum()))
    ):
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise errors.invalid_request(f"Last-Event-ID {shown!r} is not an event id here")
    return EventId(int(position), message_id or None)


def decode_header_value(value: str | None) -> str | None:
    """A header value a 2026-07-28 client mirrors from the body (``Mcp-Name``): as
    sent, or decoded from the ``=?base64?...?=`` form used for values that are not
    plain ASCII. None for a malformed encoded value, which then matches nothing."""
    if value is None:
        return None
    match = _BASE64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    try:
        return base64.b64decode(match["payload"], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
