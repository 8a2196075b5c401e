"""Dispatch: how the gateway answers each client message.

``initialize`` and ``ping`` are the gateway's own (the client's capabilities are
recorded in the log). Everything else goes to the upstream MCP server when there
is one, through one upstream session per gateway session, recorded in the log so
any worker forwards with it; with no upstream, the built-in tools answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from eventlog import UpstreamSessionOpened

from . import tools
from .protocol import (
    INTERNAL_ERROR,
    error_response,
    result_response,
)
from .registry import SessionRegistry
from .upstream import Upstream, UpstreamError, UpstreamSessionLost
from .worker import HandlerContext, WorkerRuntime

__all__ = ["Dispatcher"]

logger = logging.getLogger("sessionlog.gateway")


class Dispatcher:
    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = Upstream(upstream) if upstream else None
        # Set once the registry that calls this dispatcher exists (each needs the other).
        self.registry: SessionRegistry | None = None
        # Relays waiting for their session's upstream session to open here.
        self._opened: dict[str, asyncio.Event] = {}

    async def close(self) -> None:
        if self.upstream is not None:
            await self.upstream.close()

    async def __call__(self, message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any] | None:
        assert self.registry is not None
        method = message.get("method") if isinstance(message, dict) else None
        if method in ("initialize", "ping"):
            reply = await self.registry.answer_default(message, ctx)
            if method == "initialize" and self.upstream is not None and "result" in (reply or {}):
                # Open the upstream session now, so the client learns of a dead upstream
                # at once, and gets the upstream's tools and capabilities.
                try:
                    result = await self._open_upstream(ctx.session_id, message.get("params") or {})
                except UpstreamError as exc:
                    return error_response(message["id"], INTERNAL_ERROR, f"upstream: {exc}")
                result["protocolVersion"] = reply["result"]["protocolVersion"]  # type: ignore[index]
                return result_response(message["id"], result)
            return reply
        if self.upstream is not None:
            if method == "notifications/initialized":
                return None  # the upstream had its own when its session opened
            return await self._forward(message, ctx)
        return tools.answer(message)

    # -- the upstream --------------------------------------------------------------

    def _runtime(self) -> WorkerRuntime:
        assert self.registry is not None
        return self.registry.runtime

    async def _open_upstream(self, session_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Open the session's upstream session and record it; the initialize result."""
        assert self.upstream is not None
        upstream_session, result = await self.upstream.open_session(params)
        await self._record_upstream(session_id, upstream_session or "")
        return result

    async def _record_upstream(self, session_id: str, upstream_session: str | None) -> None:
        runtime = self._runtime()
        event = UpstreamSessionOpened(session_id=session_id, upstream_session=upstream_session)
        await runtime.log.append([event], worker=runtime.worker_id)
        await runtime.sync()
        if upstream_session is not None and session_id in self._opened:
            self._opened.pop(session_id).set()

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
        return session.upstream_session or None, session.protocol_version

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

    async def relay(self, session_id: str) -> None:
        """Pass the upstream's own messages for the session (its standalone stream) to
        the log, for the stream holding the session; runs until cancelled.

        It listens with the session's recorded upstream session and never opens one
        itself: until the client's initialize does (on this worker, for HTTP+SSE), it
        waits, looking at the projection again every heartbeat in case another worker
        opened it.
        """
        if self.upstream is None:
            return
        runtime = self._runtime()

        async def record(message: dict[str, Any]) -> None:
            await runtime.send_server_message(session_id, message)

        try:
            while (session := runtime.projection.session(session_id)) is not None:
                if session.upstream_session is None:
                    opened = self._opened.setdefault(session_id, asyncio.Event())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(runtime.heartbeat_interval):
                            await opened.wait()
                    continue
                try:
                    await self.upstream.listen(
                        session.upstream_session or None, record, session.protocol_version
                    )
                    return  # the upstream has no standalone stream
                except UpstreamSessionLost:
                    await self._record_upstream(session_id, None)  # the next message opens one
                except UpstreamError as exc:
                    logger.warning(
                        "session %s: no upstream stream: %s",
                        session_id,
                        exc,
                        extra={"session_id": session_id},
                    )
                    return
        finally:
            self._opened.pop(session_id, None)
