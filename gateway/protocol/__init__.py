"""MCP protocol constants and the JSON-RPC shapes the gateway answers with."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_VERSION",
    "METHOD_NOT_FOUND",
    "MISSING_PROTOCOL_VERSION",
    "PARSE_ERROR",
    "SERVER_CAPABILITIES",
    "SERVER_INFO",
    "SUPPORTED_VERSIONS",
    "error_response",
    "negotiate_version",
    "result_response",
]

# JSON-RPC 2.0 error codes, and the reference gateway's code for an initialize
# request without a protocol version.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
MISSING_PROTOCOL_VERSION = -32002

# Newest first: a client asking for a version we do not know is offered the newest.
SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_VERSION = SUPPORTED_VERSIONS[0]


def _version() -> str:
    try:
        return version("sessionlog")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0"


SERVER_INFO = {"name": "sessionlog", "version": _version()}
SERVER_CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "logging": {},
    "completions": {},
}


def negotiate_version(requested: str) -> str:
    """The version to answer an initialize with: the client's if we speak it."""
    return requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION


def result_response(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}
