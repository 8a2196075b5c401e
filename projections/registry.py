"""The registry projection: the log folded into sessions, owners, workers and messages.

A deterministic fold: :meth:`RegistryProjection.apply` reads nothing but the record
it is given (no I/O, no clock, no randomness), so every worker that folds the same
log holds the same state, and a snapshot restored and brought forward equals a fold
from the start. Questions that need the time (is a worker alive, is a session idle)
take ``now`` as an argument instead of reading a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from eventlog import (
    CapabilitiesRecorded,
    ChangePublished,
    ClientMessage,
    MessageHandled,
    OwnerClaimed,
    OwnerReleased,
    Record,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    StatelessAnswer,
    StatelessRequest,
    UpstreamSessionOpened,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
)

__all__ = [
    "CLOSED_RETENTION",
    "SERVER_HISTORY",
    "ClosedSession",
    "PendingMessage",
    "RegistryProjection",
    "RegistryState",
    "SentMessage",
    "SentRef",
    "SessionState",
    "WorkerState",
]

# Limits
SERVER_HISTORY = 100  # server messages indexed per open session, for resuming streams
# Seconds (of the records' own times) a closed session, or a worker gone silent, is
# remembered before the fold forgets it; the log still has its whole history.
CLOSED_RETENTION = 86_400.0

# Records whose only effect (besides the position and the worker's last_seen) is on
# their session's SessionState. A SessionClosed of that session later on drops that
# state: the one it was, or whichever a SessionOpened in between replaced it with.
_DROPPED_AT_CLOSE = frozenset(
    {ClientMessage, ServerMessage, MessageHandled, CapabilitiesRecorded, UpstreamSessionOpened}
)


class PendingMessage(msgspec.Struct, array_like=True, gc=False):
    """A client message appended but not yet handled: where it is in the log and its
    size, not its bytes (every worker folds it; only the one answering reads it)."""

    message_id: str
    position: int
    at: float
    size: int
    answered_by: str | None = None


class SentRef(msgspec.Struct, array_like=True, gc=False):
    """A server message for a session, by log position (the SSE event id), with its
    size: where to read it, not its bytes."""

    position: int
    size: int
    reply_to: str | None


class SentMessage(msgspec.Struct, array_like=True, gc=False):
    """A server message with its bytes, as a stream sends it: folded from the log or
    read back from it by position (never kept in the state)."""

    position: int
    payload: bytes
    reply_to: str | None


class ClosedSession(msgspec.Struct, array_like=True, gc=False):
    reason: str
    at: float  # the SessionClosed record's time: when the fold may forget it


class SessionState(msgspec.Struct, kw_only=True):
    session_id: str
    transport: str
    user: str | None
    opened_at: float
    opened_position: int  # tells this opening of the session id from any other
    opened_by: str  # the worker that appended SessionOpened
    # Wall time of the last record about this session: idle time counts from here.
    last_activity: float
    holder: str | None = None  # the worker holding its stream
    # Where its last stream ended (0: none has since it opened): a new stream that
    # names no event to resume from gets what was sent for it after that.
    stream_ended_position: int = 0
    protocol_version: str | None = None
    client_info: dict[str, Any] = {}
    capabilities: dict[str, Any] = {}
    # Its session on the upstream MCP server: None until opened (or after it was
    # lost), "" with an upstream that keeps no sessions; the version agreed for it;
    # the worker listening to its standalone stream, and the id of the last event
    # recorded from that stream.
    upstream_session: str | None = None
    upstream_version: str | None = None
    listener: str | None = None
    upstream_event_id: str | None = None
    # Client messages by event id, in log order (dicts keep insertion order), and
    # the sum of their sizes: what the session has waiting, which its byte budget
    # caps.
    pending: dict[str, PendingMessage] = {}
    pending_bytes: int = 0
    # The newest server messages, oldest first, at most SERVER_HISTORY.
    sent: list[SentRef] = []


class WorkerState(msgspec.Struct, kw_only=True):
    worker: str
    host: str = ""
    pid: int = 0
    started_at: float | None = None
    last_seen: float = 0.0  # wall time of the worker's newest record of any kind
    stopped_at: float | None = None

    def alive(self, now: float, ttl: float) -> bool:
        return self.stopped_at is None and now - self.last_seen <= ttl


class RegistryState(msgspec.Struct, kw_only=True):
    """Everything the fold knows, as of ``position``; this is what a snapshot holds."""

    position: int = 0
    sessions: dict[str, SessionState] = {}
    workers: dict[str, WorkerState] = {}
    # The identity each session belongs to (claims of role "user"). Kept apart from
    # ``sessions``: an identity may claim a session id before the session opens.
    users: dict[str, str] = {}
    # Open sessions per identity they were opened by (anonymous ones not counted),
    # for the per-identity cap; an identity with none has no entry.
    open_by_user: dict[str, int] = {}
    # Why sessions closed, in the order they closed, so a late reader can say
    # "closed (expired)" rather than "unknown"; forgotten after the retention
    # window (then: unknown here, the log still says).
    closed: dict[str, ClosedSession] = {}
    # The last record folded (its position, event id and append time): a log rolled
    # back and written again has another record there (see gateway.lineage).
    last_position: int = 0
    last_id: str = ""
    last_at: float = 0.0


class RegistryProjection:
    """Folds records into a :class:`RegistryState`, one at a time, in log order."""

    def __init__(
        self, state: RegistryState | None = None, *, closed_retention: float = CLOSED_RETENTION
    ) -> None:
        self.state = state if state is not None else RegistryState()
        # A setting, not state: every worker of a log must use the same one for their
        # folds to agree (a snapshot of another's converges at the next forgetting).
        self.closed_retention = closed_retention
        # Told of every record once it is folded (never of one folded before): how a
        # worker reacts to the log without a second pass over it.
        self.listener: Callable[[Record], None] | None = None
        self._handlers: dict[type, Callable[[Record, Any], None]] = {
            SessionOpened: self._session_opened,
            SessionClosed: self._session_closed,
            OwnerClaimed: self._owner_claimed,
            OwnerReleased: self._owner_released,
            ClientMessage: self._client_message,
            ServerMessage: self._server_message,
            MessageHandled: self._message_handled,
            CapabilitiesRecorded: self._capabilities_recorded,
            UpstreamSessionOpened: self._upstream_session_opened,
            # Stateless traffic and published changes are the log's and the audit's;
            # the registry keeps no state for them (memory does not grow with them).
            StatelessRequest: self._no_state,
            StatelessAnswer: self._no_state,
            ChangePublished: self._no_state,
            WorkerStarted: self._worker_started,
            WorkerHeartbeat: self._worker_seen,
            WorkerStopped: self._worker_stopped,
        }

    @property
    def position(self) -> int:
        return self.state.position

    def apply(self, record: Record) -> bool:
        """Fold one record; return False (and change nothing) if it was already folded,
        that is, if its position is not above the current one."""
        state = self.state
        if record.position <= state.position:
            return False
        state.position = state.last_position = record.position
        state.last_id, state.last_at = record.event.id, record.at
        worker = state.workers.get(record.worker)
        if worker is None:
            worker = state.workers[record.worker] = WorkerState(worker=record.worker)
        worker.last_seen = record.at
        self._handlers[type(record.event)](record, record.event)
        if self.listener is not None:
            self.listener(record)
        return True

    def advance(self, position: int) -> None:
        """Note that the log was read up to ``position`` (past records that could not
        be decoded, which never reach :meth:`apply`)."""
        self.state.position = max(self.state.position, position)

    def apply_all(self, records: Iterable[Record]) -> int:
        """Fold records given in log order (a page as read); return how many were
        newly folded. The state after it equals :meth:`apply` of each in turn.

        Without a listener nothing sees the state between two records, so a session
        closed later in the same batch gets none of the work its earlier records
        would have done to it: closing drops all of it (see ``_DROPPED_AT_CLOSE``).
        """
        if self.listener is not None:
            return sum(map(self.apply, records))
        records = records if isinstance(records, list) else list(records)
        state = self.state
        # Where each session is last closed among the records that will be folded.
        closes: dict[str, int] = {}
        top = state.position
        for record in records:
            if record.position > top:
                top = record.position
                if type(record.event) is SessionClosed:
                    closes[record.event.session_id] = top
        workers = state.workers
        handlers = self._handlers
        position = state.position
        applied = 0
        name: str | None = None
        worker: WorkerState | None = None
        last: Record | None = None
        try:
            for record in records:
                if record.position <= position:
                    continue
                position = record.position
                last = record
                applied += 1
                if record.worker != name:
                    name = record.worker
                    worker = workers.get(name)
                    if worker is None:
                        worker = workers[name] = WorkerState(worker=name)
                worker.last_seen = record.at  # type: ignore[union-attr]
                event = record.event
                kind = type(event)
                if kind in _DROPPED_AT_CLOSE and closes:
                    closed_at = closes.get(event.session_id)
                    if closed_at is not None and record.position < closed_at:
                        continue
                handlers[kind](record, event)
        finally:
            state.position = position
            if last is not None:
                state.last_position = last.position
                state.last_id, state.last_at = last.event.id, last.at
        return applied

    # -- queries -----------------------------------------------------------------

    def session(self, session_id: str) -> SessionState | None:
        return self.state.sessions.get(session_id)

    def alive_workers(self, now: float, ttl: float) -> list[str]:
        return [w.worker for w in self.state.workers.values() if w.alive(now, ttl)]

    def is_alive(self, worker: str, now: float, ttl: float) -> bool:
        state = self.state.workers.get(worker)
        return state is not None and state.alive(now, ttl)

    # -- one handler per event type -----------------------------------------------

    def _touch(self, record: Record, session_id: str) -> SessionState | None:
        session = self.state.sessions.get(session_id)
        if session is not None:
            session.last_activity = record.at
        return session

    def _session_opened(self, record: Record, event: SessionOpened) -> None:
        state = self.state
        state.closed.pop(event.session_id, None)
        replaced = state.sessions.get(event.session_id)
        if replaced is not None and replaced.user is not None:
            self._count_user(replaced.user, -1)
        state.sessions[event.session_id] = SessionState(
            session_id=event.session_id,
            transport=event.transport,
            user=event.user,
            opened_at=record.at,
            opened_position=record.position,
            opened_by=record.worker,
            last_activity=record.at,
        )
        if event.user is not None:
            self._count_user(event.user, 1)

    def _session_closed(self, record: Record, event: SessionClosed) -> None:
        state = self.state
        session = state.sessions.pop(event.session_id, None)
        if session is not None:
            if session.user is not None:
                self._count_user(session.user, -1)
            state.closed[event.session_id] = ClosedSession(event.reason, record.at)
            state.users.pop(event.session_id, None)
        self._forget_closed(record.at - self.closed_retention)

    def _count_user(self, user: str, change: int) -> None:
        counts = self.state.open_by_user
        count = counts.get(user, 0) + change
        if count > 0:
            counts[user] = count
        else:
            counts.pop(user, None)

    def _forget_closed(self, horizon: float) -> None:
        """Forget sessions closed before ``horizon`` (a time the records carry, so
        every fold forgets alike)."""
        closed = self.state.closed
        # Oldest first (insertion order), so this stops at the first one to keep.
        while closed:
            session_id = next(iter(closed))
            if closed[session_id].at >= horizon:
                break
            del closed[session_id]

    def _owner_claimed(self, record: Record, event: OwnerClaimed) -> None:
        if event.role == "compactor":  # the log's, not a session's: no state here
            return
        session = self._touch(record, event.session_id)
        if event.role == "user":
            self.state.users[event.session_id] = event.owner
        elif session is not None and event.role == "listener":
            session.listener = event.owner
        elif session is not None and event.role == "worker":
            session.holder = event.owner

    def _owner_released(self, record: Record, event: OwnerReleased) -> None:
        if event.role == "compactor":
            return
        session = self._touch(record, event.session_id)
        if event.role == "user":
            if self.state.users.get(event.session_id) == event.owner:
                del self.state.users[event.session_id]
        elif session is not None and event.role == "listener":
            if session.listener == event.owner:
                session.listener = None
        elif session is not None and event.role == "worker" and session.holder == event.owner:
            session.holder = None
            session.stream_ended_position = record.position

    def _client_message(self, record: Record, event: ClientMessage) -> None:
        session = self.state.sessions.get(event.session_id)
        if session is not None:  # _touch, inlined: the hottest handlers
            session.last_activity = record.at
            size = len(event.payload)  # (an event id is in the log once: no replacing)
            session.pending[event.id] = PendingMessage(
                event.id, record.position, record.at, size, event.answered_by
            )
            session.pending_bytes += size

    def _server_message(self, record: Record, event: ServerMessage) -> None:
        session = self.state.sessions.get(event.session_id)
        if session is not None:
            session.last_activity = record.at
            sent = session.sent
            sent.append(SentRef(record.position, len(event.payload), event.reply_to))
            if event.upstream_event_id is not None:
                session.upstream_event_id = event.upstream_event_id
            if len(sent) > SERVER_HISTORY:
                del sent[0]

    def _message_handled(self, record: Record, event: MessageHandled) -> None:
        # Giving up on a message is bookkeeping, not activity: it must not keep an
        # abandoned session alive.
        session = self.state.sessions.get(event.session_id)
        if session is not None:
            if event.outcome == "handled":
                session.last_activity = record.at
            handled = session.pending.pop(event.message_id, None)
            if handled is not None:
                session.pending_bytes -= handled.size

    def _capabilities_recorded(self, record: Record, event: CapabilitiesRecorded) -> None:
        if session := self._touch(record, event.session_id):
            session.protocol_version = event.protocol_version
            session.client_info = event.client_info
            session.capabilities = event.capabilities

    def _no_state(self, record: Record, event: Any) -> None:
        pass

    def _upstream_session_opened(self, record: Record, event: UpstreamSessionOpened) -> None:
        if session := self._touch(record, event.session_id):
            session.upstream_session = event.upstream_session
            session.upstream_version = event.protocol_version
            session.upstream_event_id = None  # a new session's stream starts afresh

    def _worker_started(self, record: Record, event: WorkerStarted) -> None:
        worker = self.state.workers[record.worker]
        worker.host, worker.pid = event.host, event.pid
        worker.started_at, worker.stopped_at = record.at, None

    def _worker_seen(self, record: Record, event: WorkerHeartbeat) -> None:
        # apply() already noted the time. A heartbeat is when the fold forgets what
        # is past the retention window (closes forget closed sessions too), so an
        # idle log forgets as well: workers silent for that long among it.
        horizon = record.at - self.closed_retention
        self._forget_closed(horizon)
        workers = self.state.workers
        for name in [name for name, worker in workers.items() if worker.last_seen < horizon]:
            del workers[name]

    def _worker_stopped(self, record: Record, event: WorkerStopped) -> None:
        self.state.workers[record.worker].stopped_at = record.at
