"""The 2026-07-28 revision's requests, served beside the older sessions on ``/mcp``.

Each request stands alone: no ``initialize``, no session; the inbound ladder has
already checked its ``_meta`` envelope and headers. The worker it reaches records it
(with the caller's identity, as it was sent), answers it, records the answer, and
sends it back as JSON, or as one SSE event when the client takes only SSE. So
``sessionlog replay`` audits stateless traffic as it does sessions. An answer is
carried on to its record even if the client goes away. ``subscriptions/listen`` is
the one long-lived request: :mod:`gateway.subscriptions` serves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from eventlog import LogUnavailable, StatelessAnswer, StatelessRequest

from .http import IDENTITY, unavailable
from .protocol import (
    ALL_VERSIONS,
    INTERNAL_ERROR,
    SERVER_INFO,
    error_response,
    errors,
    result_response,
)
from .protocol.headers import Accept
from .protocol.inbound import Inbound
from .registry import SessionRegistry
from .streams import KEEPALIVE, SEND_TIMEOUT
from .subscriptions import Subscriptions

__all__ = ["SERVER_INFO_KEY", "STATELESS", "StatelessHandler", "StatelessServer"]

logger = logging.getLogger("sessionlog.gateway")

# Methods whose results carry caching directives in the 2026-07-28 revision.
CACHEABLE = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)

# Where a 2026-07-28 server names itself: the ``_meta`` of its discover result.
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"

# Answers one stateless request (the built-in tools, or the upstream): the JSON-RPC
# answer for it.
StatelessHandler = Callable[[Inbound, str | None], Awaitable[dict[str, Any]]]


class StatelessServer:
    """Serves the 2026-07-28 POSTs of one worker."""

    def __init__(
        self,
        registry: SessionRegistry,
        handler: StatelessHandler,
        capabilities: dict[str, Any],
        subscriptions: Subscriptions,
    ) -> None:
        self.registry = registry
        self.handler = handler
        self.capabilities = capabilities
        self.subscriptions = subscriptions
        self._answering: set[asyncio.Task[bytes]] = set()  # kept from the GC

    async def __call__(
        self, request: web.Request, inbound: Inbound, accept: Accept
    ) -> web.StreamResponse:
        if inbound.kind == "notification":
            # The revision defines no client notifications over HTTP (a client cancels
            # by closing its stream); acknowledged and dropped, as the SDK does.
            return web.Response(status=202)
        if inbound.method == "subscriptions/listen":
            return await self.subscriptions.listen(request, inbound, accept)
        if not accept.json and not accept.sse:
            raise errors.not_acceptable("application/json or text/event-stream")
        identity = request[IDENTITY]
        answering = asyncio.ensure_future(self._answer(inbound, identity))
        self._answering.add(answering)
        answering.add_done_callback(self._answering.discard)
        try:
            payload = await asyncio.shield(answering)
        except LogUnavailable as exc:
            raise unavailable(exc) from None
        if accept.json:
            reply = orjson.loads(payload)
            status = errors.modern_status(reply["error"]["code"]) if "error" in reply else 200
            return web.Response(status=status, body=payload, content_type="application/json")
        async with sse_response(
            request, ping_interval=KEEPALIVE, send_timeout=SEND_TIMEOUT, allow_all_methods=True
        ) as stream:
            await stream.send(payload.decode(), event="message")
        return stream

    async def _answer(self, inbound: Inbound, identity: str | None) -> bytes:
        """Record the request, answer it, record the answer; the answer's bytes."""
        runtime = await self.registry.started()
        received = StatelessRequest(
            user=identity, payload=inbound.body, answered_by=runtime.worker_id
        )
        await runtime.log.append([received], worker=runtime.worker_id)
        if inbound.method == "server/discover":
            reply = result_response(inbound.id, self.discover())
        else:
            try:
                reply = await self.handler(inbound, identity)
            except LogUnavailable:
                raise
            except Exception:
                logger.exception("a stateless %s failed", inbound.method)
                reply = error_response(inbound.id, INTERNAL_ERROR, "Internal error")
        payload = orjson.dumps(_complete(reply, inbound.method))
        answer = StatelessAnswer(request=received.id, payload=payload)
        await runtime.log.append([answer], worker=runtime.worker_id)
        return payload

    def discover(self) -> dict[str, Any]:
        return {
            # Every version served, as the -32022 error lists them: a client that
            # cannot speak 2026-07-28 learns it may initialize instead.
            "supportedVersions": list(ALL_VERSIONS),
            "capabilities": self.capabilities,
            "resultType": "complete",
            "_meta": {SERVER_INFO_KEY: SERVER_INFO},
        }


def _complete(reply: dict[str, Any], method: str | None) -> dict[str, Any]:
    """A result as the revision wants it: it says whether it is final (``resultType``;
    ``input_required`` from an upstream passes through), and a cacheable one how
    long it may be cached (not at all, by anyone else, unless it says otherwise)."""
    result = reply.get("result")
    if isinstance(result, dict):
        result.setdefault("resultType", "complete")
        if method in CACHEABLE:
            result.setdefault("ttlMs", 0)
            result.setdefault("cacheScope", "private")
    return reply


STATELESS = web.AppKey("stateless", StatelessServer)
