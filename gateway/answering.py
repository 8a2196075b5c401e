"""Answering client messages: recording them, answering each once and in order on
the worker that owns its session (or within its own request), and following a
request's answer for a client that resumes its stream.

A message recorded for a session waits in the log until the owner's responder
takes it from the tail; its answer and its outcome get ids derived from its own, so
two workers racing to answer it (a takeover) record one answer. A message a worker
answers within its request (Streamable HTTP's POST) is marked with that worker, and
falls to the session's owner only once that worker is seen dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from eventlog import (
    ClientMessage,
    Event,
    LogUnavailable,
    MessageHandled,
    Record,
    ServerMessage,
    SessionOpened,
    derived_event_id,
)
from projections import PendingMessage, SentMessage

from .errors import SessionNotFound
from .mailbox import Mailbox
from .protocol import INTERNAL_ERROR, error_response, errors

if TYPE_CHECKING:
    from .runtime import WorkerRuntime

__all__ = ["Answering", "HandlerContext", "MessageHandler", "RelatedSender"]

logger = logging.getLogger("sessionlog.gateway")

# Limits
# About what the fold keeps of one pending client message besides its bytes (its id,
# position, time, size): charged against the session's byte budget.
PENDING_ENTRY_BYTES = 256
# Seconds before a failed answer is retried, doubling up to the most.
ANSWER_RETRY_FIRST = 0.05
ANSWER_RETRY_MAX = 2.0

# Sends a server message related to the request being handled (a progress or log
# notification) to wherever that request's answer goes.
RelatedSender = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class HandlerContext:
    session_id: str
    server_id: str | None
    user: dict[str, Any]
    # Set while a handler answers one client message: that message's event id, and
    # how to send messages related to it before the answer.
    message_id: str | None = None
    send_related: RelatedSender | None = None


# Answers one client message: the reply to append, or None (notifications, responses).
MessageHandler = Callable[[dict[str, Any], HandlerContext], Awaitable[dict[str, Any] | None]]


@dataclass
class _Responder:
    """Answers one held session's client messages here, one at a time."""

    context: HandlerContext
    inbox: Mailbox[str]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Client messages queued or being handled, so none is queued twice.
    queued: set[str] = field(default_factory=set)
    # While the bytes of its pending messages are read back from the log (after a
    # takeover or a restart), the ids to queue, in log order, newer ones appended:
    # whether each is a request decides where it is queued.
    loading: list[str] | None = None


class Answering:
    def __init__(
        self,
        runtime: WorkerRuntime,
        handler: MessageHandler,
        at_once: Callable[[Any], bool] | None = None,
    ) -> None:
        self.runtime = runtime
        self.handler = handler
        # Which messages the handler answers at once, recording nothing itself and
        # calling out to nothing (see answer_at_once); none if not told.
        self.at_once = at_once or (lambda message: False)
        self._responders: dict[str, _Responder] = {}
        # Streams following one client message (resumed request streams), by its id.
        self._followers: dict[str, list[asyncio.Queue[SentMessage]]] = {}
        # The newest position of a client message recorded here: folded before a
        # session's backlog is measured, so this worker counts its own.
        self._recorded = 0
        runtime.observers.append(self._react)
        runtime.streams.on_drop.append(self._stop)

    # -- the owner's responders --------------------------------------------------

    async def respond(self, session_id: str, context: HandlerContext) -> None:
        """Answer ``session_id``'s client messages here until its stream is let go."""
        runtime = self.runtime
        if session_id not in runtime.streams:
            return
        responder = self._responders.get(session_id)
        if responder is None:
            inbox = Mailbox(f"session {session_id} inbox", self._handle(session_id))
            responder = self._responders[session_id] = _Responder(context, inbox)
        responder.context = context
        await runtime.sync()
        self.queue_pending(session_id)
        await responder.done.wait()

    def _stop(self, session_id: str) -> None:
        responder = self._responders.pop(session_id, None)
        if responder is not None:
            responder.done.set()
            self.runtime.spawn(responder.inbox.close())

    def queue_pending(self, session_id: str) -> None:
        """Queue the session's unanswered client messages that are this owner's to
        answer: all but those a live worker is answering within their request."""
        runtime = self.runtime
        session = runtime.projection.session(session_id)
        if session is None or session.holder != runtime.worker_id:
            return
        now = runtime.clock()
        due = [
            message_id
            for message_id, pending in session.pending.items()
            if pending.answered_by is None
            or not runtime.projection.is_alive(pending.answered_by, now, runtime.worker_ttl)
        ]
        self._queue(session_id, due)

    def queue_all_pending(self) -> None:
        """:meth:`queue_pending` for every session responded to here."""
        for session_id in list(self._responders):
            self.queue_pending(session_id)

    def answer_own_again(self) -> None:
        """Answer again, in the background, the messages this worker took to answer
        within their requests: after a rollback lost their answers nobody else answers
        them while this worker lives. (A request still in flight records the same
        answer: its id is derived from the message's.)"""
        runtime = self.runtime
        for session_id, session in runtime.projection.state.sessions.items():
            for message_id, pending in session.pending.items():
                if pending.answered_by == runtime.worker_id:
                    again = self._answer_again(session_id, message_id, pending)
                    runtime.spawn_recorded(session_id, again)

    async def _answer_again(
        self, session_id: str, message_id: str, pending: PendingMessage
    ) -> None:
        message = orjson.loads(await self._payload(session_id, pending))
        await self.answer(session_id, message_id, message, HandlerContext(session_id, None, {}))

    def _queue(
        self, session_id: str, message_ids: list[str], known: dict[int, bytes] | None = None
    ) -> None:
        """Queue client messages, in log order. Answers to the server's requests and
        notifications (cancellations) are handled at once, the rest in the inbox: the
        request waiting for one may be the inbox's current. Which is which takes the
        message's bytes: kept here, in ``known``, or first read back from the log."""
        responder = self._responders.get(session_id)
        if responder is None:
            return
        if responder.loading is not None:
            responder.loading.extend(message_ids)
            return
        session = self.runtime.projection.session(session_id)
        if session is None:
            return
        payloads = self.runtime.streams.payloads
        for index, message_id in enumerate(message_ids):
            pending = session.pending.get(message_id)
            if pending is None or message_id in responder.queued:
                continue
            payload = payloads.get(session_id, pending.position)
            if payload is None and known is not None:
                payload = known.get(pending.position)
            if payload is None:
                responder.loading = message_ids[index:]
                self.runtime.spawn(self._load(session_id, responder))
                return
            responder.queued.add(message_id)
            if _is_request(payload):
                responder.inbox.put(message_id)
            else:
                self.runtime.spawn(self._handle(session_id)(message_id))

    async def _load(self, session_id: str, responder: _Responder) -> None:
        """Read back the bytes of the messages ``responder`` is loading, then queue
        them and whatever arrived meanwhile, in order. If the log cannot be read,
        they stay pending: the next sweep queues them again."""
        known: dict[int, bytes] = {}
        try:
            session = self.runtime.projection.session(session_id)
            if session is not None and responder.loading is not None:
                wanted = [
                    session.pending[message_id]
                    for message_id in dict.fromkeys(responder.loading)
                    if message_id in session.pending
                ]
                payloads = self.runtime.streams.payloads
                for batch in payloads.batches(wanted):
                    known.update(await payloads.read(session_id, [m.position for m in batch]))
                for message in wanted:  # unreadable counts as a request (see _is_request)
                    known.setdefault(message.position, b"")
        except LogUnavailable as exc:
            responder.loading = None
            logger.warning(
                "session %s: pending messages not read: %s",
                session_id,
                exc,
                extra={"session_id": session_id},
            )
            return
        waiting, responder.loading = responder.loading or [], None
        self._queue(session_id, waiting, known)

    def _handle(self, session_id: str) -> Callable[[str], Awaitable[None]]:
        async def handle(message_id: str) -> None:
            responder = self._responders.get(session_id)
            try:
                session = self.runtime.projection.session(session_id)
                pending = session.pending.get(message_id) if session is not None else None
                if responder is None or pending is None:
                    return  # handled elsewhere, expired, or the session is gone
                delay = ANSWER_RETRY_FIRST
                # Retried with backoff while it is this responder's and unanswered,
                # rather than left to the next sweep (the handler may run again:
                # at least once, one answer recorded).
                while responder is self._responders.get(session_id):
                    try:
                        payload = await self._payload(session_id, pending)
                        message = orjson.loads(payload)
                        await self.answer(session_id, message_id, message, responder.context)
                        return
                    except LogUnavailable as exc:
                        if delay == ANSWER_RETRY_FIRST:  # once per message, not per try
                            logger.warning(
                                "session %s: reply not recorded yet, retrying: %s",
                                session_id,
                                exc,
                                extra={"session_id": session_id},
                            )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, ANSWER_RETRY_MAX)
                    session = self.runtime.projection.session(session_id)
                    pending = session.pending.get(message_id) if session is not None else None
                    if pending is None:
                        return  # answered after all, expired, or the session is gone
            finally:
                if responder is not None:
                    responder.queued.discard(message_id)

        return handle

    def _react(self, record: Record) -> None:
        event = record.event
        if isinstance(event, ServerMessage) and event.reply_to in self._followers:
            sent = SentMessage(record.position, event.payload, event.reply_to)
            for followed in self._followers[event.reply_to]:
                followed.put_nowait(sent)
        elif (
            isinstance(event, ClientMessage)
            and event.answered_by is None
            and event.session_id in self._responders
        ):
            session = self.runtime.projection.session(event.session_id)
            if session is not None and session.holder == self.runtime.worker_id:
                self._queue(event.session_id, [event.id], {record.position: event.payload})

    # -- recording and answering ---------------------------------------------------

    async def record(self, session_id: str, payload: bytes) -> None:
        """Record a client message for the session's owner to answer, wherever its
        stream is held: in order, exactly once, even if the owner reads it later.
        Durable when this returns.

        Raises:
            SessionNotFound: the session is not open on any worker.
            ProtocolError: 429, the session's waiting messages are at their budget.
        """
        runtime = self.runtime
        if runtime.projection.session(session_id) is None:
            # Not known here yet: it may have been opened elsewhere a moment ago.
            await runtime.sync()
            if runtime.projection.session(session_id) is None:
                raise SessionNotFound(session_id)
        await self._check_backlog(session_id, payload)
        event = ClientMessage(session_id=session_id, payload=payload)
        [position] = await runtime.log.append([event], worker=runtime.worker_id)
        self._recorded = max(self._recorded, position)

    async def _check_backlog(self, session_id: str, payload: bytes) -> None:
        """Refuse a message that would take the session's waiting client messages
        past its byte budget. Decided from the folded sizes, as every worker folds
        them, with every message this worker recorded folded first (another
        worker's, a few records behind, may be missed: one message more accepted).

        Raises:
            ProtocolError: 429, the backlog is full.
            LogUnavailable: the log cannot be read.
        """
        if self.runtime.projection.position < self._recorded:
            await self.runtime.sync()
        session = self.runtime.projection.session(session_id)
        if session is None:
            return
        budget = self.runtime.settings.pending_bytes_per_session
        # What every worker's fold keeps of each waiting message counts too, so a
        # flood of tiny messages is bounded as well as a few big ones.
        waiting = session.pending_bytes + len(session.pending) * PENDING_ENTRY_BYTES
        if waiting + len(payload) + PENDING_ENTRY_BYTES > budget:
            raise errors.backlog_full(waiting, budget)

    async def receive(self, session_id: str, payload: bytes, message: Any) -> None:
        """A client message for the session, arriving outside a request that could
        carry its answer (HTTP+SSE's POST). If this worker answers the session's
        messages and the handler answers this one at once, it is answered now, in
        the same append, and the reply goes to the stream once durable; otherwise it
        is recorded (:meth:`record`) for the owner. Durable when this returns.

        Raises:
            SessionNotFound: the session is not open on any worker.
        """
        responder = self._responders.get(session_id)
        if responder is not None and self.at_once(message):
            await self.answer_at_once(session_id, payload, message, responder.context)
        else:
            await self.record(session_id, payload)

    async def accept(
        self, session_id: str, payload: bytes, opening: SessionOpened | None = None
    ) -> tuple[str, int]:
        """Record a client message that this worker answers within its request (with
        the session's opening, in the same append, for an initialize); return its
        event id and log position. Durable when this returns."""
        runtime = self.runtime
        if opening is None:
            await self._check_backlog(session_id, payload)
        event = ClientMessage(session_id=session_id, payload=payload, answered_by=runtime.worker_id)
        events: list[Event] = [event] if opening is None else [opening, event]
        positions = await runtime.log.append(events, worker=runtime.worker_id)
        self._recorded = max(self._recorded, positions[-1])
        return event.id, positions[-1]

    async def answer(
        self,
        session_id: str,
        message_id: str,
        message: Any,
        ctx: HandlerContext,
        send_related: Callable[[SentMessage], Awaitable[None]] | None = None,
    ) -> SentMessage | None:
        """Run the handler on one recorded client message and record its outcome.

        The reply and the outcome have ids derived from the message's, so answering
        the same message twice (a takeover racing its first answerer) records one
        reply. Related messages the handler sends are recorded first and passed to
        ``send_related``. Returns the reply as recorded, or None (no reply due).
        """

        async def related(payload: dict[str, Any]) -> None:
            event = ServerMessage(
                session_id=session_id, payload=orjson.dumps(payload), reply_to=message_id
            )
            _, sent = await self._append(session_id, [event])
            if send_related is not None and sent is not None:
                try:
                    await send_related(sent)
                except (ConnectionError, RuntimeError, TimeoutError) as exc:
                    # The client went away; the message is in the log for its resume,
                    # and the handler goes on to its answer.
                    logger.debug("session %s: related message not sent: %s", session_id, exc)

        outcome = await self._outcome(session_id, message_id, message, ctx, related)
        _, reply = await self._append(session_id, outcome)
        return reply

    async def answer_at_once(
        self,
        session_id: str,
        payload: bytes,
        message: Any,
        ctx: HandlerContext,
        opening: SessionOpened | None = None,
    ) -> tuple[str, int, SentMessage | None]:
        """Record a client message together with its answer, in one append (with the
        session's opening, for an initialize): for a message :attr:`at_once` says the
        handler answers at once. Nothing is acknowledged before the append, so a
        crash before it loses nothing; what must be durable before the handler runs
        (a request forwarded upstream) goes through accept() and answer() instead.
        Returns the message's event id, its position, and the reply as recorded."""
        runtime = self.runtime
        event = ClientMessage(session_id=session_id, payload=payload, answered_by=runtime.worker_id)
        outcome = await self._outcome(session_id, event.id, message, ctx, None)
        events: list[Event] = [event, *outcome] if opening is None else [opening, event, *outcome]
        positions, reply = await self._append(session_id, events)
        return event.id, positions[len(events) - len(outcome) - 1], reply

    async def _append(
        self, session_id: str, events: list[Event]
    ) -> tuple[list[int], SentMessage | None]:
        """Append ``events``, among them at most one server message for the session,
        and send that one to the session's stream if it is held here, once durable.
        Returns the positions and the server message as recorded."""
        runtime = self.runtime
        since = runtime.clock()
        positions = await runtime.log.append(events, worker=runtime.worker_id)
        for event, position in zip(events, positions, strict=True):
            if isinstance(event, ServerMessage):
                sent = SentMessage(position, event.payload, event.reply_to)
                runtime.streams.send_appended(session_id, sent, positions[0], since)
                return positions, sent
        return positions, None

    async def _outcome(
        self,
        session_id: str,
        message_id: str,
        message: Any,
        ctx: HandlerContext,
        related: RelatedSender | None,
    ) -> list[Event]:
        """The handler's answer to a client message, as the events that record it:
        the reply (if one is due) and the message's outcome."""
        ctx = HandlerContext(ctx.session_id, ctx.server_id, ctx.user, message_id, related)
        try:
            reply = await self.handler(message, ctx)
        except Exception as exc:
            logger.exception(
                "session %s: the handler failed", session_id, extra={"session_id": session_id}
            )
            request_id = message.get("id") if isinstance(message, dict) else None
            reply = error_response(request_id, INTERNAL_ERROR, "Internal error", str(exc))
        events: list[Event] = []
        if reply is not None:
            events.append(
                ServerMessage(
                    id=derived_event_id(message_id, "reply"),
                    session_id=session_id,
                    payload=orjson.dumps(reply),
                    reply_to=message_id,
                )
            )
        events.append(
            MessageHandled(
                id=derived_event_id(message_id, "outcome"),
                session_id=session_id,
                message_id=message_id,
            )
        )
        return events

    async def _payload(self, session_id: str, pending: PendingMessage) -> bytes:
        """A pending client message's bytes: kept here, or read back from the log.

        Raises:
            LogUnavailable: the log cannot be read.
        """
        read = await self.runtime.streams.payloads.read(session_id, [pending.position])
        return read[pending.position]

    async def answer_shielded(
        self,
        session_id: str,
        message_id: str,
        message: Any,
        ctx: HandlerContext,
        send_related: Callable[[SentMessage], Awaitable[None]] | None = None,
    ) -> SentMessage | None:
        """:meth:`answer`, carried on to its recorded outcome even if the caller is
        cancelled (its client went away): a client resuming the request finds it."""
        answering = self.runtime.spawn(
            self.answer(session_id, message_id, message, ctx, send_related)
        )
        return await asyncio.shield(answering)

    async def follow_request(
        self, session_id: str, message_id: str, after: int
    ) -> AsyncIterator[SentMessage]:
        """The server messages about one client message after ``after``, ending with
        its answer: for a client resuming the stream of a request (its worker may
        have died).

        If no live worker is answering the message, it is answered here. Ends without
        an answer when the message is gone unanswered (expired, session closed).
        """
        runtime = self.runtime
        followed: asyncio.Queue[SentMessage] = asyncio.Queue()
        self._followers.setdefault(message_id, []).append(followed)
        try:
            await runtime.sync()
            last = after
            backlog = [
                each
                async for each in runtime.sent_after(
                    session_id,
                    after,
                    runtime.projection.position,
                    carries=lambda ref: ref.reply_to == message_id,
                )
            ]
            while True:
                while not followed.empty():
                    backlog.append(followed.get_nowait())
                for each in backlog:
                    if each.position > last:  # the queue may repeat what was read
                        last = each.position
                        yield each
                        if _is_response(each):
                            return
                backlog = []
                session = runtime.projection.session(session_id)
                pending = session.pending.get(message_id) if session is not None else None
                if pending is None:
                    return  # answered (and sent above), expired, or the session closed
                answerer = pending.answered_by
                if answerer is None or not runtime.projection.is_alive(
                    answerer, runtime.clock(), runtime.worker_ttl
                ):
                    ctx = HandlerContext(session_id, None, {})
                    message = orjson.loads(await self._payload(session_id, pending))
                    await self.answer(session_id, message_id, message, ctx)
                else:
                    # A live worker is answering it: wait for its messages, and look
                    # again every heartbeat in case that worker dies meanwhile.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(runtime.settings.heartbeat_interval):
                            backlog.append(await followed.get())
                await runtime.sync()
        finally:
            queues = self._followers.get(message_id, [])
            if followed in queues:
                queues.remove(followed)
            if not queues:
                self._followers.pop(message_id, None)


def _is_request(payload: bytes) -> bool:
    """Whether a client message is a request (anything unreadable counts as one: the
    handler answers it with an error, in order)."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return True
    return not isinstance(message, dict) or ("method" in message and "id" in message)


def _is_response(message: SentMessage) -> bool:
    """Whether a server message is the answer to a request (not a notification)."""
    payload = orjson.loads(message.payload)
    return isinstance(payload, dict) and "method" not in payload
