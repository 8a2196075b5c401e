"""Dispatch: how the gateway answers each client message.

``ping`` is the gateway's own. With no upstream, so is ``initialize`` (the client's
capabilities are recorded in the log), and the built-in tools answer the rest.

With an upstream MCP server, everything else goes there, through one upstream
session per gateway session, recorded in the log so any worker forwards with it.
The client's ``initialize`` opens it, offering the client's protocol version, and
the client is answered with the upstream's result as it is (version, capabilities,
server info, instructions): both hops speak the version the upstream chose, which
is the one recorded for the session. What the upstream sends on its own reaches the
client through the log (:mod:`.upstream_listening`).
"""

from __future__ import annotations

import logging
from typing import Any

from eventlog import UpstreamSessionOpened

from . import lifecycle, tools
from .answering import HandlerContext
from .protocol import (
    HANDSHAKE_VERSIONS,
    INTERNAL_ERROR,
    error_response,
    errors,
    result_response,
)
from .runtime import WorkerRuntime
from .upstream import Upstream, UpstreamError, UpstreamSessionLost
from .upstream_listening import UpstreamListeners

__all__ = ["Dispatcher"]

logger = logging.getLogger("sessionlog.gateway")


class Dispatcher:
    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = Upstream(upstream) if upstream else None
        self.listeners = UpstreamListeners(self.upstream) if self.upstream else None
        self.runtime: WorkerRuntime | None = None  # once attached

    def attach(self, runtime: WorkerRuntime) -> None:
        """Answer with the started runtime, and follow its log (the upstream's streams)."""
        self.runtime = runtime
        if self.listeners is not None:
            self.listeners.attach(runtime)

    async def close(self) -> None:
        if self.listeners is not None:
            await self.listeners.close()
        if self.upstream is not None:
            await self.upstream.close()

    def answers_at_once(self, message: Any) -> bool:
        """Whether a message is answered here, at once, recording nothing and calling
        out to nothing: everything but initialize when the tools are built in, and
        ping always."""
        method = message.get("method") if isinstance(message, dict) else None
        return method == "ping" or (self.upstream is None and method != "initialize")

    async def __call__(self, message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any] | None:
        method = message.get("method") if isinstance(message, dict) else None
        if method == "ping" or (method == "initialize" and self.upstream is None):
            capabilities = tools.HANDSHAKE_CAPABILITIES
            return await lifecycle.answer(message, ctx.session_id, self.runtime, capabilities)
        if self.upstream is None:
            return tools.answer(message)
        if method == "initialize":
            return await self._initialize(message, ctx)
        if method == "notifications/initialized":
            return None  # the upstream had its own when its session opened
        return await self._forward(message, ctx)

    # -- the upstream --------------------------------------------------------------

    def _runtime(self) -> WorkerRuntime:
        assert self.runtime is not None, "Dispatcher.attach() has not been called"
        return self.runtime

    async def _initialize(self, message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
        """Open the upstream session now (so the client learns of a dead upstream at
        once) and answer with its initialize result; record the client's info and
        capabilities with the version the upstream chose."""
        request_id, params = message.get("id"), message.get("params")
        if not isinstance(params, dict) or not params.get("protocolVersion"):
            missing = errors.missing_protocol_version(request_id)
            return error_response(request_id, missing.code, missing.message)
        try:
            result = await self._open_upstream(ctx.session_id, params)
        except UpstreamError as exc:
            return error_response(request_id, INTERNAL_ERROR, f"upstream: {exc}")
        # Recorded as agreed: the version the upstream chose.
        client_info = params.get("clientInfo") or {}
        capabilities = params.get("capabilities") or {}
        version = result["protocolVersion"]
        await lifecycle.record_client(
            self._runtime(), ctx.session_id, version, client_info, capabilities
        )
        return result_response(request_id, result)

    async def _open_upstream(self, session_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Open the session's upstream session with ``params`` (a client's initialize
        params), record it, and listen to its stream; its initialize result.

        Raises UpstreamError if the upstream chose a version the gateway does not speak.
        """
        assert self.upstream is not None and self.listeners is not None
        upstream_session, result = await self.upstream.open_session(params)
        version = result.get("protocolVersion")
        if version not in HANDSHAKE_VERSIONS:
            if upstream_session:
                await self.upstream.end_session(upstream_session)
            raise UpstreamError(
                f"{self.upstream.url} chose protocol version {version!r};"
                f" the gateway speaks {', '.join(HANDSHAKE_VERSIONS)}"
            )
        await self._record_upstream(session_id, upstream_session or "", version)
        # Before anything is forwarded: the upstream drops what it sends on a stream
        # that is not open.
        await self.listeners.listen_here(session_id)
        return result

    async def _record_upstream(
        self, session_id: str, upstream_session: str | None, protocol_version: str | None = None
    ) -> None:
        runtime = self._runtime()
        event = UpstreamSessionOpened(
            session_id=session_id,
            upstream_session=upstream_session,
            protocol_version=protocol_version,
        )
        await runtime.log.append([event], worker=runtime.worker_id)
        await runtime.sync()

    async def _upstream_session(self, session_id: str) -> tuple[str | None, str | None]:
        """(upstream session id, protocol version) for the session, opening an
        upstream session if it has none (it was opened before the upstream was
        configured, or the upstream lost it)."""
        runtime = self._runtime()
        session = runtime.projection.session(session_id)
        if session is not None and session.upstream_session is None:
            await runtime.sync()  # another worker may have opened it a moment ago
            session = runtime.projection.session(session_id)
        if session is None:
            raise UpstreamError(f"session {session_id} is closed")
        if session.upstream_session is None:
            params = {
                "protocolVersion": session.protocol_version or "2025-03-26",
                "capabilities": session.capabilities,
                "clientInfo": session.client_info or {"name": "sessionlog", "version": "0"},
            }
            await self._open_upstream(session_id, params)
            session = runtime.projection.session(session_id)
            assert session is not None
        # An upstream session recorded without its version (an older log): the client's.
        version = session.upstream_version or session.protocol_version
        return session.upstream_session or None, version

    async def _forward(self, message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any] | None:
        assert self.upstream is not None
        request_id = message.get("id") if "method" in message else None
        for attempt in range(2):
            try:
                upstream_session, version = await self._upstream_session(ctx.session_id)
                return await self.upstream.forward(
                    upstream_session, message, on_message=ctx.send_related, protocol_version=version
                )
            except UpstreamSessionLost as exc:
                if attempt:
                    return self._failed(request_id, exc)
                logger.info(
                    "session %s: upstream session lost; opening another",
                    ctx.session_id,
                    extra={"session_id": ctx.session_id},
                )
                await self._record_upstream(ctx.session_id, None)
            except UpstreamError as exc:
                return self._failed(request_id, exc)
        raise AssertionError("unreachable")

    def _failed(self, request_id: Any, exc: UpstreamError) -> dict[str, Any] | None:
        logger.warning("upstream failed: %s", exc)
        if request_id is None:
            return None  # a notification: nobody to tell
        return error_response(request_id, INTERNAL_ERROR, f"upstream unavailable: {exc}")

    async def end(self, session_id: str) -> None:
        """The client ended the session: end its upstream session too (best effort;
        the upstream's own idle timeout ends it otherwise)."""
        if self.upstream is None:
            return
        session = self._runtime().projection.session(session_id)
        if session is not None and session.upstream_session:
            await self.upstream.end_session(session.upstream_session)
