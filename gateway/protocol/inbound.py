"""What a POSTed MCP message is, decided without I/O: the classification ladder.

:func:`parse_message` reads one JSON-RPC 2.0 message from a body (both transports).
:func:`classify_post` runs Streamable HTTP's ladder over a POST's body and headers:
which era it speaks (by ``MCP-Protocol-Version``, else by a ``params._meta``
envelope), whether it is a request, a notification or a response, and whether it
passes that era's rules. The first failed rung raises a :class:`ProtocolError`
carrying its HTTP status and JSON-RPC error; what passes is an :class:`Inbound`
that keeps the body's bytes as the client sent them, for the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from . import errors
from .headers import (
    METHOD_HEADER,
    NAME_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
    decode_header_value,
    parse_session_id,
)
from .versions import ASSUMED_VERSION, HANDSHAKE_VERSIONS, MODERN_VERSIONS, Era

__all__ = [
    "CAPABILITIES_KEY",
    "CLIENT_INFO_KEY",
    "NAME_BEARING",
    "VERSION_KEY",
    "Envelope",
    "Inbound",
    "Kind",
    "check_initialize",
    "classify_post",
    "parse_message",
]

Kind = Literal["request", "notification", "response"]

# The 2026-07-28 per-request envelope: keys of ``params._meta``.
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
# Methods whose target a 2026-07-28 client mirrors in Mcp-Name, by the param holding it.
NAME_BEARING: Mapping[str, str] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
}
# Headers that route a request: a second copy would let two readers disagree.
_ROUTING = (VERSION_HEADER.lower(), METHOD_HEADER.lower(), NAME_HEADER.lower())
# Limits
# Levels of arrays and objects in a client message: deeper ones cannot be stored
# (msgspec, encoding a recorded event, runs out of stack before orjson's 1024).
MAX_DEPTH = 128

# What a 2026-07-28 tools/call mirrors of its arguments (checked by the server that
# knows the tool's schema).
PARAM_HEADER_PREFIX = "mcp-param-"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A 2026-07-28 request's own description of its client."""

    protocol_version: str
    client_info: Any
    capabilities: Any


@dataclass(frozen=True, slots=True)
class Inbound:
    """A POSTed message that passed its era's ladder."""

    era: Era
    version: str  # the protocol version it speaks
    kind: Kind
    message: dict[str, Any]
    body: bytes  # as received
    session_id: str | None  # handshake era: the session it belongs to (None: initialize)
    envelope: Envelope | None = None  # modern era, requests
    # Modern era, requests: the headers that route it (Mcp-Method, Mcp-Name,
    # Mcp-Param-*), as sent, for whoever it is forwarded to.
    routing: tuple[tuple[str, str], ...] = ()

    @property
    def method(self) -> str | None:
        return self.message.get("method")

    @property
    def id(self) -> Any:
        return self.message.get("id")


def _depth(value: Any) -> int:
    """How many levels of arrays and objects ``value`` has (without recursing)."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        level.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return deepest


def parse_message(body: bytes) -> tuple[dict[str, Any], Kind]:
    """One JSON-RPC 2.0 message and its kind.

    Raises:
        ProtocolError: 400/-32700 not JSON (nested past orjson's 1024 levels
            included), 400/-32600 not one JSON-RPC 2.0 message (a batch, a bad id
            or method, nested past MAX_DEPTH).
    """
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.parse_error() from None
    if _depth(message) > MAX_DEPTH:
        raise errors.too_deep(MAX_DEPTH)
    if isinstance(message, list):
        raise errors.invalid_request("batches are not supported")
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise errors.invalid_request("not a JSON-RPC 2.0 message")
    request_id = message.get("id", 0)
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        raise errors.invalid_request("id must be a string or a number")
    if "method" in message:
        if not isinstance(message["method"], str):
            raise errors.invalid_request("method must be a string")
        kind: Kind = "request" if "id" in message else "notification"
    elif "id" in message and ("result" in message or "error" in message):
        kind = "response"
    else:
        raise errors.invalid_request("neither a request nor a response")
    return message, kind


def check_initialize(message: dict[str, Any]) -> None:
    """A handshake-era ``initialize`` must name a protocol version, and what it records
    must be objects.

    Raises:
        ProtocolError: 400/-32002 without a protocol version, 400/-32602 with
            capabilities or clientInfo that is not an object.
    """
    if message.get("method") != "initialize":
        return
    params = message.get("params")
    if not isinstance(params, dict) or not params.get("protocolVersion"):
        raise errors.missing_protocol_version(message.get("id"))
    for name in ("capabilities", "clientInfo"):
        # Recorded in the log as objects: anything else would be a record no
        # worker can read back.
        if params.get(name) is not None and not isinstance(params[name], dict):
            raise errors.invalid_params(f"{name} must be an object", message.get("id"))


def _meta(message: dict[str, Any]) -> Any:
    params = message.get("params")
    return params.get("_meta") if isinstance(params, dict) else None


def classify_post(body: bytes, headers: Iterable[tuple[str, str]]) -> Inbound:
    """Run the ladder over a Streamable HTTP POST (``headers``: the raw pairs, so a
    repeated header is seen)."""
    folded: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in headers:
        key = name.lower()
        if key in folded:
            repeated.add(key)
        folded[key] = value
    message, kind = parse_message(body)
    session_id = parse_session_id(folded.get(SESSION_HEADER.lower()))
    version = folded.get(VERSION_HEADER.lower())
    if _is_modern(message, version, session_id):
        return _modern(message, kind, body, folded, repeated)
    return _handshake(message, kind, body, version, session_id)


def _is_modern(message: dict[str, Any], version: str | None, session_id: str | None) -> bool:
    """The era: the version header names it; without one, a sessionless message with a
    2026 envelope is modern (and then told its header is missing); a version we do
    not know is a modern request's to be told about, unless it has a session or opens one."""
    if version in MODERN_VERSIONS:
        return True
    if session_id is not None or message.get("method") == "initialize":
        return False
    if version is None:
        meta = _meta(message)
        return isinstance(meta, dict) and meta.get(VERSION_KEY) in MODERN_VERSIONS
    return version not in HANDSHAKE_VERSIONS


def _handshake(
    message: dict[str, Any], kind: Kind, body: bytes, version: str | None, session_id: str | None
) -> Inbound:
    if version is not None and version not in HANDSHAKE_VERSIONS:
        raise errors.unsupported_version_header(version, HANDSHAKE_VERSIONS)
    check_initialize(message)
    if message.get("method") == "initialize":
        if session_id is not None:
            raise errors.invalid_request(f"initialize opens a new session: omit {SESSION_HEADER}")
    elif session_id is None:
        raise errors.session_required()
    return Inbound("handshake", version or ASSUMED_VERSION, kind, message, body, session_id)


def _modern(
    message: dict[str, Any],
    kind: Kind,
    body: bytes,
    headers: dict[str, str],
    repeated: set[str],
) -> Inbound:
    request_id = message.get("id")
    header_version = headers.get(VERSION_HEADER.lower())
    if kind == "response":
        raise errors.invalid_request("a 2026-07-28 client sends no responses")
    if kind == "notification":
        if header_version not in MODERN_VERSIONS:
            raise errors.unsupported_modern_version(header_version)
        return Inbound("modern", header_version, kind, message, body, None)
    if repeated_routing := [name for name in _ROUTING if name in repeated]:
        raise errors.header_mismatch(
            f"{repeated_routing[0]} header appears more than once", request_id
        )
    meta = _meta(message)
    if header_version not in MODERN_VERSIONS and not isinstance(meta, dict):
        # Neither era's request: the version it names is what to tell it about.
        raise errors.unsupported_modern_version(header_version, request_id=request_id)
    if not isinstance(meta, dict):
        raise errors.invalid_params(
            f"params._meta must be an object carrying {VERSION_KEY!r} and {CAPABILITIES_KEY!r}",
            request_id,
        )
    if missing := [key for key in (VERSION_KEY, CAPABILITIES_KEY) if key not in meta]:
        raise errors.invalid_params(f"params._meta lacks {', '.join(missing)}", request_id)
    envelope_version = meta[VERSION_KEY]
    if header_version is None or header_version != envelope_version:
        raise errors.header_mismatch(
            f"{VERSION_HEADER} does not match params._meta's protocol version", request_id
        )
    method = message["method"]
    if headers.get(METHOD_HEADER.lower()) != method:
        raise errors.header_mismatch(f"{METHOD_HEADER} does not match the method", request_id)
    if (name_key := NAME_BEARING.get(method)) is not None:
        target = message["params"].get(name_key)
        if target is not None and decode_header_value(headers.get(NAME_HEADER.lower())) != target:
            raise errors.header_mismatch(
                f"{NAME_HEADER} does not match the request's {name_key!r}", request_id
            )
    if envelope_version not in MODERN_VERSIONS:
        raise errors.unsupported_modern_version(envelope_version, request_id=request_id)
    envelope = Envelope(envelope_version, meta.get(CLIENT_INFO_KEY), meta[CAPABILITIES_KEY])
    routing = tuple(
        (name, value)
        for name, value in headers.items()
        if name in (METHOD_HEADER.lower(), NAME_HEADER.lower())
        or name.startswith(PARAM_HEADER_PREFIX)
    )
    return Inbound("modern", envelope_version, kind, message, body, None, envelope, routing)
