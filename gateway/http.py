"""What both MCP transports share over HTTP: JSON-RPC error answers, reading a
message, and the guards every request passes (errors as JSON-RPC, DNS-rebinding,
auth)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from projections import SessionState

from .auth import Authenticator, AuthError
from .protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MISSING_PROTOCOL_VERSION,
    PARSE_ERROR,
    error_response,
)
from .settings import LOOPBACK_HOSTS, Settings
from .worker import WorkerRuntime

__all__ = [
    "IDENTITY",
    "MAX_BODY",
    "UNAUTHORIZED",
    "find_session",
    "guards",
    "log_unavailable",
    "read_message",
    "rpc_error",
]

logger = logging.getLogger("sessionlog.gateway")

# Limits
MAX_BODY = 4 * 2**20  # bytes of one POST
# JSON-RPC code for missing or bad credentials (the server-defined range).
UNAUTHORIZED = -32001
# The request's identity (a JWT's sub), None when auth is off.
IDENTITY = web.RequestKey("identity", str | None)
# Paths a load balancer or Prometheus reach without credentials.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rpc_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error whose body is a JSON-RPC error (id null); raise or return it."""
    error = web.HTTPException(
        headers=headers,
        text=orjson.dumps(error_response(None, code, message)).decode(),
        content_type="application/json",
    )
    error.set_status(status)
    return error


async def read_message(request: web.Request) -> dict[str, Any]:
    """The request's body as one JSON-RPC 2.0 message.

    Raises:
        web.HTTPException: 413 too big, 400/-32700 not JSON, 400/-32600 not a
            JSON-RPC 2.0 message (batches included), 400/-32002 initialize
            without a protocol version, 400/-32602 initialize whose capabilities or
            clientInfo is not an object.
    """
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise rpc_error(413, INVALID_REQUEST, f"the body is over {MAX_BODY} bytes") from None
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise rpc_error(400, PARSE_ERROR, "Parse error: the body is not JSON") from None
    if isinstance(message, list):
        raise rpc_error(400, INVALID_REQUEST, "Invalid Request: batches are not supported")
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise rpc_error(400, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
    if "method" in message:
        if not isinstance(message["method"], str):
            raise rpc_error(400, INVALID_REQUEST, "Invalid Request: method must be a string")
    elif "id" not in message or ("result" not in message and "error" not in message):
        raise rpc_error(400, INVALID_REQUEST, "Invalid Request: neither a request nor a response")
    request_id = message.get("id", 0)
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        raise rpc_error(400, INVALID_REQUEST, "Invalid Request: id must be a string or a number")
    if message.get("method") == "initialize":
        params = message.get("params")
        if not isinstance(params, dict) or not params.get("protocolVersion"):
            raise rpc_error(400, MISSING_PROTOCOL_VERSION, "initialize needs a protocolVersion")
        for name in ("capabilities", "clientInfo"):
            # Recorded in the log as objects: anything else would be a record no
            # worker can read back.
            if params.get(name) is not None and not isinstance(params[name], dict):
                raise rpc_error(400, INVALID_PARAMS, f"Invalid params: {name} must be an object")
    return message


def _allowed(value: str, allowed: tuple[str, ...]) -> bool:
    return "*" in allowed or value in allowed


def _hostname(url: str) -> str:
    """The host name in ``url`` (brackets of an IPv6 address off); "" when it has
    none or cannot be parsed (a stray "[" makes urlsplit raise)."""
    try:
        return (urlsplit(url).hostname or "").strip("[]")
    except ValueError:
        return ""


def guards(settings: Settings, authenticator: Authenticator | None) -> list[Any]:
    """The middlewares every request passes, outermost first."""
    loopback = settings.host in LOOPBACK_HOSTS
    allowed_hosts = settings.allowed_hosts or (LOOPBACK_HOSTS if loopback else ("*",))
    allowed_origins = settings.allowed_origins or (() if loopback else ("*",))

    @web.middleware
    async def json_rpc_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error answer is JSON-RPC, and nothing escapes as a traceback."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
            message = exc.text or exc.reason
            if exc.status == 405:
                message = f"method {request.method} not allowed on {request.path}"
            elif exc.status == 413:
                message = f"the body is over {MAX_BODY} bytes"
            raise rpc_error(exc.status, INVALID_REQUEST, message, headers) from None
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            raise rpc_error(500, INTERNAL_ERROR, "Internal error") from None

    @web.middleware
    async def rebinding_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """DNS rebinding: a page on another site must not reach a local gateway."""
        host = _hostname(f"//{request.host}")
        if not _allowed(host, allowed_hosts):
            raise rpc_error(421, INVALID_REQUEST, f"Host {request.host!r} is not allowed")
        origin = request.headers.get("Origin")
        if origin is not None and not _allowed(origin, allowed_origins):
            origin_host = _hostname(origin)
            if not (loopback and not settings.allowed_origins and origin_host in LOOPBACK_HOSTS):
                raise rpc_error(403, INVALID_REQUEST, f"Origin {origin!r} is not allowed")
        return await handler(request)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[IDENTITY] = None
        if authenticator is not None and request.path not in OPEN_PATHS:
            try:
                request[IDENTITY] = authenticator.identify(request.headers.get("Authorization"))
            except AuthError as exc:
                challenge = 'Bearer realm="sessionlog"'
                if exc.error:
                    challenge += f', error="{exc.error}"'
                raise rpc_error(
                    401, UNAUTHORIZED, f"Unauthorized: {exc}", {"WWW-Authenticate": challenge}
                ) from None
        return await handler(request)

    return [json_rpc_errors, rebinding_guard, authenticate]


async def find_session(
    runtime: WorkerRuntime, session_id: str, identity: str | None
) -> SessionState:
    """The open session ``session_id`` if it is the caller's.

    Raises:
        web.HTTPException: 404 if it is unknown, closed, or another identity's (which
            must look exactly like unknown).
    """
    session = runtime.projection.session(session_id)
    if session is None:
        # Not known here yet: it may have been opened on another worker a moment ago.
        await runtime.sync()
        session = runtime.projection.session(session_id)
    if session is None or session.user != identity:
        raise rpc_error(404, INVALID_REQUEST, f"unknown session {session_id}: initialize again")
    return session


def log_unavailable(exc: Exception) -> web.HTTPException:
    """503 with a retry hint: the log is down; nothing was accepted."""
    logger.warning("the session log is unavailable: %s", exc)
    return rpc_error(
        503, INTERNAL_ERROR, "the session log is unavailable; retry", {"Retry-After": "1"}
    )
