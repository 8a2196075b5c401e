"""``subscriptions/listen`` (2026-07-28): streams of change notifications, fed from
the log.

A change is a :class:`ChangePublished` record, appended by whichever worker learnt of
it (from the upstream, say). Every worker folds the log, so a listener on any worker
gets every change, in log order. Each event's id is the change's log position: a
listener whose stream broke sends its ``subscriptions/listen`` again with
``Last-Event-ID``, on any worker, and gets what it missed before what is new (beyond
the specification, which says a dropped listen stream is not resumable). A listener
gets only what it asked for and the gateway agreed to honor (its acknowledgement,
the stream's first event, says which).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from eventlog import ChangePublished, LogUnavailable, Record, StatelessRequest

from .http import IDENTITY, unavailable
from .protocol import errors, result_response
from .protocol.headers import LAST_EVENT_ID, Accept, parse_event_id
from .protocol.inbound import Inbound
from .reading import records
from .registry import SessionRegistry
from .streams import KEEPALIVE, SEND_TIMEOUT, StreamLimits

__all__ = ["LISTEN_FILTERS", "SUBSCRIPTION_ID_KEY", "Subscriptions"]

logger = logging.getLogger("sessionlog.gateway")

SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
# Filter key -> the notification it lets through (and the capability it needs).
LISTEN_FILTERS = {
    "toolsListChanged": ("notifications/tools/list_changed", "tools"),
    "promptsListChanged": ("notifications/prompts/list_changed", "prompts"),
    "resourcesListChanged": ("notifications/resources/list_changed", "resources"),
}
# Limits
LISTENER_BACKLOG = 1000  # changes queued for one listener before its stream is ended


class Subscriptions:
    """The listen streams one worker holds, and what it honors of their filters."""

    def __init__(
        self,
        registry: SessionRegistry,
        capabilities: Callable[[], dict[str, Any]],
        limits: StreamLimits,
    ) -> None:
        self.registry = registry
        self.capabilities = capabilities
        self.limits = limits
        self._listeners: set[asyncio.Queue[Record | None]] = set()

    def attach(self) -> None:
        """Start hearing of changes from the worker's tail (once it is running)."""
        self.registry.runtime.observers.append(self._observe)

    def close(self) -> None:
        """End every listen stream gracefully: each sends its final result."""
        for listener in self._listeners:
            listener.put_nowait(None)

    def _observe(self, record: Record) -> None:
        if not isinstance(record.event, ChangePublished):
            return
        for listener in list(self._listeners):
            if listener.qsize() >= LISTENER_BACKLOG:
                # Its client reads slower than changes come: end the stream, which it
                # may resume from its last event id, rather than queue without bound.
                self._listeners.discard(listener)
                listener.put_nowait(None)
            else:
                listener.put_nowait(record)

    def honored(self, requested: dict[str, Any]) -> dict[str, Any]:
        """The part of a requested filter that this gateway serves: the list changes
        its capabilities announce. Resource subscriptions by URI are not honored (no
        change is published per resource yet); unknown keys are dropped."""
        capabilities = self.capabilities()
        return {
            key: True
            for key, (_, capability) in LISTEN_FILTERS.items()
            if requested.get(key) is True
            and isinstance(capabilities.get(capability), dict)
            and capabilities[capability].get("listChanged")
        }

    async def listen(
        self, request: web.Request, inbound: Inbound, accept: Accept
    ) -> web.StreamResponse:
        if not accept.sse:
            raise errors.not_acceptable("text/event-stream: a listen answer is a stream")
        requested = inbound.message["params"].get("notifications")
        if not isinstance(requested, dict):
            raise errors.invalid_params("notifications must be an object", inbound.id)
        resume = parse_event_id(request.headers.get(LAST_EVENT_ID))
        honored = self.honored(requested)
        admits = frozenset(LISTEN_FILTERS[key][0] for key in honored)
        meta = {SUBSCRIPTION_ID_KEY: inbound.id}
        identity = request[IDENTITY]
        listener: asyncio.Queue[Record | None] = asyncio.Queue()
        with self.limits.opened(request):
            try:
                runtime = await self.registry.started()
                received = StatelessRequest(
                    user=identity, payload=inbound.body, answered_by=runtime.worker_id
                )
                await runtime.log.append([received], worker=runtime.worker_id)
                # Heard from now on, so nothing falls between what is replayed and
                # what is live.
                self._listeners.add(listener)
                await runtime.sync()
                cutoff = runtime.projection.position
            except LogUnavailable as exc:
                self._listeners.discard(listener)
                raise unavailable(exc) from None
            try:
                async with sse_response(
                    request,
                    ping_interval=KEEPALIVE,
                    send_timeout=SEND_TIMEOUT,
                    allow_all_methods=True,
                ) as stream:
                    acknowledged = {
                        "jsonrpc": "2.0",
                        "method": "notifications/subscriptions/acknowledged",
                        "params": {"notifications": honored, "_meta": meta},
                    }
                    last = resume.position if resume is not None else cutoff
                    await stream.send(orjson.dumps(acknowledged).decode(), id=str(last))
                    if resume is not None:
                        missed = records(runtime.log, after=resume.position, until=cutoff)
                        async for record in missed:
                            last = await _send(stream, record, admits, meta, last)
                    while (record := await listener.get()) is not None:
                        last = await _send(stream, record, admits, meta, last)
                    final = result_response(inbound.id, {"resultType": "complete", "_meta": meta})
                    await stream.send(orjson.dumps(final).decode(), event="message")
            except LogUnavailable as exc:
                logger.warning("a listen stream ended: %s", exc)
            finally:
                self._listeners.discard(listener)
        return stream


async def _send(
    stream: Any, record: Record, admits: frozenset[str], meta: dict[str, Any], last: int
) -> int:
    """Send a change to a listener if it wants it and has not had it; the position
    it has had everything up to."""
    event = record.event
    if record.position <= last or not isinstance(event, ChangePublished):
        return last
    notification = orjson.loads(event.payload)
    if notification.get("method") in admits:
        params = notification.setdefault("params", {})
        params["_meta"] = {**params.get("_meta", {}), **meta}
        await stream.send(
            orjson.dumps(notification).decode(), id=str(record.position), event="message"
        )
    return record.position
