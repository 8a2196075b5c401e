"""The events of the session log: one msgspec tagged union.

Schema evolution follows msgspec's rules: a new field gets a default, a field is
never retyped or renamed, and a new event type is a new tag. A reader that meets a
tag or shape it does not know skips that record (see :mod:`eventlog.base`).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Literal

import msgspec

__all__ = [
    "BaseEvent",
    "CapabilitiesRecorded",
    "ChangePublished",
    "ClientMessage",
    "CloseReason",
    "Event",
    "MessageHandled",
    "OwnerClaimed",
    "OwnerReleased",
    "Role",
    "ServerMessage",
    "SessionClosed",
    "SessionOpened",
    "StatelessAnswer",
    "StatelessRequest",
    "UpstreamSessionOpened",
    "WorkerHeartbeat",
    "WorkerStarted",
    "WorkerStopped",
    "derived_event_id",
    "new_event_id",
]


def new_event_id() -> str:
    """A fresh unique event id: 32 hex digits, microseconds since the epoch then 72
    random bits. Time first, so ids arrive in nearly sorted order and the unique
    index on them grows at its right edge instead of touching pages at random."""
    return f"{time.time_ns() // 1000:014x}{os.urandom(9).hex()}"


def derived_event_id(*parts: object) -> str:
    """An event id that every worker computes alike from ``parts``: for effects that
    must happen once however many workers try (expiry, a message's outcome)."""
    key = "\x1f".join(map(str, parts)).encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


class BaseEvent(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="type", gc=False):
    # Appending an id that is already in the log stores nothing: callers that need
    # exactly-once effects (expiry, takeover) pass a deterministic id.
    id: str = msgspec.field(default_factory=new_event_id)


CloseReason = Literal["client", "disconnected", "expired", "removed", "worker_lost"]
# Which ownership a claim is about: the worker holding the stream, the identity
# (user) the session belongs to, or the worker listening to the stream its upstream
# MCP server sends the session's own messages on; or, not about a session, the worker
# compacting the log (session id "compaction": one at a time, see gateway.compaction).
Role = Literal["worker", "user", "listener", "compactor"]


class SessionOpened(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    transport: str
    user: str | None = None


class SessionClosed(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    reason: CloseReason


class OwnerClaimed(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    owner: str
    previous: str | None = None
    role: Role = "worker"


class OwnerReleased(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    owner: str
    role: Role = "worker"
    # Why a worker let go of a stream it held ("worker_stopped": SIGTERM), when known.
    reason: str | None = None


class ClientMessage(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    # Raw JSON-RPC bytes as the client sent them; never re-parsed on the way through.
    payload: bytes
    # The worker answering it within the client's own HTTP request (Streamable HTTP);
    # None: the session's owner answers it.
    answered_by: str | None = None


class ServerMessage(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    payload: bytes
    # Event id of the ClientMessage this answers; None for server-initiated messages.
    reply_to: str | None = None
    # The SSE event id the upstream sent it with on the session's standalone stream:
    # where a worker taking over the listening resumes that stream.
    upstream_event_id: str | None = None


class MessageHandled(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    # Event id of the ClientMessage that was handled (or given up on).
    message_id: str
    outcome: Literal["handled", "expired"] = "handled"


class CapabilitiesRecorded(BaseEvent, frozen=True, kw_only=True):
    session_id: str
    protocol_version: str
    client_info: dict[str, Any] = {}
    capabilities: dict[str, Any] = {}


class UpstreamSessionOpened(BaseEvent, frozen=True, kw_only=True):
    """The gateway session's session on the upstream MCP server, which every worker
    forwards the session's messages with."""

    session_id: str
    # The upstream's Mcp-Session-Id ("" for an upstream that keeps no sessions); None
    # says the previous one was lost and the next message opens another.
    upstream_session: str | None
    # The protocol version the upstream answered initialize with (its
    # MCP-Protocol-Version from then on).
    protocol_version: str | None = None


class StatelessRequest(BaseEvent, frozen=True, kw_only=True):
    """A request of the 2026-07-28 revision: it stands alone, with no session, so it
    carries its caller's identity; the worker it reached answers it."""

    user: str | None = None
    payload: bytes  # raw JSON-RPC bytes as the client sent them
    answered_by: str


class StatelessAnswer(BaseEvent, frozen=True, kw_only=True):
    """What a StatelessRequest was sent back: its answer, or (``final`` false) a
    message about it on the way (progress, a log line, a listen stream's event)."""

    request: str  # event id of the StatelessRequest
    payload: bytes
    final: bool = True
    # The upstream session it was answered in, when a bridge opened one for it.
    upstream_session: str | None = None


class ChangePublished(BaseEvent, frozen=True, kw_only=True):
    """A change for ``subscriptions/listen`` streams on every worker: a list changed or
    a resource was updated. ``payload`` is the notification as listeners get it, less
    their subscription id."""

    payload: bytes


class WorkerStarted(BaseEvent, frozen=True, kw_only=True):
    host: str = ""
    pid: int = 0


class WorkerHeartbeat(BaseEvent, frozen=True, kw_only=True):
    pass


class WorkerStopped(BaseEvent, frozen=True, kw_only=True):
    pass


Event = (
    SessionOpened
    | SessionClosed
    | OwnerClaimed
    | OwnerReleased
    | ClientMessage
    | ServerMessage
    | MessageHandled
    | CapabilitiesRecorded
    | UpstreamSessionOpened
    | StatelessRequest
    | StatelessAnswer
    | ChangePublished
    | WorkerStarted
    | WorkerHeartbeat
    | WorkerStopped
)
