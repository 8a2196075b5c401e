"""MCP's HTTP+SSE transport (protocol 2024-11-05) on aiohttp.

``GET /sse`` opens a session held by this worker and sends the ``endpoint`` event;
``POST /messages/?session_id=...`` on any worker appends the message to the log and
answers 202 once it is durable; the session's owner answers it, and the reply
streams to the client as ``event: message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from eventlog import LogUnavailable

from .errors import SessionNotFound
from .protocol import INVALID_REQUEST, PARSE_ERROR, error_response
from .registry import SessionRegistry

__all__ = ["SSETransport", "add_routes"]

logger = logging.getLogger("sessionlog.gateway")

REGISTRY = web.AppKey("registry", SessionRegistry)
# Timeouts
KEEPALIVE = 15.0  # s between ": ping" comments on an idle stream
SEND_TIMEOUT = 10.0  # s a client may take to read an event before it is disconnected
# Limits
MAX_BODY = 4 * 2**20  # bytes of one POST


class SSETransport:
    """One client's event stream, as the registry's Transport."""

    kind = "sse"

    def __init__(self, session_id: str, stream: EventSourceResponse) -> None:
        self.session_id = session_id
        self.stream = stream

    async def send_message(self, message: dict[str, Any]) -> None:
        await self.stream.send(orjson.dumps(message).decode(), event="message")

    async def disconnect(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stream.stop_streaming()

    async def is_connected(self) -> bool:
        return self.stream.is_connected()


def _rpc_error(status: int, code: int, message: str) -> web.Response:
    body = orjson.dumps(error_response(None, code, message))
    return web.Response(status=status, body=body, content_type="application/json")


async def open_stream(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    session_id = secrets.token_hex(16)
    async with sse_response(request, ping_interval=KEEPALIVE, send_timeout=SEND_TIMEOUT) as stream:
        transport = SSETransport(session_id, stream)
        try:
            await registry.add_session(session_id, transport)
        except LogUnavailable as exc:
            logger.warning("cannot open a session: %s", exc)
            return stream
        await stream.send(f"/messages/?session_id={session_id}", event="endpoint")
        responder = asyncio.create_task(registry.respond(None, {}, session_id))
        try:
            await stream.wait()
        finally:
            responder.cancel()
            with contextlib.suppress(LogUnavailable):
                if registry.get_session_sync(session_id) is transport:
                    await registry.remove_session(session_id, "disconnected")
    return stream


async def post_message(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    session_id = request.query.get("session_id", "")
    if not session_id:
        return _rpc_error(400, INVALID_REQUEST, "session_id is required in the query string")
    try:
        message = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _rpc_error(400, PARSE_ERROR, "Parse error: the body is not JSON")
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _rpc_error(400, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
    # broadcast checks that the session exists (catching up only when this worker does
    # not know it yet), so a POST costs one append and no extra head query.
    try:
        await registry.broadcast(session_id, message)
    except SessionNotFound:
        return _rpc_error(404, INVALID_REQUEST, f"unknown session {session_id}")
    except LogUnavailable:
        return _rpc_error(503, INVALID_REQUEST, "the session log is unavailable; retry")
    return web.Response(status=202, text="Accepted")


def add_routes(app: web.Application, registry: SessionRegistry) -> None:
    app[REGISTRY] = registry
    app.router.add_get("/sse", open_stream)
    app.router.add_post("/messages/", post_message)
