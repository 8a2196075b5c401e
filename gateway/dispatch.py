"""Dispatch: how the gateway answers each client message it owns."""

from __future__ import annotations

from typing import Any

from .protocol import INVALID_PARAMS, METHOD_NOT_FOUND, error_response, result_response
from .registry import SessionRegistry
from .tools import TOOLS, call_tool
from .worker import HandlerContext

__all__ = ["Dispatcher"]


class Dispatcher:
    """initialize and ping as the registry answers them; tools from the built-ins."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream_url = upstream
        # Set once the registry that calls this dispatcher exists (each needs the other).
        self.registry: SessionRegistry | None = None

    async def close(self) -> None:
        pass

    async def __call__(self, message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any] | None:
        if not isinstance(message, dict) or "id" not in message or "method" not in message:
            return None  # notifications and responses need no answer
        request_id, method = message["id"], message["method"]
        params = message.get("params") or {}
        if method in ("initialize", "ping"):
            assert self.registry is not None
            return await self.registry.answer_default(message, ctx)
        if method == "tools/list":
            return result_response(request_id, {"tools": TOOLS})
        if method == "tools/call":
            if not isinstance(params, dict) or not isinstance(params.get("name"), str):
                return error_response(request_id, INVALID_PARAMS, "tools/call needs a tool name")
            return result_response(
                request_id, call_tool(params["name"], params.get("arguments") or {})
            )
        return error_response(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
