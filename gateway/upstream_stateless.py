"""2026-07-28 requests through the upstream MCP server.

An upstream that speaks the revision (its own ``server/discover`` says so, asked
once) gets each request as the client sent it, bytes and routing headers
(``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``) alike, so what it checks and answers
is what the client sees; what it streams before the answer (progress) passes on.
Its ``server/discover`` answer passes on too, listing the handshake versions as well:
through the gateway a client may also initialize a session. An upstream that speaks
only the handshake versions is not bridged yet: the gateway then answers 2026-07-28
requests with -32022 naming the handshake versions, and clients initialize instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from .protocol import HANDSHAKE_VERSIONS, INTERNAL_ERROR, SERVER_INFO, error_response, errors
from .protocol.inbound import CAPABILITIES_KEY, CLIENT_INFO_KEY, VERSION_KEY, Inbound
from .protocol.versions import MODERN_VERSIONS
from .stateless import SendRelated
from .subscriptions import LISTEN_FILTERS
from .upstream import Upstream, UpstreamError

__all__ = ["UpstreamStateless"]

DISCOVER_ID = "sessionlog-discover"
LISTEN_ID = "sessionlog-changes"


def _envelope() -> dict[str, Any]:
    """The gateway's own 2026-07-28 envelope, for what it asks the upstream itself."""
    return {
        VERSION_KEY: MODERN_VERSIONS[0],
        CAPABILITIES_KEY: {},
        CLIENT_INFO_KEY: SERVER_INFO,
    }


class UpstreamStateless:
    """The upstream, for 2026-07-28 requests."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        # What the upstream's discover declared: the changes listen streams can
        # honor (relayed to the log by :mod:`.upstream_changes`).
        self.capabilities: dict[str, Any] = {}
        self._modern: bool | None = None  # known once the upstream has answered
        self._asking = asyncio.Lock()

    async def serves(self) -> bool:
        async with self._asking:
            if self._modern is None:
                self._modern = await self._discovers()
        return self._modern

    def listen_request(self) -> dict[str, Any] | None:
        """A ``subscriptions/listen`` for every change the upstream announces (None:
        it announces none)."""
        wanted = {
            key: True
            for key, (_, capability) in LISTEN_FILTERS.items()
            if isinstance(self.capabilities.get(capability), dict)
            and self.capabilities[capability].get("listChanged")
        }
        if not wanted:
            return None
        return {
            "jsonrpc": "2.0",
            "id": LISTEN_ID,
            "method": "subscriptions/listen",
            "params": {"notifications": wanted, "_meta": _envelope()},
        }

    async def _discovers(self) -> bool:
        version = MODERN_VERSIONS[0]
        message = {
            "jsonrpc": "2.0",
            "id": DISCOVER_ID,
            "method": "server/discover",
            "params": {"_meta": _envelope()},
        }
        try:
            reply = await self.upstream.exchange(
                orjson.dumps(message), message, version, {"Mcp-Method": "server/discover"}
            )
        except UpstreamError as exc:
            # Not known yet: asked again on the next request.
            raise errors.upstream_unavailable(str(exc)) from None
        result = reply.get("result")
        versions = result.get("supportedVersions") if isinstance(result, dict) else None
        if not (isinstance(versions, list) and version in versions):
            return False
        assert isinstance(result, dict)
        capabilities = result.get("capabilities")
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        return True

    async def answer(
        self, inbound: Inbound, identity: str | None, send_related: SendRelated
    ) -> dict[str, Any]:
        try:
            reply = await self.upstream.exchange(
                inbound.body,
                inbound.message,
                inbound.version,
                dict(inbound.routing),
                on_message=send_related,
            )
        except UpstreamError as exc:
            return error_response(inbound.id, INTERNAL_ERROR, f"upstream unavailable: {exc}")
        result = reply.get("result")
        if inbound.method == "server/discover" and isinstance(result, dict):
            versions = result.get("supportedVersions")
            if isinstance(versions, list):
                result["supportedVersions"] = [
                    *versions,
                    *(v for v in HANDSHAKE_VERSIONS if v not in versions),
                ]
        return reply
