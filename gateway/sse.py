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
from .http import IDENTITY, find_session, log_unavailable, read_message, rpc_error
from .protocol import INVALID_REQUEST
from .registry import SessionRegistry
from .streams import EventStreamTransport, StreamLimits, event_stream, hold_stream

__all__ = ["add_routes"]

REGISTRY = web.AppKey("sse_registry", SessionRegistry)
LIMITS = web.AppKey("sse_limits", StreamLimits)


def _last_event_id(request: web.Request) -> int | None:
    value = request.headers.get("Last-Event-ID")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise rpc_error(400, INVALID_REQUEST, f"Last-Event-ID {value!r} is not an event id here")
    return int(value)


async def open_stream(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    identity = request[IDENTITY]
    resumed = request.query.get("session_id")
    after = _last_event_id(request)
    try:
        runtime = await registry.started()
        if resumed is not None:
            await find_session(runtime, resumed, identity)
        else:
            request.app[LIMITS].check_new_session(runtime)
        session_id = resumed or secrets.token_hex(16)
    except LogUnavailable as exc:
        raise log_unavailable(exc) from None
    with request.app[LIMITS].opened(identity):
        stream = event_stream()
        transport = EventStreamTransport(session_id, stream, "sse", carries=lambda _: True)

        async def endpoint(position: int) -> None:
            await stream.send(f"/messages/?session_id={session_id}", event="endpoint")

        try:
            await hold_stream(
                request, registry, transport, after=after, first_event=endpoint, on_end="close"
            )
        except LogUnavailable as exc:  # before the response started
            raise log_unavailable(exc) from None
        return stream


async def post_message(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    session_id = request.query.get("session_id", "")
    if not session_id:
        raise rpc_error(400, INVALID_REQUEST, "session_id is required in the query string")
    message = await read_message(request)
    try:
        runtime = await registry.started()
        await find_session(runtime, session_id, request[IDENTITY])
        await registry.broadcast(session_id, message)
    except SessionNotFound:
        raise rpc_error(404, INVALID_REQUEST, f"unknown session {session_id}") from None
    except LogUnavailable as exc:
        raise log_unavailable(exc) from None
    return web.Response(status=202, text="Accepted")


def add_routes(app: web.Application, registry: SessionRegistry, limits: StreamLimits) -> None:
    app[REGISTRY] = registry
    app[LIMITS] = limits
    app.router.add_get("/sse", open_stream)
    app.router.add_post("/messages/", post_message)
