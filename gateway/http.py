"""What both MCP transports share over HTTP: reading a body, and the guards every
request passes (errors as JSON-RPC, DNS-rebinding, auth)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from projections import SessionState

from .auth import Authenticator, AuthError
from .connections import Connection, error_reply
from .errors import WorkerStopping
from .protocol import ProtocolError, errors
from .runtime import WorkerRuntime
from .settings import LOOPBACK_HOSTS, Settings

__all__ = [
    "BODY_TIMEOUT",
    "IDENTITY",
    "MAX_BODY",
    "error_reply",
    "find_session",
    "guards",
    "read_body",
    "unavailable",
]

logger = logging.getLogger("sessionlog.gateway")

# Limits
MAX_BODY = 4 * 2**20  # bytes of one POST
# The request's identity (a JWT's sub), None when auth is off.
IDENTITY = web.RequestKey("identity", str | None)
# Seconds a client may take to send a body (the app's settings.body_timeout).
BODY_TIMEOUT = web.AppKey("body_timeout", float)
# Paths a load balancer or Prometheus reach without credentials.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request) -> bytes:
    """The request's body, as sent.

    Raises:
        ProtocolError: 413 past MAX_BODY; 408 when it is not all there within the
            app's BODY_TIMEOUT (the connection then closes after the answer).
    """
    timeout = request.app[BODY_TIMEOUT]
    connection = request.protocol if isinstance(request.protocol, Connection) else None
    if connection is not None:
        connection.body_started()
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.body_too_large(MAX_BODY) from None
    except TimeoutError:
        # The rest will not be waited for: the connection ends once answered.
        request.protocol.close()
        request.content.feed_eof()
        raise errors.request_timeout("body", timeout) from None
    finally:
        if connection is not None:
            connection.body_ended()


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
    async def track_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
        """A connection in a request is not waiting for its client's headers."""
        connection = request.protocol
        if not isinstance(connection, Connection):  # served by a plain aiohttp runner
            return await handler(request)
        connection.request_started()
        try:
            return await handler(request)
        finally:
            connection.request_ended()

    @web.middleware
    async def json_rpc_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error answer is JSON-RPC, and nothing escapes as a traceback."""
        try:
            return await handler(request)
        except ProtocolError as error:
            return error_reply(error)
        except WorkerStopping:
            return error_reply(errors.worker_stopping())
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 405:
                error = errors.method_not_allowed(
                    request.method, request.path, exc.headers.get("Allow", "")
                )
            elif exc.status == 413:
                error = errors.body_too_large(MAX_BODY)
            else:
                error = errors.refused(exc.status, exc.text or exc.reason)
            return error_reply(error)
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return error_reply(errors.internal_error())

    @web.middleware
    async def rebinding_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """DNS rebinding: a page on another site must not reach a local gateway."""
        host = _hostname(f"//{request.host}")
        if not _allowed(host, allowed_hosts):
            raise errors.bad_host(request.host)
        origin = request.headers.get("Origin")
        if origin is not None and not _allowed(origin, allowed_origins):
            origin_host = _hostname(origin)
            if not (loopback and not settings.allowed_origins and origin_host in LOOPBACK_HOSTS):
                raise errors.bad_origin(origin)
        return await handler(request)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[IDENTITY] = None
        if authenticator is not None and request.path not in OPEN_PATHS:
            try:
                request[IDENTITY] = authenticator.identify(request.headers.get("Authorization"))
            except AuthError as exc:
                raise errors.unauthorized(str(exc), exc.error) from None
        return await handler(request)

    return [track_connection, json_rpc_errors, rebinding_guard, authenticate]


async def find_session(
    runtime: WorkerRuntime, session_id: str, identity: str | None
) -> SessionState:
    """The open session ``session_id`` if it is the caller's.

    Raises:
        ProtocolError: 404 if it is unknown, closed, or another identity's (which
            must look exactly like unknown).
    """
    session = runtime.projection.session(session_id)
    if session is None:
        # Not known here yet: it may have been opened on another worker a moment ago.
        await runtime.sync()
        session = runtime.projection.session(session_id)
    if session is None or session.user != identity:
        raise errors.unknown_session(session_id)
    return session


def unavailable(exc: Exception) -> ProtocolError:
    """503 with a retry hint: the log is down; nothing was accepted."""
    logger.warning("the session log is unavailable: %s", exc)
    return errors.log_unavailable()
