"""The client streams this worker holds: taking a session's stream over, sending it
the session's server messages as they are folded, and letting it go.

A session's stream is held on one worker at a time, the owner recorded in the log
(a claim). Server messages for it reach this worker through the tail and go out in
log order through a mailbox per stream; one this worker appended itself goes out as
soon as it is durable, when the tail has folded everything before it (no wait for
the tail to read it back). A client that reads slower than that (a thousand
messages, or 32 MiB, queued) is cut off (it resumes from its last event id). A
claim by another worker, or the session's close, ends the stream here. The bytes of
a held session's messages are kept here, within budgets (:mod:`.payloads`): no
other worker keeps them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from eventlog import (
    ClientMessage,
    LogUnavailable,
    OwnerClaimed,
    Record,
    ServerMessage,
    SessionClosed,
    SessionOpened,
)
from eventlog.events import CloseReason
from projections import SentMessage

from .mailbox import Mailbox
from .payloads import Payloads

if TYPE_CHECKING:
    from .runtime import WorkerRuntime

__all__ = ["HeldStreams", "Transport"]

logger = logging.getLogger("sessionlog.gateway")

# Limits
TAKEOVER_ATTEMPTS = 5  # compare-and-set rounds before a takeover gives up
# Server messages, and their bytes, queued for one stream before its client counts
# as stuck.
OUTBOX_LIMIT = 1000
OUTBOX_BYTES = 32 * 2**20


@runtime_checkable
class Transport(Protocol):
    """Where a held session's server messages go: an SSE stream, or anything alike."""

    async def deliver(self, message: SentMessage) -> None:
        """Send one server message (with its log position, its event id); the
        transport chooses which messages its stream carries."""

    async def disconnect(self) -> None: ...

    async def is_connected(self) -> bool: ...


@dataclass
class _Held:
    transport: Transport
    outbox: Mailbox[SentMessage]
    # True once this worker's claim is folded: from then on, a claim by another
    # worker or a close means the session left this worker. (Before, such records
    # are older news about an earlier stream of the same session.)
    owned: bool = False
    # The newest position put in the outbox: the tail skips what was sent at once.
    queued_upto: int = 0
    queued_bytes: int = 0  # of the messages in the outbox


class HeldStreams:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self._held: dict[str, _Held] = {}
        # Told the id of each session whose stream stops being held here.
        self.on_drop: list[Callable[[str], None]] = []
        # Told how long each server message for a stream held here took from its
        # append to being queued for the stream (the gateway's delivery-latency metric).
        self.delivery_observer: Callable[[float], None] | None = None
        # The bytes of the messages of the sessions held here (no other worker keeps
        # them): what their responders answer and resuming clients get resent.
        settings = runtime.settings
        self.payloads = Payloads(
            lambda: runtime.log,
            lambda: runtime.projection,
            per_session=settings.payload_cache_per_session,
            per_worker=settings.payload_cache_per_worker,
        )
        runtime.observers.append(self._react)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._held

    def session_ids(self) -> list[str]:
        return list(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def transport(self, session_id: str) -> Transport | None:
        held = self._held.get(session_id)
        return held.transport if held is not None else None

    async def open(
        self, session_id: str, transport: Transport, kind: str, user: str | None = None
    ) -> None:
        """Hold ``session_id``'s stream here and make this worker its owner.

        Opens the session in the log if it is not open; takes it over from its
        current owner otherwise (the client's newest stream wins).
        """
        runtime = self.runtime
        previous = self._held.pop(session_id, None)
        if previous is not None and previous.transport is not transport:
            await self._let_go(session_id, previous, disconnect=True)
        await runtime.sync()
        held = self._held[session_id] = _Held(
            transport=transport,
            outbox=Mailbox(f"session {session_id} outbox", self._sender(session_id)),
        )
        try:
            if runtime.projection.session(session_id) is None:
                opened = SessionOpened(session_id=session_id, transport=kind, user=user)
                await runtime.log.append([opened], worker=runtime.worker_id)
                await runtime.sync()
            for _ in range(TAKEOVER_ATTEMPTS):
                session = runtime.projection.session(session_id)
                current = session.holder if session is not None else None
                if current != runtime.worker_id:
                    claimed = await runtime.log.claim(
                        session_id, runtime.worker_id, expected=current
                    )
                    await runtime.sync()
                    if claimed != runtime.worker_id:
                        continue
                held.owned = True
                logger.info("added session %s", session_id, extra={"session_id": session_id})
                return
            raise LogUnavailable(f"could not take over session {session_id}: owner keeps changing")
        except BaseException:
            if self._held.get(session_id) is held:
                del self._held[session_id]
            raise

    async def release(self, session_id: str, reason: str) -> None:
        """Give up this worker's hold on the session without closing it, saying why."""
        await self.drop(session_id, disconnect=True)
        await self.runtime.log.release(session_id, self.runtime.worker_id, reason=reason)

    async def release_all(self, reason: str) -> None:
        """Let go of every stream held here (a stopping worker)."""
        held = list(self._held)
        for session_id in held:
            await self.drop(session_id, disconnect=True)
        # Concurrent, so group commit writes every release in one transaction.
        log, worker = self.runtime.log, self.runtime.worker_id
        await asyncio.gather(*(log.release(each, worker, reason=reason) for each in held))

    async def close(self, session_id: str, reason: CloseReason, *, if_held: bool = False) -> None:
        """Disconnect the stream, give up ownership, record why the session closed.

        ``if_held``: only if this worker still holds the session in the log. A stream
        that ended here (its client gone, a send failed) leaves the session to the
        worker that took it over meanwhile, while this one was frozen or cut off.
        """
        runtime = self.runtime
        await self.drop(session_id, disconnect=True)
        released = await runtime.log.release(session_id, runtime.worker_id)
        if if_held and not released:
            return
        await runtime.sync()
        if runtime.projection.session(session_id) is not None:
            closed = SessionClosed(session_id=session_id, reason=reason)
            await runtime.log.append([closed], worker=runtime.worker_id)
            await runtime.sync()
            logger.info(
                "removed session %s (%s)", session_id, reason, extra={"session_id": session_id}
            )

    async def close_disconnected(self) -> None:
        """Close the sessions whose client went away without a word."""
        for session_id, held in list(self._held.items()):
            if not await held.transport.is_connected():
                await self.close(session_id, "disconnected", if_held=True)

    async def drop(self, session_id: str, *, disconnect: bool) -> None:
        held = self._held.pop(session_id, None)
        if held is not None:
            await self._let_go(session_id, held, disconnect=disconnect)

    async def _let_go(self, session_id: str, held: _Held, *, disconnect: bool) -> None:
        self.payloads.forget(session_id)
        for told in self.on_drop:
            told(session_id)
        await held.outbox.close()
        if disconnect:
            try:
                await held.transport.disconnect()
            except Exception:
                logger.exception("disconnecting a transport failed")

    def send_appended(
        self, session_id: str, message: SentMessage, first: int, since: float
    ) -> None:
        """Send a server message this worker appended (in a batch starting at log
        position ``first``, at ``since`` on the runtime's clock) to the session's
        stream if it is held here, now that it is durable. Only if the tail has
        folded everything before the batch, so the stream keeps log order; otherwise
        the tail sends it when it gets there."""
        held = self._held.get(session_id)
        if held is not None:
            self.payloads.keep(session_id, message.position, message.payload)
        if held is not None and held.owned and self.runtime.projection.position >= first - 1:
            self._queue(session_id, held, message, since)

    def _queue(self, session_id: str, held: _Held, message: SentMessage, since: float) -> None:
        if message.position <= held.queued_upto:
            return  # sent at once already (or folded before it was)
        held.queued_upto = message.position
        runtime = self.runtime
        if self.delivery_observer is not None:
            self.delivery_observer(max(0.0, runtime.clock() - since))
        held.outbox.put(message)
        held.queued_bytes += len(message.payload)
        if len(held.outbox) > OUTBOX_LIMIT or held.queued_bytes > OUTBOX_BYTES:
            # The client reads slower than it is sent to: end its stream rather
            # than queue without bound. It may resume from its last event id.
            logger.warning(
                "session %s: client too slow; ending its stream",
                session_id,
                extra={"session_id": session_id},
            )
            runtime.spawn_recorded(session_id, self.release(session_id, "slow_client"))

    def _react(self, record: Record) -> None:
        event = record.event
        session_id = getattr(event, "session_id", None)
        held = self._held.get(session_id) if session_id is not None else None
        if held is None:
            return
        runtime = self.runtime
        if isinstance(event, ServerMessage):
            self.payloads.keep(session_id, record.position, event.payload)
            sent = SentMessage(record.position, event.payload, event.reply_to)
            self._queue(session_id, held, sent, record.at)
        elif isinstance(event, ClientMessage):
            if event.answered_by is None:  # this worker's to answer, as the owner
                self.payloads.keep(session_id, record.position, event.payload)
        elif held.owned and (
            isinstance(event, SessionClosed)
            or (
                isinstance(event, OwnerClaimed)
                and event.role == "worker"
                and event.owner != runtime.worker_id
            )
        ):
            # Closed, or its client opened a newer stream on another worker.
            runtime.spawn(self.drop(session_id, disconnect=True))

    def _sender(self, session_id: str) -> Callable[[SentMessage], Awaitable[None]]:
        async def send(message: SentMessage) -> None:
            held = self._held.get(session_id)
            if held is None:
                return
            held.queued_bytes -= len(message.payload)
            try:
                await held.transport.deliver(message)
            except Exception as exc:
                logger.info(
                    "session %s: transport failed (%s); closing it",
                    session_id,
                    exc,
                    extra={"session_id": session_id},
                )
                closing = self.close(session_id, "disconnected", if_held=True)
                self.runtime.spawn_recorded(session_id, closing)

        return send
