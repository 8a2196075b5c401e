"""Built-in tools: what the gateway serves when no upstream MCP server is given."""

from __future__ import annotations

from typing import Any

from .protocol import INVALID_PARAMS, METHOD_NOT_FOUND, error_response, result_response

__all__ = ["HANDSHAKE_CAPABILITIES", "MODERN_CAPABILITIES", "TOOLS", "answer", "call_tool"]

# What the built-in mode declares: tools, and nothing it does not serve. To a session
# it never announces a change (no listChanged: the list is fixed); in the 2026-07-28
# revision changes reach clients only through subscriptions/listen, which the gateway
# serves from its log, so a change published there would reach them.
HANDSHAKE_CAPABILITIES: dict[str, Any] = {"tools": {}}
MODERN_CAPABILITIES: dict[str, Any] = {"tools": {"listChanged": True}}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "echo",
        "description": "Returns the text it is given.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    }
]

NAMES = frozenset(tool["name"] for tool in TOOLS)


def _text(text: str, *, error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": error}


def call_tool(name: str, arguments: Any) -> dict[str, Any]:
    """The result of a tools/call of a built-in tool. Its own failure is a result with
    ``isError`` (as MCP asks), not a JSON-RPC error."""
    text = arguments.get("text") if isinstance(arguments, dict) else None
    if not isinstance(text, str):
        return _text("echo needs a string argument 'text'", error=True)
    return _text(text)


def answer(message: dict[str, Any]) -> dict[str, Any] | None:
    """The built-in answer to a client message: the tools' methods are served, any
    other request is -32601; notifications and responses need no answer."""
    if "id" not in message or "method" not in message:
        return None
    request_id, method = message["id"], message["method"]
    params = message.get("params") or {}
    if method == "tools/list":
        return result_response(request_id, {"tools": TOOLS})
    if method == "tools/call":
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            return error_response(request_id, INVALID_PARAMS, "tools/call needs a tool name")
        if params["name"] not in NAMES:
            # A protocol error, as the specification lists it (not a tool's failure).
            return error_response(request_id, INVALID_PARAMS, f"Unknown tool: {params['name']}")
        return result_response(request_id, call_tool(params["name"], params.get("arguments") or {}))
    return error_response(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
