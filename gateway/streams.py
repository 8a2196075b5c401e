"""A client's server-to-client event stream, as the registry's Transport.

Both MCP transports hold sessions this way: HTTP+SSE's ``GET /sse`` stream carries
every server message of its session, Streamable HTTP's ``GET /mcp`` stream only the
server-initiated ones (answers go out on the request that asked). Each event's id
is its log position, so a client that lost its stream reconnects to any worker
with ``Last-Event-ID`` and gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from eventlog import LogUnavailable
from projections import SentMessage

from .answering import HandlerContext
from .http import IDENTITY
from .protocol import errors
from .runtime import WorkerRuntime

__all__ = [
    "KEEPALIVE",
    "SEND_TIMEOUT",
    "EventStreamTransport",
    "StreamLimits",
    "event_stream",
    "hold_stream",
    "stream_owner",
]

logger = logging.getLogger("sessionlog.gateway")

# Timeouts
KEEPALIVE = 15.0  # s between ": ping" comments on an idle stream
SEND_TIMEOUT = 10.0  # s a client may take to read an event before it is disconnected


class EventStreamTransport:
    """One client's event stream. Until :meth:`start` it holds back live messages,
    so the ones replayed from the log go first; after, it never sends a position
    twice or out of order."""

    def __init__(
        self,
        session_id: str,
        stream: EventSourceResponse,
        kind: str,
        carries: Callable[[SentMessage], bool],
    ) -> None:
        self.session_id = session_id
        self.stream = stream
        self.kind = kind
        self._carries = carries
        self._started = asyncio.Event()
        self.position = 0  # of the newest event sent

    def start(self, position: int) -> None:
        """Live messages may flow, from after ``position`` on."""
        self.position = max(self.position, position)
        self._started.set()

    async def deliver(self, message: SentMessage) -> None:
        await self._started.wait()
        await self.send_event(message)

    async def send_event(self, message: SentMessage) -> None:
        if message.position <= self.position or not self._carries(message):
            return
        self.position = message.position
        await self.stream.send(message.payload.decode(), id=str(message.position), event="message")

    async def send_message(self, message: dict[str, Any]) -> None:
        # The reference's Transport API: a message that is not in the log has no id.
        await self.stream.send(orjson.dumps(message).decode(), event="message")

    async def disconnect(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stream.stop_streaming()

    async def is_connected(self) -> bool:
        # Not sent yet is not gone: hold_stream takes the session before it starts the
        # response (and cleans up itself if it never does).
        return not self.stream.prepared or self.stream.is_connected()


def stream_owner(request: web.Request) -> str:
    """Whom a stream counts against: its identity, or with none (auth off) the
    address it comes from. The TCP peer's, never X-Forwarded-For, which any client
    can write: behind a proxy, every client shares the proxy's address."""
    identity = request[IDENTITY]
    return f"user:{identity}" if identity is not None else f"peer:{request.remote}"


class StreamLimits:
    """Caps: open streams per identity (or peer address) on this worker; open
    sessions in the log, in all and per identity."""

    def __init__(
        self, per_identity: int, max_sessions: int, max_sessions_per_identity: int
    ) -> None:
        self.per_identity = per_identity
        self.max_sessions = max_sessions
        self.max_sessions_per_identity = max_sessions_per_identity
        self._open: Counter[str] = Counter()

    async def check_new_session(self, runtime: WorkerRuntime, identity: str | None) -> None:
        """Refuse a new session past the caps: the global one (503: the gateway is
        full) or the identity's own (429: that identity should close some first).
        Every worker counts from the same folded log."""
        await runtime.sync()  # sessions opened a moment ago, on any worker, count
        state = runtime.projection.state
        if identity is not None:
            if state.open_by_user.get(identity, 0) >= self.max_sessions_per_identity:
                raise errors.too_many_sessions_for_identity(self.max_sessions_per_identity)
        if len(state.sessions) >= self.max_sessions:
            raise errors.too_many_sessions()

    @contextlib.contextmanager
    def opened(self, request: web.Request):  # type: ignore[no-untyped-def]
        """Count a stream of the request's identity (or peer) while it is open."""
        owner = stream_owner(request)
        if self._open[owner] >= self.per_identity:
            raise errors.too_many_streams(self.per_identity)
        self._open[owner] += 1
        try:
            yield
        finally:
            self._open[owner] -= 1
            if not self._open[owner]:
                del self._open[owner]


def event_stream(headers: dict[str, str] | None = None) -> EventSourceResponse:
    """A server-to-client event stream, not yet sent (see :func:`hold_stream`)."""
    return EventSourceResponse(headers=headers, ping_interval=KEEPALIVE, send_timeout=SEND_TIMEOUT)


async def hold_stream(
    request: web.Request,
    runtime: WorkerRuntime,
    transport: EventStreamTransport,
    *,
    after: int | None,
    first_event: Callable[[int], Any] | None = None,
    on_end: str,
) -> None:
    """Hold ``transport``'s session on this worker until its client goes away.

    Takes the session over if another worker held it, and only then starts the
    response, so a log that cannot be reached is still a clean 503 (``LogUnavailable``
    raised before anything is sent). Then ``first_event`` is awaited with the
    position live messages start from; the session's server messages after
    ``after`` (a Last-Event-ID) are replayed; live ones follow. When the stream
    ends, the session is closed (``on_end="close"``) or only released so another
    stream may hold it (``on_end="release"``).
    """
    session_id, stream = transport.session_id, transport.stream
    identity = request[IDENTITY]
    await runtime.streams.open(session_id, transport, transport.kind, identity)
    cutoff = runtime.projection.position
    context = HandlerContext(session_id, None, {"identity": identity})
    helpers = [asyncio.create_task(runtime.answers.respond(session_id, context))]
    try:
        await stream.prepare(request)
        async with stream:
            if first_event is not None:
                await first_event(cutoff if after is None else after)
            if after is not None:
                async for message in runtime.sent_after(session_id, after, cutoff):
                    await transport.send_event(message)
            transport.start(cutoff)
            await stream.wait()
    except LogUnavailable as exc:
        logger.warning("session %s: stream ended: %s", session_id, exc)
    finally:
        for helper in helpers:
            helper.cancel()
        with contextlib.suppress(LogUnavailable):
            if runtime.streams.transport(session_id) is transport:
                if on_end == "close":
                    await runtime.streams.close(session_id, "disconnected", if_held=True)
                else:
                    await runtime.streams.release(session_id, "disconnected")
