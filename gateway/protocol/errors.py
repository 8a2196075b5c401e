"""Every error the gateway answers with, in one place: the HTTP status, the JSON-RPC
error and the headers that go with each kind of failure.

A :class:`ProtocolError` is raised by the protocol core and the transports alike and
turned into one HTTP response at the edge; nothing else decides a status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .jsonrpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_PROTOCOL_VERSION,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    PARSE_ERROR,
    UNAUTHORIZED,
    UNSUPPORTED_PROTOCOL_VERSION,
    error_response,
)
from .versions import ALL_VERSIONS

__all__ = [
    "ProtocolError",
    "backlog_full",
    "bad_host",
    "bad_http",
    "bad_origin",
    "body_too_large",
    "conflicting_stream",
    "header_mismatch",
    "internal_error",
    "invalid_params",
    "invalid_request",
    "log_unavailable",
    "method_not_allowed",
    "missing_protocol_version",
    "modern_status",
    "not_acceptable",
    "parse_error",
    "refused",
    "request_timeout",
    "session_required",
    "too_deep",
    "too_many_connections",
    "too_many_sessions",
    "too_many_sessions_for_identity",
    "too_many_streams",
    "unauthorized",
    "unknown_session",
    "unsupported_content_type",
    "unsupported_modern_version",
    "unsupported_version_header",
    "upstream_unavailable",
    "worker_stopping",
]

# The 2026-07-28 revision maps these JSON-RPC codes to HTTP statuses, whoever raised
# them (the inbound ladder or a handler); any other code is answered with 200.
_MODERN_STATUS: Mapping[int, int] = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}


def modern_status(code: int) -> int:
    """The HTTP status of a 2026-07-28 answer carrying JSON-RPC error ``code``."""
    return _MODERN_STATUS.get(code, 200)


class ProtocolError(Exception):
    """A request the gateway refuses: an HTTP status and a JSON-RPC error body."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        data: Any = None,
        request_id: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id
        self.headers = dict(headers or {})

    def for_request(self, request_id: Any) -> ProtocolError:
        """The same error, answering the request ``request_id`` (known after parsing)."""
        self.request_id = request_id
        return self

    def body(self) -> bytes:
        return orjson.dumps(error_response(self.request_id, self.code, self.message, self.data))

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.code}, {self.message!r})"


# -- the message --------------------------------------------------------------------------


def parse_error() -> ProtocolError:
    return ProtocolError(400, PARSE_ERROR, "Parse error: the body is not JSON")


def too_deep(limit: int) -> ProtocolError:
    return invalid_request(f"nested deeper than {limit} levels")


def invalid_request(message: str, request_id: Any = None) -> ProtocolError:
    return ProtocolError(400, INVALID_REQUEST, f"Invalid Request: {message}", request_id=request_id)


def invalid_params(message: str, request_id: Any = None) -> ProtocolError:
    return ProtocolError(400, INVALID_PARAMS, f"Invalid params: {message}", request_id=request_id)


def missing_protocol_version(request_id: Any = None) -> ProtocolError:
    return ProtocolError(
        400, MISSING_PROTOCOL_VERSION, "initialize needs a protocolVersion", request_id=request_id
    )


def body_too_large(limit: int) -> ProtocolError:
    return ProtocolError(413, INVALID_REQUEST, f"the body is over {limit} bytes")


def unsupported_content_type() -> ProtocolError:
    return ProtocolError(415, INVALID_REQUEST, "Content-Type must be application/json")


def not_acceptable(needed: str) -> ProtocolError:
    return ProtocolError(406, INVALID_REQUEST, f"Accept must include {needed}")


def bad_http(message: str) -> ProtocolError:
    """A request aiohttp's HTTP parser refused (a malformed request line or header,
    headers over the size limit), before any handler saw it."""
    return ProtocolError(400, INVALID_REQUEST, f"Bad HTTP request: {message}")


def request_timeout(what: str, seconds: float) -> ProtocolError:
    return ProtocolError(408, INVALID_REQUEST, f"the {what} did not arrive within {seconds:g} s")


def refused(status: int, message: str) -> ProtocolError:
    """An HTTP-level refusal with no kind of its own (one aiohttp raised)."""
    return ProtocolError(status, INVALID_REQUEST, message)


def method_not_allowed(method: str, path: str, allowed: str) -> ProtocolError:
    return ProtocolError(
        405, INVALID_REQUEST, f"method {method} not allowed on {path}", headers={"Allow": allowed}
    )


# -- versions and headers -----------------------------------------------------------------


def unsupported_version_header(version: str, supported: tuple[str, ...]) -> ProtocolError:
    return ProtocolError(
        400,
        INVALID_REQUEST,
        f"unsupported MCP-Protocol-Version {version!r}; supported: {', '.join(supported)}",
    )


def unsupported_modern_version(
    requested: Any, supported: tuple[str, ...] = ALL_VERSIONS, request_id: Any = None
) -> ProtocolError:
    """A stateless request in a version we do not speak; ``data`` lists every one we
    do, so a client can pick one, or fall back to ``initialize`` if it lists only
    handshake-era versions."""
    return ProtocolError(
        400,
        UNSUPPORTED_PROTOCOL_VERSION,
        "Unsupported protocol version",
        data={"supported": list(supported), "requested": requested},
        request_id=request_id,
    )


def header_mismatch(message: str, request_id: Any = None) -> ProtocolError:
    return ProtocolError(400, HEADER_MISMATCH, message, request_id=request_id)


# -- sessions and streams -----------------------------------------------------------------


def session_required() -> ProtocolError:
    return invalid_request("the Mcp-Session-Id header is required: initialize first")


def unknown_session(session_id: str) -> ProtocolError:
    return ProtocolError(404, INVALID_REQUEST, f"unknown session {session_id}: initialize again")


def conflicting_stream() -> ProtocolError:
    return ProtocolError(
        409,
        INVALID_REQUEST,
        "this session already has a GET stream open; resume it with Last-Event-ID instead",
    )


def too_many_streams(limit: int) -> ProtocolError:
    return ProtocolError(
        429,
        INVALID_REQUEST,
        f"too many open streams: at most {limit} per identity",
        headers={"Retry-After": "5"},
    )


def too_many_sessions_for_identity(limit: int) -> ProtocolError:
    return ProtocolError(
        429,
        INVALID_REQUEST,
        f"too many open sessions: at most {limit} per identity; close some first",
        headers={"Retry-After": "5"},
    )


def backlog_full(waiting: int, budget: int) -> ProtocolError:
    """A session's client messages waiting for answers are at its byte budget: the
    message is refused, not accepted, until some are answered (429, not 413: the
    same message is accepted then)."""
    return ProtocolError(
        429,
        INVALID_REQUEST,
        f"the session has {waiting} bytes of messages waiting for answers (at most "
        f"{budget}); retry once they are answered",
        headers={"Retry-After": "1"},
    )


def too_many_sessions() -> ProtocolError:
    return ProtocolError(
        503, INTERNAL_ERROR, "too many open sessions; retry later", headers={"Retry-After": "5"}
    )


def too_many_connections(limit: int) -> ProtocolError:
    return ProtocolError(
        503,
        INTERNAL_ERROR,
        f"too many open connections: at most {limit} per worker; retry later",
        headers={"Retry-After": "1"},
    )


def upstream_unavailable(reason: str) -> ProtocolError:
    """The upstream MCP server cannot be asked what it serves (502, a retry hint)."""
    return ProtocolError(
        502, INTERNAL_ERROR, f"upstream unavailable: {reason}", headers={"Retry-After": "1"}
    )


def worker_stopping() -> ProtocolError:
    """This worker is stopping; another (or this one, restarted) will serve a retry."""
    return ProtocolError(
        503, INTERNAL_ERROR, "this worker is stopping; retry", headers={"Retry-After": "1"}
    )


def log_unavailable() -> ProtocolError:
    """The log is down; nothing was accepted."""
    return ProtocolError(
        503,
        INTERNAL_ERROR,
        "the session log is unavailable; retry",
        headers={"Retry-After": "1"},
    )


# -- the guards ---------------------------------------------------------------------------


def unauthorized(reason: str, error: str | None) -> ProtocolError:
    challenge = 'Bearer realm="sessionlog"'
    if error:
        challenge += f', error="{error}"'
    return ProtocolError(
        401, UNAUTHORIZED, f"Unauthorized: {reason}", headers={"WWW-Authenticate": challenge}
    )


def bad_host(host: str) -> ProtocolError:
    return ProtocolError(421, INVALID_REQUEST, f"Host {host!r} is not allowed")


def bad_origin(origin: str) -> ProtocolError:
    return ProtocolError(403, INVALID_REQUEST, f"Origin {origin!r} is not allowed")


def internal_error() -> ProtocolError:
    return ProtocolError(500, INTERNAL_ERROR, "Internal error")
