"""Built-in tools: what the gateway serves when no upstream MCP server is given."""

from __future__ import annotations

from typing import Any

__all__ = ["TOOLS", "call_tool"]

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


def _text(text: str, *, error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": error}


def call_tool(name: str, arguments: Any) -> dict[str, Any]:
    """The result of a tools/call. A tool's own failure is a result with
    ``isError`` (as MCP asks), not a JSON-RPC error."""
    if name != "echo":
        return _text(f"Unknown tool: {name}", error=True)
    text = arguments.get("text") if isinstance(arguments, dict) else None
    if not isinstance(text, str):
        return _text("echo needs a string argument 'text'", error=True)
    return _text(text)
