"""The gateway's aiohttp application: one registry, both MCP transports on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from . import operations, sse, streamable_http, tools
from .auth import build_authenticator
from .dispatch import Dispatcher
from .http import BODY_TIMEOUT, MAX_BODY, guards
from .registry import SessionRegistry
from .settings import Settings
from .stateless import STATELESS, BuiltIn, StatelessBackend, StatelessServer
from .streams import StreamLimits
from .subscriptions import Subscriptions
from .upstream_changes import ChangesRelay
from .upstream_stateless import UpstreamStateless

__all__ = ["build_app"]


def build_app(settings: Settings, *, worker_id: str | None = None) -> web.Application:
    """The gateway for ``settings``.

    Raises:
        ValueError: settings that cannot work (a bad log URL, conflicting auth).
    """
    authenticator = build_authenticator(
        token=settings.auth_token,
        jwt_secret=settings.jwt_secret,
        jwt_public_key=settings.jwt_public_key,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    dispatcher = Dispatcher(settings.upstream)
    registry = SessionRegistry(
        log_url=settings.log_url,
        worker_id=worker_id,
        handler=dispatcher,
        capabilities=tools.HANDSHAKE_CAPABILITIES,
        settings=settings,
        at_once=dispatcher.answers_at_once,
    )
    metrics = operations.Metrics(registry)
    limits = StreamLimits(
        settings.max_streams_per_identity,
        settings.max_sessions,
        settings.max_sessions_per_identity,
    )
    app = web.Application(client_max_size=MAX_BODY, middlewares=guards(settings, authenticator))
    app[BODY_TIMEOUT] = settings.body_timeout
    sse.add_routes(app, registry, limits)
    streamable_http.add_routes(app, registry, limits)
    operations.add_routes(app, registry, metrics)
    app[streamable_http.SESSION_ENDED] = dispatcher.end
    backend: StatelessBackend = BuiltIn()
    relay: ChangesRelay | None = None
    if dispatcher.upstream is not None:
        backend = UpstreamStateless(dispatcher.upstream)
        relay = ChangesRelay(backend)
    subscriptions = Subscriptions(registry, lambda: backend.capabilities, limits)
    app[STATELESS] = StatelessServer(registry, backend, subscriptions)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await registry.initialize()
        registry.runtime.streams.delivery_observer = metrics.delivery_latency.observe
        dispatcher.attach(registry.runtime)
        subscriptions.attach()
        if relay is not None:
            relay.attach(registry.runtime)
        yield
        if relay is not None:
            await relay.close()
        await registry.shutdown()
        await dispatcher.close()

    async def close_streams(app: web.Application) -> None:
        # Before the server waits for open requests: ends every stream it holds, so a
        # SIGTERM does not wait on clients, and records this worker's stop.
        subscriptions.close()
        if relay is not None:
            await relay.close()
        await registry.shutdown()

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(close_streams)
    return app
