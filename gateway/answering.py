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
from projections import SentMessage

from .errors import SessionNotFound
from .mailbox import Mailbox
from .protocol import INTERNAL_ERROR, error_response

if TYPE_CHECKING:
    from .runtime import WorkerRuntime

__all__ = ["Answering", "HandlerContext", "MessageHandler", "RelatedSender"]

logger = logging.getLogger("sessionlog.gateway")

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
        for message_id, pending in session.pending.items():
            answerer = pending.answered_by
            if answerer is None or not runtime.projection.is_alive(
                answerer, now, runtime.worker_ttl
            ):
                self._queue(session_id, message_id)

    def queue_all_pending(self) -> None:
        """:meth:`queue_pending` for every session responded to here."""
        for session_id in list(self._responders):
            self.queue_pending(session_id)

    def _queue(self, session_id: str, message_id: str) -> None:
        responder = self._responders.get(session_id)
        if responder is None or message_id in responder.queued:
            return
        responder.queued.add(message_id)
        session = self.runtime.projection.session(session_id)
        pending = session.pending.get(message_id) if session is not None else None
        if pending is not None and not _is_request(pending.payload):
            # Answers to the server's requests and notifications (cancellations) are
            # handled at once: the request waiting for one may be the inbox's current.
            self.runtime.spawn(self._handle(session_id)(message_id))
        else:
            responder.inbox.put(message_id)

    def _handle(self, session_id: str) -> Callable[[str], Awaitable[None]]:
        async def handle(message_id: str) -> None:
            responder = self._responders.get(session_id)
            try:
                session = self.runtime.projection.session(session_id)
                pending = session.pending.get(message_id) if session is not None else None
                if responder is None or pending is None:
                    return  # handled elsewhere, expired, or the session is gone
                message = orjson.loads(pending.payload)
                delay = ANSWER_RETRY_FIRST
                # Retried with backoff while it is this responder's and unanswered,
                # rather than left to the next sweep (the handler may run again:
                # at least once, one answer recorded).
                while responder is self._responders.get(session_id):
                    try:
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
                    if session is None or message_id not in session.pending:
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
                self._queue(event.session_id, event.id)

    # -- recording and answering ---------------------------------------------------

    async def record(self, session_id: str, payload: bytes) -> None:
        """Record a client message for the session's owner to answer, wherever its
        stream is held: in order, exactly once, even if the owner reads it later.
        Durable when this returns.

        Raises:
            SessionNotFound: the session is not open on any worker.
        """
        runtime = self.runtime
        if runtime.projection.session(session_id) is None:
            # Not known here yet: it may have been opened elsewhere a moment ago.
            await runtime.sync()
            if runtime.projection.session(session_id) is None:
                raise SessionNotFound(session_id)
        event = ClientMessage(session_id=session_id, payload=payload)
        await runtime.log.append([event], worker=runtime.worker_id)

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
        event = ClientMessage(session_id=session_id, payload=payload, answered_by=runtime.worker_id)
        events: list[Event] = [event] if opening is None else [opening, event]
        positions = await runtime.log.append(events, worker=runtime.worker_id)
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
            sent = await runtime.sent_after(session_id, after, runtime.projection.position)
            backlog = [each for each in sent if each.reply_to == message_id]
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
                    await self.answer(session_id, message_id, orjson.loads(pending.payload), ctx)
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
