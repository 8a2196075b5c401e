"""The upstream's changes, relayed to the log for ``subscriptions/listen`` streams.

With an upstream that speaks 2026-07-28, one worker at a time holds a
``subscriptions/listen`` stream to it, for every list change it announces, and
appends each change as a :class:`ChangePublished`: every worker's listeners get it
from the log, in log order, resumable by position. Which worker is the log's say
(the "listener" claim on :data:`RELAY_KEY`): a worker starting while nobody holds
it takes it, and a worker that sees the holder dead (at a heartbeat) claims it in
its place. It waits for the first 2026-07-28 request the log shows (from any
worker) before it asks the upstream anything, so an upstream behind handshake-era
clients only never hears of it. A dropped stream is opened again after a delay,
which doubles up to a cap. Changes announced while no stream is open are missed
(the revision offers no replay), which is what a level trigger allows: a listener
refetches on the next.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from eventlog import ChangePublished, LogUnavailable, OwnerClaimed, Record, StatelessRequest

from .protocol import ProtocolError
from .protocol.headers import METHOD_HEADER
from .protocol.versions import MODERN_VERSIONS
from .runtime import WorkerRuntime
from .subscriptions import SUBSCRIPTION_ID_KEY
from .upstream import OnMessage, UpstreamError
from .upstream_stateless import UpstreamStateless

__all__ = ["RELAY_KEY", "ChangesRelay"]

logger = logging.getLogger("sessionlog.gateway")

# The name the relay is claimed under: no session has it.
RELAY_KEY = "sessionlog:upstream-changes"
# Timeouts
RETRY_FIRST = 1.0  # s before a dropped stream is opened again; doubled each time
RETRY_MAX = 30.0  # s at most between attempts


class ChangesRelay:
    """Holds the upstream's listen stream when the log says this worker should."""

    def __init__(self, backend: UpstreamStateless) -> None:
        self.backend = backend
        self.holder: str | None = None
        self._runtime: WorkerRuntime | None = None
        self._task: asyncio.Task[None] | None = None
        self._claiming: set[asyncio.Task[None]] = set()  # kept from the GC
        self._wanted = asyncio.Event()  # set once a 2026-07-28 request is folded

    def attach(self, runtime: WorkerRuntime) -> None:
        """Follow the log's claims and dead workers; claim the relay if nobody has."""
        self._runtime = runtime
        runtime.observers.append(self._folded)
        runtime.housekeeping.dead_worker_observers.append(self._workers_died)
        self._claim(None)

    async def close(self) -> None:
        tasks = [*self._claiming, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _claim(self, expected: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._claimed(expected))
        self._claiming.add(task)
        task.add_done_callback(self._claiming.discard)

    async def _claimed(self, expected: str | None) -> None:
        runtime = self._runtime
        assert runtime is not None
        try:
            holder = await runtime.log.claim(
                RELAY_KEY, runtime.worker_id, expected, role="listener"
            )
        except LogUnavailable as exc:
            logger.warning("the upstream's changes: not claimed: %s", exc)
            return
        self._held_by(holder)
        if holder is not None and holder != runtime.worker_id:
            alive = runtime.projection.is_alive(holder, runtime.clock(), runtime.worker_ttl)
            if not alive and expected != holder:
                self._claim(holder)  # held by a worker that is gone already

    def _folded(self, record: Record) -> None:
        event = record.event
        if isinstance(event, OwnerClaimed) and event.session_id == RELAY_KEY:
            self._held_by(event.owner)
        elif isinstance(event, StatelessRequest):
            self._wanted.set()

    def _workers_died(self, dead: set[str]) -> None:
        if self.holder in dead:
            self._claim(self.holder)

    def _held_by(self, holder: str | None) -> None:
        runtime = self._runtime
        assert runtime is not None
        self.holder = holder
        mine = holder == runtime.worker_id
        if mine and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._relay(runtime))
        elif not mine and self._task is not None:
            self._task.cancel()  # another worker took over (it saw this one as dead)
            self._task = None

    async def _relay(self, runtime: WorkerRuntime) -> None:
        await self._wanted.wait()
        delay = RETRY_FIRST
        while True:
            try:
                if await self.backend.modern():
                    request = self.backend.listen_request()
                    if request is None:
                        return  # the upstream announces no changes
                    await self.backend.upstream.subscribe(
                        orjson.dumps(request),
                        {METHOD_HEADER: "subscriptions/listen"},
                        MODERN_VERSIONS[0],
                        self._recorder(runtime),
                    )
                    delay = RETRY_FIRST  # it was open: start counting again
                else:
                    return  # an older upstream: nothing to relay
            except (UpstreamError, LogUnavailable, ProtocolError) as exc:
                # ProtocolError: modern() could not reach the upstream to ask.
                logger.warning("the upstream's changes: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _recorder(self, runtime: WorkerRuntime) -> OnMessage:
        async def record(message: dict[str, Any]) -> None:
            method = message.get("method")
            if not isinstance(method, str) or method == "notifications/subscriptions/acknowledged":
                return
            if "id" in message:
                return  # the stream's final result: it ends next
            params = message.get("params")
            if isinstance(params, dict) and isinstance(params.get("_meta"), dict):
                # The upstream's subscription id is the gateway's, not its listeners'.
                params["_meta"].pop(SUBSCRIPTION_ID_KEY, None)
                if not params["_meta"]:
                    del params["_meta"]
            change = ChangePublished(payload=orjson.dumps(message))
            await runtime.log.append([change], worker=runtime.worker_id)

        return record
