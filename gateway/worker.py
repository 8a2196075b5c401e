"""The worker runtime: one log tail, one projection, and the sessions held here.

A worker folds the log into its :class:`RegistryProjection` through one tail, and
reacts to what it folds: server messages for sessions whose transport it holds go
out on that transport; client messages for sessions it owns go to the message
handler, whose reply is appended to the log (and so comes back through the tail).
Background writes are a heartbeat every few seconds, whatever the number of
sessions. Time comes from an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from eventlog import (
    ClientMessage,
    Event,
    EventLog,
    LogUnavailable,
    MessageHandled,
    OwnerClaimed,
    Record,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
    derived_event_id,
)
from eventlog.events import CloseReason
from projections import (
    SERVER_HISTORY,
    SNAPSHOT_EVERY,
    SNAPSHOT_NAME,
    RegistryProjection,
    SentMessage,
    catch_up,
    encode_snapshot,
    load_latest,
)

from .mailbox import Mailbox
from .protocol import INTERNAL_ERROR, error_response

__all__ = ["HandlerContext", "MessageHandler", "Transport", "WorkerRuntime"]

logger = logging.getLogger("sessionlog.gateway")

T = TypeVar("T")

# Limits
TAKEOVER_ATTEMPTS = 5  # compare-and-set rounds before add_session gives up
OUTBOX_LIMIT = 1000  # server messages queued for one stream before its client counts as stuck
# Timeouts
STOP_GRACE = 2.0  # seconds stop() waits for background tasks to end


class Transport(Protocol):
    """Where a session's server messages go: an SSE stream, or anything alike.

    A transport may also define ``async deliver(message: SentMessage)``: then it gets
    each server message with its log position (its SSE event id) instead of
    ``send_message``, and chooses which messages its stream carries.
    """

    async def send_message(self, message: dict[str, Any]) -> None: ...

    async def disconnect(self) -> None: ...

    async def is_connected(self) -> bool: ...


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
class _LocalSession:
    """A session whose transport this worker holds."""

    transport: Transport
    outbox: Mailbox[SentMessage]
    inbox: Mailbox[str]
    # Set by respond(): who is answering, and when respond() may return.
    context: HandlerContext | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Client messages queued or being handled, so none is queued twice.
    queued: set[str] = field(default_factory=set)
    # True once this worker's claim is folded: from then on, a claim by another
    # worker or a close means the session left this worker. (Before, such records
    # are older news about an earlier stream of the same session.)
    owned: bool = False


class WorkerRuntime:
    def __init__(
        self,
        log: EventLog,
        worker_id: str,
        handler: MessageHandler,
        *,
        clock: Callable[[], float] = time.time,
        # Timeouts
        heartbeat_interval: float = 5.0,
        sweep_interval: float = 30.0,
        worker_ttl: float = 15.0,
        session_ttl: float = 3600.0,
        message_ttl: float = 600.0,
        # Limits
        snapshot_every: int = SNAPSHOT_EVERY,
    ) -> None:
        self.log = log
        self.worker_id = worker_id
        self.handler = handler
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.sweep_interval = sweep_interval
        self.worker_ttl = worker_ttl
        self.session_ttl = session_ttl
        self.message_ttl = message_ttl
        self.snapshot_every = snapshot_every
        self.projection = RegistryProjection()
        self.local: dict[str, _LocalSession] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task[Any]] = set()  # one-off tasks, kept from the GC
        self._sync_lock = asyncio.Lock()
        self._snapshot_mark = 0
        # Told how long each server message for a stream held here took from its
        # append to its fold (the gateway's delivery-latency metric).
        self.delivery_observer: Callable[[float], None] | None = None
        # Streams following one client message (resumed request streams), by its id.
        self._followers: dict[str, list[asyncio.Queue[SentMessage]]] = {}
        # Workers seen dead at the last heartbeat: a newly dead one's messages need
        # answering elsewhere.
        self._dead_workers: set[str] = set()
        # Told of every record as it is folded (subscriptions/listen streams); they
        # must not block.
        self.record_observers: list[Callable[[Record], None]] = []
        # Told of workers newly seen dead, at a heartbeat (what they did falls to the
        # living: the upstream listening); they must not block.
        self.dead_worker_observers: list[Callable[[set[str]], None]] = []

    # -- life cycle --------------------------------------------------------------

    async def start(self, *, housekeeping: bool = True) -> None:
        """Load the newest snapshot, catch up, announce this worker, start the tail.

        ``housekeeping=False`` leaves heartbeats and sweeps to the caller (tests drive
        them with an injected clock instead of waiting).
        """
        self.projection = await load_latest(self.log)
        self.projection.listener = self._react
        await catch_up(self.log, self.projection)
        self._snapshot_mark = self.projection.position // self.snapshot_every
        started = WorkerStarted(host=socket.gethostname(), pid=os.getpid())
        await self.log.append([started], worker=self.worker_id)
        self._tasks.append(asyncio.create_task(self._follow(), name="sessionlog-tail"))
        if housekeeping:
            task = asyncio.create_task(self._housekeeping(), name="sessionlog-housekeeping")
            self._tasks.append(task)

    async def stop(self) -> None:
        """End the streams held here, releasing their sessions with the reason
        "worker_stopped" (their clients may resume them on another worker), say
        WorkerStopped, stop the background tasks."""
        held = list(self.local)
        for session_id in held:
            await self._drop_local(session_id, disconnect=True)
        with contextlib.suppress(LogUnavailable):
            # Concurrent, so group commit writes every release in one transaction.
            await asyncio.gather(
                *(self.release_stream(session_id, "worker_stopped") for session_id in held)
            )
            await self.log.append([WorkerStopped()], worker=self.worker_id)
        tasks = [*self._tasks, *self._chores]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: redis-py can sit on a cancelled blocking read after the server
            # restarted; the log's close releases it.
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        self._tasks.clear()

    async def sync(self) -> None:
        """Fold everything appended up to now, on any worker: read-your-writes."""
        async with self._sync_lock:
            await catch_up(self.log, self.projection)

    async def _follow(self) -> None:
        async for record in self.log.tail(after=self.projection.position):
            self.projection.apply(record)  # no-op when sync() folded it already
            if self.projection.position // self.snapshot_every > self._snapshot_mark:
                await self._save_snapshot()

    async def _save_snapshot(self) -> None:
        self._snapshot_mark = self.projection.position // self.snapshot_every
        data = encode_snapshot(self.projection)
        try:
            await self.log.save_snapshot(SNAPSHOT_NAME, self.projection.position, data)
        except LogUnavailable as exc:
            logger.warning("snapshot not saved: %s", exc)

    async def _housekeeping(self) -> None:
        # Heartbeats are one append; a sweep looks at every session, so it runs less
        # often: TTLs are minutes, and idle CPU must not grow with the session count.
        beats_per_sweep = max(1, round(self.sweep_interval / self.heartbeat_interval))
        beat = 0
        while True:
            try:
                await self.heartbeat()
                self._requeue_for_dead_workers()
                if beat % beats_per_sweep == 0:
                    await self.sweep()
            except LogUnavailable as exc:
                logger.warning("housekeeping: %s", exc)
            beat += 1
            await asyncio.sleep(self.heartbeat_interval)

    # -- sessions held here --------------------------------------------------------

    async def open_session(
        self, session_id: str, transport: Transport, kind: str, user: str | None = None
    ) -> None:
        """Hold ``session_id``'s transport here and make this worker its owner.

        Opens the session in the log if it is not open; takes it over from its
        current owner otherwise (the client's newest stream wins).
        """
        previous = self.local.pop(session_id, None)
        if previous is not None and previous.transport is not transport:
            await self._close_local(previous, disconnect=True)
        await self.sync()
        local = self.local[session_id] = _LocalSession(
            transport=transport,
            outbox=Mailbox(f"session {session_id} outbox", self._sender(session_id)),
            inbox=Mailbox(f"session {session_id} inbox", self._handle_message(session_id)),
        )
        try:
            if self.projection.session(session_id) is None:
                opened = SessionOpened(session_id=session_id, transport=kind, user=user)
                await self.log.append([opened], worker=self.worker_id)
                await self.sync()
            for _ in range(TAKEOVER_ATTEMPTS):
                session = self.projection.session(session_id)
                current = session.owner if session is not None else None
                if current != self.worker_id:
                    claimed = await self.log.claim(session_id, self.worker_id, expected=current)
                    await self.sync()
                    if claimed != self.worker_id:
                        continue
                local.owned = True
                return
            raise LogUnavailable(f"could not take over session {session_id}: owner keeps changing")
        except BaseException:
            if self.local.get(session_id) is local:
                del self.local[session_id]
            raise

    async def release_stream(self, session_id: str, reason: str) -> None:
        """Give up this worker's hold on the session without closing it, saying why."""
        await self._drop_local(session_id, disconnect=True)
        await self.log.release(session_id, self.worker_id, reason=reason)

    async def close_session(self, session_id: str, reason: CloseReason) -> None:
        """Disconnect the local transport, give up ownership, record why it closed."""
        await self._drop_local(session_id, disconnect=True)
        await self.log.release(session_id, self.worker_id)
        await self.sync()
        if self.projection.session(session_id) is not None:
            closed = SessionClosed(session_id=session_id, reason=reason)
            await self.log.append([closed], worker=self.worker_id)
            await self.sync()

    async def respond(self, session_id: str, context: HandlerContext) -> None:
        """Answer ``session_id``'s client messages here until the session goes away."""
        local = self.local.get(session_id)
        if local is None:
            return
        local.context = context
        await self.sync()
        self._queue_pending(session_id, local)
        await local.done.wait()

    async def _drop_local(self, session_id: str, *, disconnect: bool) -> None:
        local = self.local.pop(session_id, None)
        if local is not None:
            await self._close_local(local, disconnect=disconnect)

    async def _close_local(self, local: _LocalSession, *, disconnect: bool) -> None:
        local.done.set()
        await local.outbox.close()
        await local.inbox.close()
        if disconnect:
            try:
                await local.transport.disconnect()
            except Exception:
                logger.exception("disconnecting a transport failed")

    # -- reacting to the log ---------------------------------------------------------

    def _react(self, record: Record) -> None:
        """Called for every newly folded record; schedules work, never awaits."""
        for observe in self.record_observers:
            observe(record)
        event = record.event
        if isinstance(event, ServerMessage) and event.reply_to in self._followers:
            sent = SentMessage(record.position, event.payload, event.reply_to)
            for followed in self._followers[event.reply_to]:
                followed.put_nowait(sent)
        session_id = getattr(event, "session_id", None)
        if session_id is None:
            return
        local = self.local.get(session_id)
        if local is None:
            return
        if isinstance(event, ServerMessage):
            if self.delivery_observer is not None:
                self.delivery_observer(max(0.0, self.clock() - record.at))
            local.outbox.put(SentMessage(record.position, event.payload, event.reply_to))
            if len(local.outbox) > OUTBOX_LIMIT:
                # The client reads slower than it is sent to: end its stream rather
                # than queue without bound. It may resume from its last event id.
                logger.warning(
                    "session %s: client too slow; ending its stream",
                    session_id,
                    extra={"session_id": session_id},
                )
                self._spawn_recorded(session_id, self.release_stream(session_id, "slow_client"))
        elif isinstance(event, ClientMessage):
            if event.answered_by is None and local.context is not None and self._owns(session_id):
                self._queue(session_id, local, event.id)
        elif local.owned and (
            isinstance(event, SessionClosed)
            or (
                isinstance(event, OwnerClaimed)
                and event.role == "worker"
                and event.owner != self.worker_id
            )
        ):
            # Closed, or its client opened a newer stream on another worker.
            self._spawn(self._drop_local(session_id, disconnect=True))

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` in the background, kept from the GC until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    def _owns(self, session_id: str) -> bool:
        session = self.projection.session(session_id)
        return session is not None and session.owner == self.worker_id

    def _queue(self, session_id: str, local: _LocalSession, message_id: str) -> None:
        if message_id in local.queued:
            return
        local.queued.add(message_id)
        session = self.projection.session(session_id)
        pending = session.pending.get(message_id) if session is not None else None
        if pending is not None and not _is_request(pending.payload):
            # Answers to the server's requests and notifications (cancellations) are
            # handled at once: the request waiting for one may be the inbox's current.
            self._spawn(self._handle_message(session_id)(message_id))
        else:
            local.inbox.put(message_id)

    def _queue_pending(self, session_id: str, local: _LocalSession) -> None:
        """Queue the session's unanswered client messages that are this owner's to
        answer: all but those a live worker is answering within their request."""
        session = self.projection.session(session_id)
        if session is not None and session.owner == self.worker_id:
            now = self.clock()
            for message_id, pending in session.pending.items():
                answerer = pending.answered_by
                if answerer is None or not self.projection.is_alive(answerer, now, self.worker_ttl):
                    self._queue(session_id, local, message_id)

    def _requeue_for_dead_workers(self) -> None:
        """Once a worker is seen dead, the messages it was answering within their
        requests fall to the owners of their sessions."""
        now = self.clock()
        dead = {
            worker.worker
            for worker in self.projection.state.workers.values()
            if not worker.alive(now, self.worker_ttl)
        }
        newly_dead, self._dead_workers = dead - self._dead_workers, dead
        if newly_dead:
            for session_id, local in self.local.items():
                if local.context is not None:
                    self._queue_pending(session_id, local)
            for observe in self.dead_worker_observers:
                observe(newly_dead)

    def _sender(self, session_id: str) -> Callable[[SentMessage], Awaitable[None]]:
        async def send(message: SentMessage) -> None:
            local = self.local.get(session_id)
            if local is None:
                return
            deliver = getattr(local.transport, "deliver", None)
            try:
                if deliver is not None:
                    await deliver(message)
                else:
                    await local.transport.send_message(orjson.loads(message.payload))
            except Exception as exc:
                logger.info(
                    "session %s: transport failed (%s); closing it",
                    session_id,
                    exc,
                    extra={"session_id": session_id},
                )
                self._spawn_recorded(session_id, self.close_session(session_id, "disconnected"))

        return send

    def _handle_message(self, session_id: str) -> Callable[[str], Awaitable[None]]:
        async def handle(message_id: str) -> None:
            local = self.local.get(session_id)
            try:
                session = self.projection.session(session_id)
                pending = session.pending.get(message_id) if session is not None else None
                if local is None or local.context is None or pending is None:
                    return  # handled elsewhere, expired, or the session is gone
                message = orjson.loads(pending.payload)
                try:
                    await self.answer(session_id, message_id, message, local.context)
                except LogUnavailable as exc:
                    # Still pending in the log: the next sweep queues it again.
                    logger.warning(
                        "session %s: reply not recorded yet: %s",
                        session_id,
                        exc,
                        extra={"session_id": session_id},
                    )
            finally:
                if local is not None:
                    local.queued.discard(message_id)

        return handle

    # -- answering client messages ----------------------------------------------------

    async def accept(
        self, session_id: str, payload: bytes, opening: SessionOpened | None = None
    ) -> tuple[str, int]:
        """Record a client message that this worker answers within its request (with
        the session's opening, in the same append, for an initialize); return its
        event id and log position. Durable when this returns."""
        event = ClientMessage(session_id=session_id, payload=payload, answered_by=self.worker_id)
        events: list[Event] = [event] if opening is None else [opening, event]
        positions = await self.log.append(events, worker=self.worker_id)
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
            [position] = await self.log.append([event], worker=self.worker_id)
            if send_related is not None:
                try:
                    await send_related(SentMessage(position, event.payload, message_id))
                except (ConnectionError, RuntimeError, TimeoutError) as exc:
                    # The client went away; the message is in the log for its resume,
                    # and the handler goes on to its answer.
                    logger.debug("session %s: related message not sent: %s", session_id, exc)

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
        positions = await self.log.append(events, worker=self.worker_id)
        if reply is None:
            return None
        return SentMessage(positions[0], events[0].payload, message_id)  # type: ignore[union-attr]

    async def send_server_message(self, session_id: str, message: dict[str, Any]) -> int:
        """Record a server-initiated message for the session; its position. The worker
        holding the session's stream sends it."""
        event = ServerMessage(session_id=session_id, payload=orjson.dumps(message))
        [position] = await self.log.append([event], worker=self.worker_id)
        return position

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
        answering = self._spawn(self.answer(session_id, message_id, message, ctx, send_related))
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
        followed: asyncio.Queue[SentMessage] = asyncio.Queue()
        self._followers.setdefault(message_id, []).append(followed)
        try:
            await self.sync()
            last = after
            replayed = await self.replay(session_id, after, self.projection.position)
            backlog = [sent for sent in replayed if sent.reply_to == message_id]
            while True:
                while not followed.empty():
                    backlog.append(followed.get_nowait())
                for sent in backlog:
                    if sent.position > last:  # the queue may repeat what was replayed
                        last = sent.position
                        yield sent
                        if _is_response(sent):
                            return
                backlog = []
                session = self.projection.session(session_id)
                pending = session.pending.get(message_id) if session is not None else None
                if pending is None:
                    return  # answered (and sent above), expired, or the session closed
                answerer = pending.answered_by
                if answerer is None or not self.projection.is_alive(
                    answerer, self.clock(), self.worker_ttl
                ):
                    ctx = HandlerContext(session_id, None, {})
                    await self.answer(session_id, message_id, orjson.loads(pending.payload), ctx)
                else:
                    # A live worker is answering it: wait for its messages, and look
                    # again every heartbeat in case that worker dies meanwhile.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.heartbeat_interval):
                            backlog.append(await followed.get())
                await self.sync()
        finally:
            queues = self._followers.get(message_id, [])
            if followed in queues:
                queues.remove(followed)
            if not queues:
                self._followers.pop(message_id, None)

    async def replay(self, session_id: str, after: int, upto: int) -> list[SentMessage]:
        """The session's server messages with positions in (after, upto], in order:
        from the projection's history when it reaches back far enough, else the log."""
        session = self.projection.session(session_id)
        sent = session.sent if session is not None else []
        if len(sent) < SERVER_HISTORY or sent[0].position <= after + 1:
            return [m for m in sent if after < m.position <= upto]
        found: list[SentMessage] = []
        position = after
        while position < upto:
            records, reached = await self.log.read_page(position, 1000)
            if reached == position:
                break  # the log ends before ``upto`` (it should not)
            position = reached
            for record in records:
                event = record.event
                if (
                    isinstance(event, ServerMessage)
                    and event.session_id == session_id
                    and record.position <= upto
                ):
                    found.append(SentMessage(record.position, event.payload, event.reply_to))
        return found

    def _spawn_recorded(self, session_id: str, change: Coroutine[Any, Any, None]) -> None:
        """Run a session change in the background; a log that is down only loses
        the record of it (the sweep or the next owner sets things right)."""

        async def run() -> None:
            try:
                await change
            except LogUnavailable as exc:
                logger.warning(
                    "session %s: not recorded: %s",
                    session_id,
                    exc,
                    extra={"session_id": session_id},
                )

        self._spawn(run())

    # -- housekeeping ------------------------------------------------------------------

    async def heartbeat(self) -> None:
        await self.log.append([WorkerHeartbeat()], worker=self.worker_id)

    async def sweep(self) -> None:
        """Close what has expired, once, whichever workers sweep at the same time.

        Sessions with no live owner idle past ``session_ttl`` close as expired; client
        messages unhandled past ``message_ttl`` are marked expired; local transports
        that dropped are closed; pending messages of sessions answered here are
        queued again (after an outage, or a takeover).
        """
        for session_id, local in list(self.local.items()):
            if not await local.transport.is_connected():
                await self.close_session(session_id, "disconnected")
            elif local.context is not None:
                self._queue_pending(session_id, local)
        await self.sync()
        now = self.clock()
        expired: list[Event] = []
        for session_id, session in self.projection.state.sessions.items():
            owner = session.owner
            held = owner is not None and self.projection.is_alive(owner, now, self.worker_ttl)
            if not held and now - session.last_activity > self.session_ttl:
                expired.append(
                    SessionClosed(
                        id=derived_event_id(session_id, session.opened_position, "expired"),
                        session_id=session_id,
                        reason="expired",
                    )
                )
                continue
            for message in session.pending.values():
                if now - message.at > self.message_ttl:
                    expired.append(
                        MessageHandled(
                            id=derived_event_id(message.message_id, "outcome"),
                            session_id=session_id,
                            message_id=message.message_id,
                            outcome="expired",
                        )
                    )
        if expired:
            await self.log.append(expired, worker=self.worker_id)
            await self.sync()


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
