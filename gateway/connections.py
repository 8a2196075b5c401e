"""A worker's HTTP connections: each one answered in JSON-RPC or closed, none held
open by a client that does not send its request, and never more than the worker
can hold.

aiohttp runs one request handler per connection; :class:`Connection` is that
handler, which also

- answers what aiohttp's HTTP parser refuses (a malformed request line or header,
  over 8 KiB of them) with a JSON-RPC error, where aiohttp answers plain text and
  logs a traceback;
- closes a connection whose client has not sent a request's headers within
  ``header_timeout`` (bodies are timed by :func:`gateway.http.read_body`); a
  response in progress, an event stream say, is never cut;
- counts against the worker's :class:`ConnectionCap`.

:class:`GatewayRunner` serves an application with these connections, and reports
running out of file descriptors (or memory) while accepting as one log line every
few seconds instead of a traceback per connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .protocol import ProtocolError, errors
from .settings import Settings

__all__ = [
    "ACCEPT_BACKLOG",
    "Connection",
    "ConnectionCap",
    "GatewayRunner",
    "Occasional",
    "connection_limit",
    "error_reply",
]

logger = logging.getLogger("sessionlog.gateway")

# Limits
FD_RESERVE = 64  # file descriptors left for the log, upstream connections and files
# The listen backlog. asyncio accepts up to this many connections in one go, and may
# do so twice before the first are counted (or closed to make room): room for two
# such bursts is left in the descriptor limit.
ACCEPT_BACKLOG = 128
# Timeouts
LOG_EVERY = 10.0  # s between two log lines about the same trouble
KEEPALIVE = 75.0  # s an idle kept-alive connection stays open (aiohttp's run_app default)
# s a refused connection stays open for its request to arrive: closing a socket with
# unread data in it resets the connection, and the client may lose the 503 with it.
REFUSED_LINGER = 1.0
# accept() errors that mean the process or system is out of a resource, not a bug.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def error_reply(error: ProtocolError) -> web.Response:
    """The HTTP response for ``error``."""
    return web.Response(
        status=error.status,
        body=error.body(),
        content_type="application/json",
        headers=error.headers,
    )


def _raw_reply(error: ProtocolError) -> bytes:
    """``error`` as a whole HTTP/1.1 response that closes the connection, for a
    connection refused before aiohttp reads from it."""
    body = error.body()
    head = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Occasional:
    """A log that says each kind of trouble at most once every ``every`` seconds,
    with how many times it happened meanwhile unsaid."""

    def __init__(
        self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self._clock = clock
        self._said: dict[str, float] = {}
        self._unsaid: Counter[str] = Counter()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = self._clock()
        said = self._said.get(kind)
        if said is not None and now - said < self.every:
            self._unsaid[kind] += 1
            return
        self._said[kind] = now
        if unsaid := self._unsaid.pop(kind, 0):
            message += f" (and {unsaid} more times in the {self.every:g} s before)"
        logger.warning(message, *args)


def connection_limit(settings: Settings) -> int:
    """The worker's cap on open connections: the setting, or by default as many as
    its file descriptor limit leaves room for, with two bursts of accepts on top."""
    if settings.max_connections > 0:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(soft - FD_RESERVE - 2 * ACCEPT_BACKLOG, 1)


class ConnectionCap:
    """At most ``limit`` open connections. Past it, the connection that has waited
    longest for its client (to send a request, or the rest of one) is closed to make
    room; if every one is being served, the newcomer is refused with a 503."""

    def __init__(self, limit: int, log: Occasional) -> None:
        self.limit = limit
        self._log = log
        self._open: set[Connection] = set()
        # Connections waiting for their client, longest-waiting first.
        self._waiting: dict[Connection, None] = {}

    def admit(self, connection: Connection) -> bool:
        if len(self._open) >= self.limit:
            if not self._waiting:
                self._log.warning(
                    "refused", "%d connections open, all being served: refused one", self.limit
                )
                return False
            idle = next(iter(self._waiting))
            self.closed(idle)
            idle.drop()
            self._log.warning(
                "dropped",
                "%d connections open: closed the one waiting longest for its client",
                self.limit,
            )
        self._open.add(connection)
        return True

    def waiting(self, connection: Connection) -> None:
        if connection in self._open:
            self._waiting.pop(connection, None)
            self._waiting[connection] = None

    def serving(self, connection: Connection) -> None:
        self._waiting.pop(connection, None)

    def closed(self, connection: Connection) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)


class Connection(web.RequestHandler):
    """One client connection (aiohttp's handler for it, see the module)."""

    def __init__(
        self, manager: web.Server, cap: ConnectionCap, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._cap = cap
        self._header_timeout = header_timeout
        self._headers_due: asyncio.TimerHandle | None = None
        self._refused: asyncio.Transport | None = None
        self._request: asyncio.Task[Any] | None = None  # the handler of the request in progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._cap.admit(self):
            assert isinstance(transport, asyncio.Transport)
            self._refused = transport
            transport.write(_raw_reply(errors.too_many_connections(self._cap.limit)))
            self._headers_due = asyncio.get_running_loop().call_later(
                REFUSED_LINGER, transport.close
            )
            return
        super().connection_made(transport)
        self._await_request()

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            self._refused.close()  # its request read: closes without a reset
            return
        if self._headers_due is None and self._request is None:
            # A kept-alive connection's next request has begun: time its headers.
            self._await_request()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_headers_due()
        self._cap.closed(self)
        if self._refused is None:
            super().connection_lost(exc)

    def _await_request(self) -> None:
        self._cap.waiting(self)
        self._cancel_headers_due()
        self._headers_due = asyncio.get_running_loop().call_later(
            self._header_timeout, self._headers_late
        )

    def _cancel_headers_due(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _headers_late(self) -> None:
        self._headers_due = None
        logger.debug("closed a connection whose request headers were late")
        self.force_close()

    # Told by the gateway's outermost middleware and by read_body.

    def request_started(self) -> None:
        """Called in the request's handler.

        Raises:
            asyncio.CancelledError: the connection was dropped between its request
                arriving and its handler starting: the handler ends as if the
                client had gone away.
        """
        if self.transport is None:
            raise asyncio.CancelledError
        self._request = asyncio.current_task()
        self._cancel_headers_due()
        self._cap.serving(self)

    def request_ended(self) -> None:
        self._request = None
        self._cap.waiting(self)  # for its next request, if it is kept alive

    def drop(self) -> None:
        """Close the connection now, ending its request's handler as a client that
        went away would (not with an error of the read it was in)."""
        if self._request is not None:
            self._request.cancel()
        self.force_close()

    def body_started(self) -> None:
        self._cap.waiting(self)

    def body_ended(self) -> None:
        self._cap.serving(self)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON-RPC answer to a request aiohttp's parser refused (or, for a bug, one
        that escaped every handler: then the traceback is logged)."""
        if isinstance(exc, HttpProcessingError):
            logger.debug("refused a malformed HTTP request: %s", exc.message)
            # The parser's message shows the offending bytes; its first line says why.
            reason = str(exc.message).strip().splitlines()[0][:200] if exc.message else ""
            error = errors.bad_http(reason or HTTPStatus(status).phrase)
        elif status >= 500 and exc is not None:
            self.log_exception("Error handling request", exc_info=exc)
            error = errors.internal_error()
        else:
            error = errors.refused(status, message or HTTPStatus(status).phrase)
        if request.writer.output_size > 0:
            raise ConnectionError("the response started already; the connection is broken")
        response = error_reply(error)
        response.force_close()
        return response


class _ConnectionServer(web.Server):
    """aiohttp's server, making a :class:`Connection` for each client."""

    def __init__(
        self,
        served: web.Server,
        cap: ConnectionCap,
        header_timeout: float,
        handler_options: dict[str, Any],
    ) -> None:
        super().__init__(
            served.request_handler,
            request_factory=served.request_factory,
            handler_cancellation=served.handler_cancellation,
        )
        self._cap = cap
        self._header_timeout = header_timeout
        self._handler_options = handler_options

    def __call__(self) -> Connection:
        return Connection(
            self,
            self._cap,
            self._header_timeout,
            loop=asyncio.get_running_loop(),
            **self._handler_options,
        )


class GatewayRunner(web.AppRunner):
    """aiohttp's runner for ``app``, serving it on :class:`Connection`s."""

    def __init__(
        self, app: web.Application, settings: Settings, access_log: logging.Logger | None
    ) -> None:
        # handler_cancellation: a client that goes away ends its stream's handler at once.
        super().__init__(app, handler_cancellation=True)
        self.log = Occasional()
        self.cap = ConnectionCap(connection_limit(settings), self.log)
        self._header_timeout = settings.header_timeout
        self._handler_options = {
            "access_log": access_log,
            "keepalive_timeout": KEEPALIVE,
            # How long a body the handler did not read is drained before closing.
            "lingering_time": settings.body_timeout,
        }

    async def _make_server(self) -> web.Server:
        served = await super()._make_server()  # starts the application
        report_exhaustion(asyncio.get_running_loop(), self.log)
        return _ConnectionServer(served, self.cap, self._header_timeout, self._handler_options)


def report_exhaustion(loop: asyncio.AbstractEventLoop, log: Occasional) -> None:
    """``loop``'s failed accepts for want of file descriptors or memory go to ``log``
    (asyncio retries them a second later); everything else as before."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in EXHAUSTED:
            log.warning(
                "exhausted", "cannot accept connections: %s; retrying every second", exc.strerror
            )
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
