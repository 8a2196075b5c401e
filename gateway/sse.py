"""MCP's HTTP+SSE transport (protocol 2024-11-05) on aiohttp.

``GET /sse`` opens a session held by this worker and sends the ``endpoint`` event;
``POST /messages/?session_id=...`` on any worker appends the message to the log and
answers 202 once it is durable; the session's owner answers it, and the reply
streams to the client as ``event: message`` with the reply's log position as its
id. ``GET /sse?session_id=...`` with ``Last-Event-ID`` resumes a session on any
worker (after its worker died, say): the missed messages first, then live ones.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from eventlog import LogUnavailable

from .errors import SessionNotFound
from .http import IDENTITY, find_session, read_body, unavailable
from .protocol import errors
from .protocol.headers import LAST_EVENT_ID, parse_event_id, parse_session_id
from .protocol.inbound import check_initialize, parse_message
from .registry import SessionRegistry
from .streams import EventStreamTransport, StreamLimits, event_stream, hold_stream

__all__ = ["add_routes"]

REGISTRY = web.AppKey("sse_registry", SessionRegistry)
LIMITS = web.AppKey("sse_limits", StreamLimits)


async def open_stream(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    identity = request[IDENTITY]
    resumed = parse_session_id(request.query.get("session_id"))
    resume_point = parse_event_id(request.headers.get(LAST_EVENT_ID))
    after = resume_point.position if resume_point is not None else None
    try:
        runtime = await registry.started()
        if resumed is not None:
            await find_session(runtime, resumed, identity)
        else:
            await request.app[LIMITS].check_new_session(runtime, identity)
        session_id = resumed or secrets.token_hex(16)
    except LogUnavailable as exc:
        raise unavailable(exc) from None
    with request.app[LIMITS].opened(request):
        stream = event_stream()
        transport = EventStreamTransport(session_id, stream, "sse", carries=lambda _: True)

        async def endpoint(position: int) -> None:
            await stream.send(f"/messages/?session_id={session_id}", event="endpoint")

        try:
            await hold_stream(
                request, runtime, transport, after=after, first_event=endpoint, on_end="close"
            )
        except LogUnavailable as exc:  # before the response started
            raise unavailable(exc) from None
        return stream


async def post_message(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    session_id = parse_session_id(request.query.get("session_id") or None)
    if session_id is None:
        raise errors.invalid_request("session_id is required in the query string")
    body = await read_body(request)
    message = parse_message(body)[0]
    check_initialize(message)
    try:
        runtime = await registry.started()
        await find_session(runtime, session_id, request[IDENTITY])
        await runtime.answers.receive(session_id, body, message)
    except SessionNotFound:
        raise errors.unknown_session(session_id) from None
    except LogUnavailable as exc:
        raise unavailable(exc) from None
    return web.Response(status=202, text="Accepted")


def add_routes(app: web.Application, registry: SessionRegistry, limits: StreamLimits) -> None:
    app[REGISTRY] = registry
    app[LIMITS] = limits
    app.router.add_get("/sse", open_stream)
    app.router.add_post("/messages/", post_message)
