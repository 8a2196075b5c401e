"""The MCP wire, sans I/O: versions and eras, JSON-RPC shapes, the inbound
classification ladder, header parsing, every error's HTTP status and body, and the
SSE codec. Nothing here imports aiohttp or the log; the transports are thin
adapters over it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import ProtocolError
from .jsonrpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_PROTOCOL_VERSION,
    PARSE_ERROR,
    UNAUTHORIZED,
    UNSUPPORTED_PROTOCOL_VERSION,
    error_response,
    result_response,
)
from .versions import (
    ALL_VERSIONS,
    ASSUMED_VERSION,
    HANDSHAKE_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_VERSIONS,
    PRIMING_SINCE,
    negotiate_version,
)

__all__ = [
    "ALL_VERSIONS",
    "ASSUMED_VERSION",
    "HANDSHAKE_VERSIONS",
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_HANDSHAKE_VERSION",
    "METHOD_NOT_FOUND",
    "MISSING_PROTOCOL_VERSION",
    "MODERN_VERSIONS",
    "PARSE_ERROR",
    "PRIMING_SINCE",
    "SERVER_INFO",
    "UNAUTHORIZED",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "ProtocolError",
    "error_response",
    "negotiate_version",
    "result_response",
]


def _version() -> str:
    try:
        return version("sessionlog")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0"


SERVER_INFO = {"name": "sessionlog", "version": _version()}
