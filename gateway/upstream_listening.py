"""Listening to each session's upstream stream: which worker does it, and the doing.

An upstream MCP server may send a session's own messages (its requests to the client:
``sampling/createMessage``, ``elicitation/create``, ``roots/list``; notifications) on
the session's standalone GET stream, and drops them while no such stream is open. So
that stream is opened as soon as the upstream session is, before its initialize is
answered, and kept for the session's life whether or not a client stream is held
anywhere: every message is recorded in the log as a ServerMessage, which the worker
holding the client's stream (now or once one is opened) sends on.

Exactly one worker listens per session: the holder of its "listener" claim in the
log, a compare-and-set. The worker that opens the upstream session claims it; when
the listener dies, the living workers that notice it at their heartbeat all try to
claim it from the dead one, and the one that wins resumes the stream after the last
event id recorded from it. Messages are recorded under ids derived from their
upstream event, so two listeners overlapping for a moment record each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from eventlog import (
    LogUnavailable,
    OwnerClaimed,
    OwnerReleased,
    Record,
    ServerMessage,
    SessionClosed,
    UpstreamSessionOpened,
    derived_event_id,
    new_event_id,
)

from .runtime import WorkerRuntime
from .upstream import Upstream, UpstreamError, UpstreamSessionLost

__all__ = ["UpstreamListeners"]

logger = logging.getLogger("sessionlog.gateway")


@dataclass
class _Listening:
    upstream_session: str
    task: asyncio.Task[None]  # may have ended (the upstream has no stream): kept till
    # the log says otherwise, so a closed session's claim is let go of all the same
    opened: asyncio.Event  # set once its stream is open, or the listening ended


class UpstreamListeners:
    """This worker's part of the listening: a task for each session it is the
    listener of, started and stopped as the log says."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._runtime: WorkerRuntime | None = None
        self._listening: dict[str, _Listening] = {}
        self._chores: set[asyncio.Task[None]] = set()  # claims, kept from the GC

    def attach(self, runtime: WorkerRuntime) -> None:
        """Follow ``runtime``'s log from now on: listen where it names this worker, and
        take over from listeners that die."""
        self._runtime = runtime
        runtime.observers.append(self._folded)
        runtime.housekeeping.dead_worker_observers.append(self._workers_died)

    async def close(self) -> None:
        tasks = [listening.task for listening in self._listening.values()] + [*self._chores]
        self._listening.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def listen_here(self, session_id: str) -> None:
        """Make this worker the session's listener, and return once its stream is open
        (or the upstream has none, or it took longer than the upstream's timeout), so
        the upstream can send on it from then on."""
        runtime = self._attached()
        session = runtime.projection.session(session_id)
        current = session.listener if session is not None else None
        if current != runtime.worker_id:
            await runtime.log.claim(
                session_id, runtime.worker_id, expected=current, role="listener"
            )
        await runtime.sync()  # folding the claim starts the listening (see _folded)
        listening = self._listening.get(session_id)
        if listening is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listening.opened.wait(), self.upstream.timeout)

    def _attached(self) -> WorkerRuntime:
        if self._runtime is None:
            raise RuntimeError("UpstreamListeners.attach() has not been called")
        return self._runtime

    # -- following the log ---------------------------------------------------------

    def _folded(self, record: Record) -> None:
        event = record.event
        if isinstance(event, (UpstreamSessionOpened, SessionClosed)) or (
            isinstance(event, (OwnerClaimed, OwnerReleased)) and event.role == "listener"
        ):
            self._reconcile(event.session_id)

    def _reconcile(self, session_id: str) -> None:
        """Listen to the session's upstream stream here if and only if the log says
        this worker is its listener, on the upstream session it names."""
        runtime = self._attached()
        session = runtime.projection.session(session_id)
        wanted = (
            session.upstream_session
            if session is not None and session.listener == runtime.worker_id
            else None
        )
        listening = self._listening.get(session_id)
        if listening is not None and listening.upstream_session != wanted:
            del self._listening[session_id]
            listening.task.cancel()
            if session is None:  # closed: its claim is of no use to anyone now
                self._spawn(self._release(session_id))
                closed = runtime.projection.state.closed.get(session_id)
                if closed is None or closed.reason != "client":
                    # Expired or gone with its stream: end its upstream session too (a
                    # client's DELETE has ended it already), here, by the one listener.
                    self._spawn(self.upstream.end_session(listening.upstream_session))
        if wanted is not None and session_id not in self._listening:
            assert session is not None
            opened = asyncio.Event()
            task = asyncio.get_running_loop().create_task(
                self._listen(
                    session_id,
                    wanted,
                    session.upstream_version or session.protocol_version,
                    session.upstream_event_id,
                    opened,
                ),
                name=f"sessionlog-upstream-{session_id}",
            )
            self._listening[session_id] = _Listening(wanted, task, opened)

    def _workers_died(self, dead: set[str]) -> None:
        """Claim the listening of every session whose listener just died (the other
        living workers try too; the log's compare-and-set picks one)."""
        for session in self._attached().projection.state.sessions.values():
            if session.listener in dead and session.upstream_session is not None:
                self._spawn(self._take_over(session.session_id, session.listener))

    async def _take_over(self, session_id: str, dead: str) -> None:
        runtime = self._attached()
        while True:
            try:
                await runtime.log.claim(
                    session_id, runtime.worker_id, expected=dead, role="listener"
                )
                await runtime.sync()
                return
            except LogUnavailable as exc:
                logger.warning(
                    "session %s: cannot take over its upstream stream yet: %s",
                    session_id,
                    exc,
                    extra={"session_id": session_id},
                )
            await asyncio.sleep(runtime.settings.heartbeat_interval)
            session = runtime.projection.session(session_id)
            if session is None or session.listener != dead:
                return  # closed, or another worker took it over

    async def _release(self, session_id: str) -> None:
        runtime = self._attached()
        try:
            await runtime.log.release(session_id, runtime.worker_id, role="listener")
        except LogUnavailable as exc:  # only the owners' table keeps a stale row
            logger.debug("session %s: listening not released: %s", session_id, exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # -- listening -------------------------------------------------------------------

    async def _listen(
        self,
        session_id: str,
        upstream_session: str,
        protocol_version: str | None,
        after: str | None,
        opened: asyncio.Event,
    ) -> None:
        runtime = self._attached()

        async def record(message: dict[str, Any], event_id: str | None) -> None:
            payload = orjson.dumps(message)
            event = ServerMessage(
                # The same upstream event recorded by two listeners is one record.
                id=derived_event_id(session_id, upstream_session, event_id, payload)
                if event_id is not None
                else new_event_id(),
                session_id=session_id,
                payload=payload,
                upstream_event_id=event_id,
            )
            while True:
                try:
                    await runtime.log.append([event], worker=runtime.worker_id)
                    return
                except LogUnavailable as exc:
                    # The upstream waits meanwhile: nothing it sent is dropped here.
                    logger.warning(
                        "session %s: upstream message not recorded yet: %s",
                        session_id,
                        exc,
                        extra={"session_id": session_id},
                    )
                    await asyncio.sleep(runtime.settings.heartbeat_interval)

        try:
            await self.upstream.listen(
                upstream_session or None,
                record,
                protocol_version,
                last_event_id=after,
                on_open=opened.set,
            )
        except UpstreamSessionLost:
            session = runtime.projection.session(session_id)
            if session is not None and session.upstream_session == upstream_session:
                # The next message the client sends opens another.
                lost = UpstreamSessionOpened(session_id=session_id, upstream_session=None)
                with contextlib.suppress(LogUnavailable):
                    await runtime.log.append([lost], worker=runtime.worker_id)
        except UpstreamError as exc:
            logger.warning(
                "session %s: no upstream stream: %s",
                session_id,
                exc,
                extra={"session_id": session_id},
            )
        finally:
            opened.set()
