"""SessionRegistry: the reference gateway's session registry API, backed by the log.

Drop-in for ContextForge's ``SessionRegistry``: the same constructor, methods and
return conventions, so code written against it keeps working. Underneath, every
change is an event in one ordered log and every worker folds that log, so a
session added on one worker exists on all of them as soon as the call returns,
and nothing broadcast is lost or delivered twice.

Where we differ on purpose: ``broadcast`` to a session that exists nowhere raises
:class:`SessionNotFound` (the reference drops the message silently), writes that
cannot reach the backend raise :class:`~eventlog.LogUnavailable` rather than being
logged and forgotten, and ``handle_initialize_logic`` raises the gateway's own
:class:`~gateway.protocol.errors.ProtocolError` (HTTP 400, JSON-RPC -32002) where the
reference raises its web framework's 400: the registry has no HTTP in it. Queries
keep the reference's "None when the backend cannot answer". The ``"none"`` backend
is a registry of its own that tracks nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from eventlog import EventLog, LogUnavailable, open_log
from projections import SentMessage

from . import lifecycle
from .answering import HandlerContext, MessageHandler
from .errors import WorkerStopping
from .held_streams import Transport
from .runtime import WorkerRuntime
from .settings import Settings

__all__ = ["BACKENDS", "SessionRegistry"]

logger = logging.getLogger("sessionlog.gateway")

BACKENDS = ("memory", "redis", "database", "none")
# Limits
OWNER_ATTEMPTS = 5  # compare-and-set rounds in set_session_owner


def log_url_for(backend: str, redis_url: str | None, database_url: str | None) -> str:
    """The log URL for one of the reference's backends."""
    if backend == "redis":
        assert redis_url is not None
        return redis_url
    if backend == "database":
        assert database_url is not None
        # The reference takes SQLAlchemy URLs with a sync driver
        # (postgresql+psycopg://...); the log picks its own driver.
        parts = urlsplit(database_url)
        scheme = parts.scheme.split("+", 1)[0]
        return urlunsplit(parts._replace(scheme=scheme)) if scheme != "sqlite" else database_url
    return "memory://"


class MessageTransport:
    """A transport of the reference's kind (``send_message(dict)``), held as ours:
    each server message is sent decoded, without its position."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def deliver(self, message: SentMessage) -> None:
        await self.inner.send_message(orjson.loads(message.payload))

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    async def is_connected(self) -> bool:
        return await self.inner.is_connected()


class SessionRegistry:
    """Sessions, their owners and their messages, shared by every worker of a log.

    ``backend`` is one of the reference's: ``"memory"`` (this process only),
    ``"redis"`` (needs ``redis_url``), ``"database"`` (needs ``database_url``: a
    SQLite file or PostgreSQL) or ``"none"`` (tracks nothing). ``log_url`` names any
    log directly instead. ``handler`` answers client messages (the gateway's
    dispatcher); without one, the registry answers ``initialize`` and ``ping`` and
    refuses other methods with JSON-RPC error -32601. ``capabilities`` are what its
    initialize result declares: only what the handler serves (none without one).
    """

    def __new__(cls, backend: str = "memory", *args: Any, **kwargs: Any) -> SessionRegistry:
        if cls is SessionRegistry and str(backend).lower() == "none":
            return super().__new__(_UntrackedRegistry)
        return super().__new__(cls)

    def __init__(
        self,
        backend: str = "memory",
        redis_url: str | None = None,
        database_url: str | None = None,
        session_ttl: float | None = None,
        message_ttl: float | None = None,
        *,
        log_url: str | None = None,
        worker_id: str | None = None,
        handler: MessageHandler | None = None,
        capabilities: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        settings: Settings | None = None,
        at_once: Callable[[Any], bool] | None = None,
    ) -> None:
        self._backend = backend.lower()
        if self._backend not in BACKENDS:
            raise ValueError(f"Invalid backend: {backend}")
        if self._backend == "redis" and not redis_url and not log_url:
            raise ValueError("Redis backend requires redis_url")
        if self._backend == "database" and not database_url and not log_url:
            raise ValueError("Database backend requires database_url")
        # The reference's arguments, where given, over the settings' values.
        given = {"session_ttl": session_ttl, "message_ttl": message_ttl}
        self.settings = dataclasses.replace(
            settings or Settings(), **{k: v for k, v in given.items() if v is not None}
        )
        self._log_url = log_url or log_url_for(self._backend, redis_url, database_url)
        self.worker_id = worker_id or f"worker-{secrets.token_hex(6)}"
        self._handler = handler or self._answer_lifecycle
        self._capabilities = capabilities or {}
        self._clock = clock
        self._at_once = at_once
        self._log: EventLog | None = None
        self._runtime: WorkerRuntime | None = None
        # After shutdown() nothing starts the registry again behind the caller's back
        # (a late call from a closing stream must not announce the worker anew).
        self._shut_down = False

    # -- life cycle --------------------------------------------------------------

    async def initialize(self, *, housekeeping: bool = True) -> None:
        """Open the log, fold it, announce this worker and start its one tail.

        Idempotent. ``housekeeping=False`` leaves heartbeats and sweeps to the
        caller (:attr:`runtime`), as tests with an injected clock do.
        """
        if self._runtime is not None:
            return
        self._shut_down = False
        self._log = await open_log(self._log_url, clock=self._clock)
        runtime = WorkerRuntime(
            self._log,
            self.worker_id,
            self._handler,
            settings=self.settings,
            clock=self._clock,
            at_once=self._at_once,
        )
        try:
            await runtime.start(housekeeping=housekeeping)
        except BaseException:
            await self._log.close()
            self._log = None
            raise
        self._runtime = runtime

    async def shutdown(self) -> None:
        """Disconnect local sessions, record this worker's stop, close the log."""
        self._shut_down = True
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await runtime.stop()
        if self._log is not None:
            await self._log.close()
            self._log = None

    @property
    def runtime(self) -> WorkerRuntime:
        if self._runtime is None:
            raise RuntimeError("SessionRegistry.initialize() has not been awaited")
        return self._runtime

    async def started(self) -> WorkerRuntime:
        """The worker runtime, starting the registry on first use (as the reference's
        methods do); never after :meth:`shutdown`."""
        if self._runtime is None:
            if self._shut_down:
                raise WorkerStopping("SessionRegistry has been shut down")
            await self.initialize()
        return self.runtime

    async def _synced(self, doing: str, session_id: str) -> WorkerRuntime | None:
        """The runtime caught up to the log's head; None (logged) if the log is down,
        for the queries that answer None then, as the reference's do."""
        try:
            runtime = await self.started()
            await runtime.sync()
        except LogUnavailable as exc:
            logger.error("cannot %s %s: %s", doing, session_id, exc)
            return None
        return runtime

    # -- sessions ------------------------------------------------------------------

    async def add_session(
        self, session_id: str, transport: Transport, *, user: str | None = None
    ) -> None:
        """Hold ``session_id``'s transport on this worker, opening the session if new
        (as ``user``'s, when given).

        When the call returns, every worker sees the session. If another worker held
        it, this worker takes it over (the client's newest stream wins).
        """
        runtime = await self.started()
        kind = getattr(transport, "kind", "sse")
        held = transport if isinstance(transport, Transport) else MessageTransport(transport)
        await runtime.streams.open(session_id, held, kind, user)

    async def remove_session(self, session_id: str, reason: str = "removed") -> None:
        """Disconnect the local transport, release ownership and record the close."""
        runtime = await self.started()
        await runtime.streams.close(session_id, reason)  # type: ignore[arg-type]

    async def get_session(self, session_id: str) -> Any:
        """The transport if this worker holds the session, else None."""
        return self.get_session_sync(session_id)

    def get_session_sync(self, session_id: str) -> Any:
        if self._runtime is None:
            return None
        transport = self._runtime.streams.transport(session_id)
        return transport.inner if isinstance(transport, MessageTransport) else transport

    async def session_exists(self, session_id: str) -> bool | None:
        """Whether the session is open on any worker; None if the log cannot answer."""
        if self.get_session_sync(session_id) is not None:
            return True
        runtime = await self._synced("check session", session_id)
        return None if runtime is None else runtime.projection.session(session_id) is not None

    async def get_all_session_ids(self) -> list[str]:
        """The sessions held on this worker (as the reference: local ones)."""
        if self._runtime is None:
            return []
        return self._runtime.streams.session_ids()

    # -- owners (the identity a session belongs to) ------------------------------------

    async def set_session_owner(self, session_id: str, owner_email: str | None) -> None:
        """Make ``owner_email`` the session's owner, or clear the owner with None."""
        runtime = await self.started()
        await runtime.sync()
        for _ in range(OWNER_ATTEMPTS):
            current = runtime.projection.state.users.get(session_id)
            if current == owner_email:
                return
            if owner_email is None:
                assert current is not None
                await runtime.log.release(session_id, current, role="user")
            else:
                await runtime.log.claim(session_id, owner_email, expected=current, role="user")
            await runtime.sync()
        raise LogUnavailable(f"could not set the owner of {session_id}: it keeps changing")

    async def claim_session_owner(self, session_id: str, owner_email: str) -> str | None:
        """Compare-and-set: claim the session for ``owner_email`` if it has no owner.

        Returns the effective owner, or None when the log cannot be reached.
        """
        try:
            runtime = await self.started()
            owner = await runtime.log.claim(session_id, owner_email, role="user")
            await runtime.sync()
            return owner
        except LogUnavailable as exc:
            logger.error(
                "cannot claim session %s: %s", session_id, exc, extra={"session_id": session_id}
            )
            return None

    async def get_session_owner(self, session_id: str) -> str | None:
        runtime = await self._synced("get the owner of session", session_id)
        return None if runtime is None else runtime.projection.state.users.get(session_id)

    # -- messages --------------------------------------------------------------------

    async def broadcast(self, session_id: str, message: Any) -> None:
        """Send a client message to the session, wherever its stream is held.

        It is durable when this returns: the session's owner answers it, in order,
        exactly once, even if the owner reads it later. A message given as bytes is
        taken to be JSON already and recorded exactly as given.

        Raises:
            SessionNotFound: the session is not open on any worker.
            ProtocolError: 429, the session's messages waiting for answers are at
                their byte budget (``pending_bytes_per_session``); nothing was sent.
            LogUnavailable: the log cannot be reached; nothing was sent.
        """
        runtime = await self.started()
        payload = message if isinstance(message, bytes) else orjson.dumps(message)
        await runtime.answers.record(session_id, payload)

    async def respond(self, server_id: str | None, user: dict[str, Any], session_id: str) -> None:
        """Answer the session's client messages on this worker until it closes.

        Like the reference, meant to run as a task per session; unlike it, the task
        waits without polling: the worker's one tail hands it each message.
        """
        runtime = await self.started()
        await runtime.answers.respond(session_id, HandlerContext(session_id, server_id, user))

    async def generate_response(
        self,
        message: dict[str, Any],
        transport: Transport,
        server_id: str | None,
        user: dict[str, Any],
    ) -> None:
        """Answer ``message`` with the handler and send the reply on ``transport``."""
        session_id = getattr(transport, "session_id", "")
        reply = await self._handler(message, HandlerContext(session_id, server_id, user))
        if reply is not None:
            await transport.send_message(reply)

    async def _answer_lifecycle(
        self, message: dict[str, Any], ctx: HandlerContext
    ) -> dict[str, Any] | None:
        """The handler without one given: initialize and ping, nothing else."""
        return await lifecycle.answer(message, ctx.session_id, self._runtime, self._capabilities)

    # -- initialize and capabilities ------------------------------------------------------

    async def handle_initialize_logic(
        self,
        body: dict[str, Any],
        session_id: str | None = None,
        server_id: str | None = None,
    ) -> dict[str, Any]:
        """Negotiate the protocol version, record the client's capabilities, and
        return the initialize result.

        Raises:
            ProtocolError: no protocol version (HTTP 400, JSON-RPC -32002).
        """
        runtime = await self.started() if session_id else None
        return await lifecycle.initialize(runtime, body, session_id, self._capabilities)

    async def store_client_capabilities(
        self, session_id: str, capabilities: dict[str, Any]
    ) -> None:
        await lifecycle.record_client(await self.started(), session_id, None, None, capabilities)

    async def get_client_capabilities(self, session_id: str) -> dict[str, Any] | None:
        runtime = await self._synced("read capabilities of session", session_id)
        if runtime is None:
            return None
        session = runtime.projection.session(session_id)
        return session.capabilities if session is not None and session.capabilities else None

    async def has_elicitation_capability(self, session_id: str) -> bool:
        # Declared is enough: MCP clients declare elicitation as "elicitation": {}.
        capabilities = await self.get_client_capabilities(session_id)
        return capabilities is not None and capabilities.get("elicitation") is not None

    async def get_elicitation_capable_sessions(self) -> list[str]:
        """Sessions held on this worker whose client can answer elicitations."""
        if self._runtime is None:
            return []
        runtime = self._runtime
        await runtime.sync()
        return [
            session_id
            for session_id in runtime.streams.session_ids()
            if (session := runtime.projection.session(session_id)) is not None
            and session.capabilities.get("elicitation") is not None
        ]


class _UntrackedRegistry(SessionRegistry):
    """The ``"none"`` backend: tracks nothing and answers as the reference's does."""

    async def initialize(self, *, housekeeping: bool = True) -> None:
        pass

    async def add_session(
        self, session_id: str, transport: Transport, *, user: str | None = None
    ) -> None:
        pass

    async def remove_session(self, session_id: str, reason: str = "removed") -> None:
        pass

    async def session_exists(self, session_id: str) -> bool | None:
        return False

    async def set_session_owner(self, session_id: str, owner_email: str | None) -> None:
        pass

    async def claim_session_owner(self, session_id: str, owner_email: str) -> str | None:
        return owner_email

    async def get_session_owner(self, session_id: str) -> str | None:
        return None

    async def broadcast(self, session_id: str, message: Any) -> None:
        pass

    async def respond(self, server_id: str | None, user: dict[str, Any], session_id: str) -> None:
        pass

    async def handle_initialize_logic(
        self,
        body: dict[str, Any],
        session_id: str | None = None,
        server_id: str | None = None,
    ) -> dict[str, Any]:
        return await lifecycle.initialize(None, body, session_id, self._capabilities)

    async def store_client_capabilities(
        self, session_id: str, capabilities: dict[str, Any]
    ) -> None:
        pass

    async def get_client_capabilities(self, session_id: str) -> dict[str, Any] | None:
        return None
