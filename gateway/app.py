"""The gateway's aiohttp application: one registry, the MCP transports on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .dispatch import Dispatcher
from .registry import SessionRegistry
from .sse import MAX_BODY, add_routes

__all__ = ["build_app"]


def build_app(log_url: str, *, worker_id: str | None = None) -> web.Application:
    dispatcher = Dispatcher()
    registry = SessionRegistry(log_url=log_url, worker_id=worker_id, handler=dispatcher)
    dispatcher.registry = registry
    app = web.Application(client_max_size=MAX_BODY)
    add_routes(app, registry)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await registry.initialize()
        yield
        await registry.shutdown()

    async def close_streams(app: web.Application) -> None:
        # Before the server waits for open requests: ends every stream it holds, so a
        # SIGTERM does not wait on clients, and records this worker's stop.
        await registry.shutdown()

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(close_streams)
    return app
