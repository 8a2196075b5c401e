"""2026-07-28 requests through the upstream MCP server.

An upstream that speaks the revision (its own ``server/discover`` says so, asked
once) gets each request as the client sent it, bytes and routing headers
(``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``) alike, so what it checks and answers
is what the client sees; what it streams before the answer (progress) passes on.
Its ``server/discover`` answer passes on too, listing the handshake versions as well:
through the gateway a client may also initialize a session.

An upstream that speaks only the handshake versions is bridged: each request gets an
upstream session of its own (initialized with the client's envelope, ended after the
answer), so requests stay as independent as the revision makes them, and no two
clients' request ids can meet in one session. What the upstream streams before the
answer passes on; a request it makes of the client is refused at once (a 2026-07-28
client has no back channel to answer it on). ``server/discover`` is answered from
the upstream's initialize result, less the change notices the bridge cannot deliver.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from .protocol import (
    ALL_VERSIONS,
    HANDSHAKE_VERSIONS,
    INTERNAL_ERROR,
    LATEST_HANDSHAKE_VERSION,
    METHOD_NOT_FOUND,
    SERVER_INFO,
    error_response,
    errors,
    result_response,
)
from .protocol.inbound import CAPABILITIES_KEY, CLIENT_INFO_KEY, VERSION_KEY, Inbound
from .protocol.versions import MODERN_VERSIONS
from .stateless import SERVER_INFO_KEY, Exchange
from .subscriptions import LISTEN_FILTERS
from .upstream import Upstream, UpstreamError

__all__ = ["UpstreamStateless"]

DISCOVER_ID = "sessionlog-discover"
LISTEN_ID = "sessionlog-changes"
NO_BACK_CHANNEL = "a 2026-07-28 client cannot be asked: it has no back channel"


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

    async def ready(self) -> None:
        """Once the upstream has said which revisions it speaks: either way the
        gateway serves 2026-07-28 requests in front of it."""
        await self.modern()

    async def modern(self) -> bool:
        """Whether the upstream speaks 2026-07-28 itself (asked once)."""
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
        self, inbound: Inbound, identity: str | None, exchange: Exchange
    ) -> dict[str, Any]:
        if not await self.modern():
            return await self._bridged(inbound, exchange)
        try:
            reply = await self.upstream.exchange(
                inbound.body,
                inbound.message,
                inbound.version,
                dict(inbound.routing),
                on_message=exchange.send_related,
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

    async def _bridged(self, inbound: Inbound, exchange: Exchange) -> dict[str, Any]:
        """The answer of an upstream that speaks only the handshake versions, through a
        session opened for this one request."""
        envelope = inbound.envelope
        assert envelope is not None  # a request past the ladder has one
        params = {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": envelope.capabilities
            if isinstance(envelope.capabilities, dict)
            else {},
            "clientInfo": (
                envelope.client_info if isinstance(envelope.client_info, dict) else SERVER_INFO
            ),
        }
        session: str | None = None
        try:
            session, result = await self.upstream.open_session(params)
            exchange.upstream_session = session
            if inbound.method == "server/discover":
                return result_response(inbound.id, _discover_result(result))
            version = result.get("protocolVersion")
            version = version if isinstance(version, str) else None

            async def on_message(message: dict[str, Any]) -> None:
                if "method" in message and "id" in message:
                    refusal = error_response(message["id"], METHOD_NOT_FOUND, NO_BACK_CHANNEL)
                    await self.upstream.forward(session, refusal, protocol_version=version)
                else:
                    await exchange.send_related(message)

            reply = await self.upstream.forward(session, inbound.message, on_message, version)
            assert reply is not None  # a request always gets a response or an error raised
            return reply
        except UpstreamError as exc:
            return error_response(inbound.id, INTERNAL_ERROR, f"upstream unavailable: {exc}")
        finally:
            if session:
                await self.upstream.end_session(session)


def _discover_result(initialized: dict[str, Any]) -> dict[str, Any]:
    """``server/discover`` for a bridged upstream, from its initialize result: what
    it serves, less the change notices (``listChanged``, ``subscribe``) that the
    bridge cannot deliver."""
    capabilities = initialized.get("capabilities")
    declared = capabilities if isinstance(capabilities, dict) else {}
    served = {
        name: (
            {k: v for k, v in value.items() if k not in ("listChanged", "subscribe")}
            if isinstance(value, dict)
            else value
        )
        for name, value in declared.items()
    }
    result: dict[str, Any] = {
        "supportedVersions": list(ALL_VERSIONS),
        "capabilities": served,
        "_meta": {SERVER_INFO_KEY: initialized.get("serverInfo") or SERVER_INFO},
    }
    if isinstance(initialized.get("instructions"), str):
        result["instructions"] = initialized["instructions"]
    return result
