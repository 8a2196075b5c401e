"""MCP's Streamable HTTP transport (protocol 2025-03-26 and later) on aiohttp.

``POST /mcp`` carries every client message. An ``initialize`` opens a session and
returns its ``Mcp-Session-Id``; later messages carry it and may reach any worker.
The worker a request reaches records it in the log, answers it and records the
answer, sending both the answer and any related messages on the request's own
response: JSON, or an SSE stream when the client accepts one. Each SSE event's id
is ``<log position>/<message id>``, so a client whose response broke (its worker
died) resumes with ``GET /mcp`` and ``Last-Event-ID`` on any worker, which sends
what is missing, answering the request itself if its worker is gone.

``GET /mcp`` is the session's stream of server-initiated messages, resumable by
log position; ``DELETE /mcp`` ends the session.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from eventlog import LogUnavailable, SessionOpened
from projections import SentMessage

from .answering import HandlerContext
from .http import IDENTITY, find_session, read_body, unavailable
from .protocol import ASSUMED_VERSION, HANDSHAKE_VERSIONS, PRIMING_SINCE, errors, negotiate_version
from .protocol.headers import (
    LAST_EVENT_ID,
    SESSION_HEADER,
    VERSION_HEADER,
    parse_accept,
    parse_event_id,
    parse_session_id,
)
from .protocol.inbound import classify_post
from .registry import SessionRegistry
from .stateless import STATELESS
from .streams import (
    KEEPALIVE,
    SEND_TIMEOUT,
    EventStreamTransport,
    StreamLimits,
    event_stream,
    hold_stream,
)

__all__ = ["MCP_PATH", "SESSION_ENDED", "add_routes"]

MCP_PATH = "/mcp"
# How long a client whose stream ended waits before resuming it (the priming
# event's `retry:`): the answer is in the log by then, or will be.
RESUME_AFTER_MS = 1000

REGISTRY = web.AppKey("mcp_registry", SessionRegistry)
# Told when a client ends its session (DELETE), before the session closes.
SessionEnded = Callable[[str], Awaitable[None]]
SESSION_ENDED = web.AppKey("session_ended", SessionEnded)
LIMITS = web.AppKey("mcp_limits", StreamLimits)


def _protocol_version(request: web.Request) -> str:
    """A GET's or DELETE's protocol version (a POST's is the ladder's to check)."""
    version = request.headers.get(VERSION_HEADER, ASSUMED_VERSION)
    if version not in HANDSHAKE_VERSIONS:
        raise errors.unsupported_version_header(version, HANDSHAKE_VERSIONS)
    return version


def _session_id(request: web.Request) -> str:
    session_id = parse_session_id(request.headers.get(SESSION_HEADER))
    if session_id is None:
        raise errors.session_required()
    return session_id


def _event_id(message: SentMessage, message_id: str) -> str:
    return f"{message.position}/{message_id}"


def _reply_headers(session_id: str) -> dict[str, str]:
    return {SESSION_HEADER: session_id}


async def post(request: web.Request) -> web.StreamResponse:
    accept = parse_accept(request.headers.get("Accept"))
    if request.content_type != "application/json":
        raise errors.unsupported_content_type()
    inbound = classify_post(await read_body(request), request.headers.items())
    if inbound.era == "modern":
        return await request.app[STATELESS](request, inbound, accept)
    if not (accept.json or accept.sse):
        raise errors.not_acceptable("application/json or text/event-stream")
    registry = request.app[REGISTRY]
    message, version, identity = inbound.message, inbound.version, request[IDENTITY]
    try:
        runtime = await registry.started()
        if inbound.session_id is None:  # initialize
            await request.app[LIMITS].check_new_session(runtime, identity)
            session_id = secrets.token_hex(16)
            opening: SessionOpened | None = SessionOpened(
                session_id=session_id, transport="streamable-http", user=identity
            )
            version = negotiate_version(str(message["params"]["protocolVersion"]))
        else:
            session_id, opening = inbound.session_id, None
            await find_session(runtime, session_id, identity)
        answers = runtime.answers
        ctx = HandlerContext(session_id, None, {"identity": identity})
        reply: SentMessage | None = None
        if answers.at_once(message):
            # Answered before anything is recorded: message and answer in one append.
            message_id, position, reply = await answers.answer_at_once(
                session_id, inbound.body, message, ctx, opening
            )
        else:
            message_id, position = await answers.accept(session_id, inbound.body, opening)
            if inbound.kind != "request" or not accept.sse:
                reply = await answers.answer_shielded(session_id, message_id, message, ctx)
        if inbound.kind != "request":
            # A notification, or a response to a server request: recorded, handled.
            return web.Response(status=202, headers=_reply_headers(session_id))
        if not accept.sse:
            assert reply is not None  # a request always has an answer
            headers = _reply_headers(session_id)
            return web.Response(
                body=reply.payload, content_type="application/json", headers=headers
            )
    except LogUnavailable as exc:
        raise unavailable(exc) from None
    async with sse_response(
        request,
        headers=_reply_headers(session_id),
        ping_interval=KEEPALIVE,
        send_timeout=SEND_TIMEOUT,
        allow_all_methods=True,  # a POST's response may be a stream
    ) as stream:
        if version >= PRIMING_SINCE:
            await stream.send("", id=f"{position}/{message_id}", retry=RESUME_AFTER_MS)

        async def send(sent: SentMessage) -> None:
            await _send_event(stream, sent, message_id)

        if reply is None:
            try:
                reply = await answers.answer_shielded(
                    session_id, message_id, message, ctx, send_related=send
                )
            except LogUnavailable as exc:
                unavailable(exc)  # the stream is open already: it ends without the answer
                return stream
        assert reply is not None  # a request always has an answer
        await send(reply)
    return stream


async def _send_event(stream: EventSourceResponse, sent: SentMessage, message_id: str) -> None:
    await stream.send(sent.payload.decode(), id=_event_id(sent, message_id), event="message")


async def get(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    if not parse_accept(request.headers.get("Accept")).sse:
        raise errors.not_acceptable("text/event-stream")
    _protocol_version(request)
    session_id = _session_id(request)
    identity = request[IDENTITY]
    resume_point = parse_event_id(request.headers.get(LAST_EVENT_ID), with_message=True)
    after = resume_point.position if resume_point is not None else None
    message_id = resume_point.message_id if resume_point is not None else None
    try:
        runtime = await registry.started()
        session = await find_session(runtime, session_id, identity)
    except LogUnavailable as exc:
        raise unavailable(exc) from None
    if message_id is not None:
        return await _resume_request(request, registry, session_id, message_id, after or 0)
    if after is None:
        # Held here is known at once; held elsewhere, once the claim is folded.
        held_here = session_id in runtime.streams
        if held_here or (
            session.holder is not None
            and runtime.projection.is_alive(session.holder, runtime.clock(), runtime.worker_ttl)
        ):
            raise errors.conflicting_stream()
    if after is None:
        # No event named: what was sent for the session since its last stream ended
        # (or it opened), so a server's request sent before the client's first GET
        # (an upstream's sampling, say) is not lost.
        after = session.stream_ended_position or session.opened_position
    priming = (session.protocol_version or ASSUMED_VERSION) >= PRIMING_SINCE
    with request.app[LIMITS].opened(request):
        stream = event_stream(_reply_headers(session_id))
        transport = EventStreamTransport(
            session_id, stream, "streamable-http", carries=lambda sent: sent.reply_to is None
        )

        async def prime(position: int) -> None:
            if priming:
                await stream.send("", id=str(position), retry=RESUME_AFTER_MS)

        try:
            await hold_stream(
                request, runtime, transport, after=after, first_event=prime, on_end="release"
            )
        except LogUnavailable as exc:  # before the response started
            raise unavailable(exc) from None
        return stream


async def _resume_request(
    request: web.Request, registry: SessionRegistry, session_id: str, message_id: str, after: int
) -> web.StreamResponse:
    """The rest of one request's response stream, from the log (answered here if the
    worker that was answering it is gone)."""
    runtime = registry.runtime
    async with sse_response(
        request,
        headers=_reply_headers(session_id),
        ping_interval=KEEPALIVE,
        send_timeout=SEND_TIMEOUT,
    ) as stream:
        try:
            async for sent in runtime.answers.follow_request(session_id, message_id, after):
                await _send_event(stream, sent, message_id)
        except LogUnavailable as exc:
            unavailable(exc)
    return stream


async def delete(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    session_id = _session_id(request)
    try:
        runtime = await registry.started()
        await find_session(runtime, session_id, request[IDENTITY])
        if (ended := request.app.get(SESSION_ENDED)) is not None:
            await ended(session_id)
        await runtime.streams.close(session_id, "client")
    except LogUnavailable as exc:
        raise unavailable(exc) from None
    return web.Response(status=200, headers=_reply_headers(session_id))


def add_routes(app: web.Application, registry: SessionRegistry, limits: StreamLimits) -> None:
    app[REGISTRY], app[LIMITS] = registry, limits
    app.router.add_post(MCP_PATH, post)
    app.router.add_get(MCP_PATH, get)
    app.router.add_delete(MCP_PATH, delete)
