"""The 2026-07-28 revision's requests, served beside the older sessions on ``/mcp``.

Each request stands alone: no ``initialize``, no session; the inbound ladder has
already checked its ``_meta`` envelope and headers. The worker it reaches records it
(with the caller's identity, as it was sent), has its backend answer it (the
built-in tools, or the upstream), records the answer, and sends it back: as JSON,
or as an SSE stream when what comes before the answer (progress) is to be streamed
or the client takes only SSE. What comes before the answer is recorded too. So
``sessionlog replay`` audits stateless traffic as it does sessions. An answer is
carried on to its record even if the client goes away. ``subscriptions/listen`` is
the one long-lived request: :mod:`gateway.subscriptions` serves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from eventlog import LogUnavailable, StatelessAnswer, StatelessRequest

from . import tools
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

__all__ = [
    "SERVER_INFO_KEY",
    "STATELESS",
    "BuiltIn",
    "Exchange",
    "StatelessBackend",
    "StatelessServer",
    "discover_result",
]

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

# Sends a message about a request before its answer (progress, a log line).
SendRelated = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Exchange:
    """One request on its way through a backend: how it sends what comes before the
    answer, and what it tells the record of the answer."""

    send_related: SendRelated
    upstream_session: str | None = None  # the upstream session a bridge opened for it


class StatelessBackend(Protocol):
    """What answers 2026-07-28 requests: the built-in tools, or the upstream."""

    # What listen streams can honor (the capabilities that changes are published for).
    capabilities: dict[str, Any]

    async def ready(self) -> None:
        """Return once requests can be answered.

        Raises:
            ProtocolError: they cannot be now (an upstream that cannot be reached).
        """
        ...

    async def answer(
        self, inbound: Inbound, identity: str | None, exchange: Exchange
    ) -> dict[str, Any]:
        """The JSON-RPC answer to one request (``server/discover`` included)."""
        ...


def discover_result(capabilities: dict[str, Any]) -> dict[str, Any]:
    """What ``server/discover`` says of the gateway itself."""
    return {
        # Every version served, as the -32022 error lists them: a client that cannot
        # speak 2026-07-28 learns it may initialize instead.
        "supportedVersions": list(ALL_VERSIONS),
        "capabilities": capabilities,
        "_meta": {SERVER_INFO_KEY: SERVER_INFO},
    }


class BuiltIn:
    """The built-in tools, for 2026-07-28 requests."""

    capabilities = tools.MODERN_CAPABILITIES

    async def ready(self) -> None:
        pass

    async def answer(
        self, inbound: Inbound, identity: str | None, exchange: Exchange
    ) -> dict[str, Any]:
        if inbound.method == "server/discover":
            return result_response(inbound.id, discover_result(self.capabilities))
        reply = tools.answer(inbound.message)
        assert reply is not None  # a request always has an answer
        return reply


class StatelessServer:
    """Serves the 2026-07-28 POSTs of one worker."""

    def __init__(
        self, registry: SessionRegistry, backend: StatelessBackend, subscriptions: Subscriptions
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.subscriptions = subscriptions
        self._answering: set[asyncio.Task[bytes]] = set()  # kept from the GC

    async def __call__(
        self, request: web.Request, inbound: Inbound, accept: Accept
    ) -> web.StreamResponse:
        await self.backend.ready()
        if inbound.kind == "notification":
            # The revision defines no client notifications over HTTP (a client cancels
            # by closing its stream); acknowledged and dropped, as the SDK does.
            return web.Response(status=202)
        if inbound.method == "subscriptions/listen":
            return await self.subscriptions.listen(request, inbound, accept)
        if not accept.json and not accept.sse:
            raise errors.not_acceptable("application/json or text/event-stream")
        # What is sent before the answer, then None once it is recorded.
        related: asyncio.Queue[bytes | None] = asyncio.Queue()
        answering = asyncio.ensure_future(self._answer(inbound, request[IDENTITY], related))
        self._answering.add(answering)
        answering.add_done_callback(self._answering.discard)
        answering.add_done_callback(lambda _: related.put_nowait(None))
        try:
            first = await related.get()
            if first is None or not accept.sse:
                # An answer alone is JSON when the client takes JSON (fewer bytes); a
                # client that takes only JSON gets no related messages (they are recorded).
                payload = await asyncio.shield(answering)
                if accept.json:
                    reply = orjson.loads(payload)
                    code = reply["error"]["code"] if "error" in reply else None
                    status = errors.modern_status(code) if code is not None else 200
                    return web.Response(
                        status=status, body=payload, content_type="application/json"
                    )
        except LogUnavailable as exc:
            raise unavailable(exc) from None
        async with sse_response(
            request, ping_interval=KEEPALIVE, send_timeout=SEND_TIMEOUT, allow_all_methods=True
        ) as stream:
            while first is not None:
                await stream.send(first.decode(), event="message")
                first = await related.get()
            try:
                payload = await asyncio.shield(answering)
            except LogUnavailable as exc:
                unavailable(exc)  # the stream is open already: it ends without the answer
            else:
                await stream.send(payload.decode(), event="message")
        return stream

    async def _answer(
        self, inbound: Inbound, identity: str | None, related: asyncio.Queue[bytes | None]
    ) -> bytes:
        """Record the request, answer it, record the answer; the answer's bytes. What
        is sent about it on the way is recorded, then queued for the client."""
        runtime = await self.registry.started()
        received = StatelessRequest(
            user=identity, payload=inbound.body, answered_by=runtime.worker_id
        )
        await runtime.log.append([received], worker=runtime.worker_id)

        async def send_related(message: dict[str, Any]) -> None:
            payload = orjson.dumps(message)
            note = StatelessAnswer(request=received.id, payload=payload, final=False)
            await runtime.log.append([note], worker=runtime.worker_id)
            related.put_nowait(payload)

        exchange = Exchange(send_related)
        try:
            reply = await self.backend.answer(inbound, identity, exchange)
        except LogUnavailable:
            raise
        except Exception:
            logger.exception("a stateless %s failed", inbound.method)
            reply = error_response(inbound.id, INTERNAL_ERROR, "Internal error")
        payload = orjson.dumps(_complete(reply, inbound.method))
        answer = StatelessAnswer(
            request=received.id, payload=payload, upstream_session=exchange.upstream_session
        )
        await runtime.log.append([answer], worker=runtime.worker_id)
        return payload


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
