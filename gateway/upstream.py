"""A client for an upstream MCP server speaking Streamable HTTP (protocol 2025-03-26+).

The gateway forwards its clients' messages here. Every call is bounded in time: a
dead or stalled upstream becomes an :class:`UpstreamError` rather than a hang, and
an upstream that forgot our session becomes :class:`UpstreamSessionLost`, so the
caller can open a new one. Only :meth:`Upstream.listen` runs until cancelled.

Event streams are followed as the specification asks of a client: one that ends
after an event id is resumed with ``GET`` and ``Last-Event-ID`` once its ``retry:``
delay has passed (a request's stream too: SSE polling, SEP-1699).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson

from .protocol.sse_codec import SSEError, SSEEvent, SSEParser

__all__ = [
    "OnMessage",
    "OnStreamMessage",
    "Upstream",
    "UpstreamError",
    "UpstreamSessionLost",
]

logger = logging.getLogger("sessionlog.gateway.upstream")

OnMessage = Callable[[dict[str, Any]], Awaitable[None]]
# A message from the standalone stream, and the id of the SSE event it came in (what
# a later listen() resumes after).
OnStreamMessage = Callable[[dict[str, Any], str | None], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
POST_ACCEPT = "application/json, text/event-stream"
SSE_TYPE = "text/event-stream"
JSON_TYPE = "application/json"
INITIALIZE_ID = "sessionlog-initialize"
# Limits
MAX_BODY = 16 * 2**20  # bytes of one JSON body, or of one SSE event (or unterminated line)
SNIPPET = 200  # characters of an unexpected body quoted in an error
# Reconnecting listen(): the first delay (or the server's `retry:`), doubled up to the cap.
RECONNECT_DELAY = 1.0  # s; also before resuming a request's stream without a `retry:`
RECONNECT_MAX = 30.0  # s
# Resumes of one request's stream before it counts as failed (within its timeout too).
MAX_RESUMES = 10
# Statuses after which a dropped GET stream is retried; other 4xx are final.
RETRY_STATUSES = frozenset({408, 409, 425, 429})


class UpstreamError(Exception):
    """The upstream cannot answer (unreachable, timeout, 5xx, garbage). str() is a clear
    one-line reason."""


class UpstreamSessionLost(UpstreamError):
    """The upstream answered 404 for our Mcp-Session-Id: open a new session."""


class _Retry(Exception):
    """The GET stream was refused in a way worth retrying."""


class _NoStream(Exception):
    """The upstream offers no GET stream (405)."""


# -- JSON-RPC helpers ---------------------------------------------------------------------


def _is_request(message: dict[str, Any]) -> bool:
    return "method" in message and "id" in message


def _is_response_to(message: dict[str, Any], request_id: Any) -> bool:
    return "method" not in message and "id" in message and message["id"] == request_id


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def _messages(data: bytes | str, source: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in a body or event (a batch is a list of them)."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{source} is not JSON: {_snippet(_bytes(data))!r}") from None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items or not all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in items):
        raise UpstreamError(f"{source} is not a JSON-RPC message: {_snippet(_bytes(data))!r}")
    return items


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _rpc_error(body: bytes) -> dict[str, Any] | None:
    """The JSON-RPC error object in an error response's body, if it has one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        return error
    return None


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_BODY:
            raise UpstreamError(f"the upstream's answer is larger than {MAX_BODY} bytes")
    return bytes(body)


async def _sse_events(
    response: aiohttp.ClientResponse, parser: SSEParser
) -> AsyncIterator[SSEEvent]:
    async for chunk in response.content.iter_any():
        try:
            events = parser.feed(chunk)
        except SSEError as exc:
            raise UpstreamError(f"the upstream's event stream: {exc}") from None
        for event in events:
            if event.event == "message":
                yield event
            else:
                logger.debug("skipping an SSE event of type %r", event.event)


# -- the client ---------------------------------------------------------------------------


class Upstream:
    """One upstream MCP server, shared by all the gateway's sessions.

    Holds one aiohttp session (connection pool), created on first use so that the
    object can be built outside an event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._sleep = sleep  # waits out reconnect delays (tests pass one that does not)
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool; idempotent. The object cannot be used after."""
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UpstreamError(f"the client for {self.url} is closed")
        if self._http is None:
            # The total bound is an asyncio.timeout around each call (listen has none
            # once its stream is open). No pool cap: each listen() holds a connection
            # for as long as it runs, and a cap would starve forward().
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout
            )
            self._http = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
            )
        return self._http

    def _headers(
        self,
        session: str | None,
        protocol_version: str | None,
        accept: str,
        last_event_id: str | None = None,
    ) -> dict[str, str]:
        headers = {"Accept": accept}
        if session:
            headers[SESSION_HEADER] = session
        if protocol_version:
            headers[VERSION_HEADER] = protocol_version
        if last_event_id is not None:
            headers[LAST_EVENT_ID_HEADER] = last_event_id
        return headers

    def _failure(self, exc: Exception) -> UpstreamError:
        """A one-line UpstreamError for a transport failure."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamError(
                f"cannot connect to {self.url}: no answer within {self.connect_timeout}s"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            error = exc.os_error
            # asyncio puts "Connect call failed (...)" in strerror; the errno says it better.
            if error.errno is not None and error.errno > 0:
                reason = os.strerror(error.errno)
            else:
                reason = error.strerror or str(error) or type(error).__name__
            return UpstreamError(f"cannot connect to {self.url}: {reason}")
        if isinstance(exc, TimeoutError):
            return UpstreamError(f"{self.url} did not answer within {self.timeout}s")
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return UpstreamError(f"the connection to {self.url} failed: {reason}")

    def _status_error(self, response: aiohttp.ClientResponse, body: bytes) -> UpstreamError:
        error = _rpc_error(body)
        detail = ""
        if error is not None:
            detail = f": {error.get('message')}"
        elif body:
            detail = f": {_snippet(body)!r}"
        return UpstreamError(f"{self.url} answered {response.status} {response.reason}{detail}")

    async def open_session(
        self, client_params: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """Initialize a session on the upstream with the client's initialize params.

        Returns the upstream's Mcp-Session-Id (None if it keeps no sessions) and the
        initialize result; the initialized notification has been sent by then.
        """
        request = {
            "jsonrpc": "2.0",
            "id": INITIALIZE_ID,
            "method": "initialize",
            "params": client_params,
        }
        session, response = await self._post(None, request, None, None)
        assert response is not None  # a request always gets a response or an error raised
        if "error" in response:
            error = response["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(f"{self.url} refused initialize: {message}")
        result = response.get("result")
        if not isinstance(result, dict):
            raise UpstreamError(f"{self.url} answered initialize without a result object")
        version = result.get("protocolVersion")
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        try:
            await self._post(
                session, initialized, None, version if isinstance(version, str) else None
            )
        except Exception:
            if session is not None:
                await self.end_session(session)
            raise
        return session, result

    async def forward(
        self,
        session: str | None,
        message: dict[str, Any],
        on_message: OnMessage | None = None,
        protocol_version: str | None = None,
    ) -> dict[str, Any] | None:
        """POST one JSON-RPC message; the response to it, or None for anything else.

        Messages the upstream streams before the response (progress, logs, its own
        requests) go to ``on_message`` in order. A 4xx with a JSON-RPC error comes back
        as that error for the client, under the request's id.
        """
        _, response = await self._post(session, message, on_message, protocol_version)
        return response

    async def exchange(
        self,
        body: bytes,
        message: dict[str, Any],
        protocol_version: str,
        routing: dict[str, str],
        on_message: OnMessage | None = None,
    ) -> dict[str, Any]:
        """POST one 2026-07-28 request as the client sent it (``body``, parsed as
        ``message``), with its routing headers; its answer. As :meth:`forward`: what
        comes before the answer goes to ``on_message``; a 4xx with a JSON-RPC error is
        that error."""
        _, response = await self._post(
            None, message, on_message, protocol_version, body=body, routing=routing
        )
        assert response is not None  # a request always gets a response or an error raised
        return response

    async def subscribe(
        self, body: bytes, routing: dict[str, str], protocol_version: str, on_message: OnMessage
    ) -> None:
        """Hold a 2026-07-28 ``subscriptions/listen`` stream (``body``, the request) and
        pass every message on it to ``on_message`` until the upstream ends it. Raises
        UpstreamError if it is refused or breaks."""
        headers = self._headers(None, protocol_version, POST_ACCEPT)
        headers["Content-Type"] = JSON_TYPE
        headers.update(routing)
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client().post(self.url, data=body, headers=headers)
            async with response:
                if response.status != 200 or response.content_type != SSE_TYPE:
                    raise self._status_error(response, await _read_body(response))
                async for event in _sse_events(response, SSEParser()):
                    for item in _messages(event.data, f"an event from {self.url}"):
                        await on_message(item)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc) from exc

    async def _post(
        self,
        session: str | None,
        message: dict[str, Any],
        on_message: OnMessage | None,
        protocol_version: str | None,
        *,
        body: bytes | None = None,
        routing: dict[str, str] | None = None,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """forward(), also returning the Mcp-Session-Id the upstream answered with.
        ``body``: the message's bytes, when they are to go as received."""
        headers = self._headers(session, protocol_version, POST_ACCEPT)
        headers["Content-Type"] = JSON_TYPE
        headers.update(routing or {})
        if body is None:
            body = orjson.dumps(message)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().post(self.url, data=body, headers=headers) as response:
                    answer = await self._answer(
                        session, protocol_version, message, response, on_message
                    )
                    return response.headers.get(SESSION_HEADER), answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc) from exc

    async def _answer(
        self,
        session: str | None,
        protocol_version: str | None,
        message: dict[str, Any],
        response: aiohttp.ClientResponse,
        on_message: OnMessage | None,
    ) -> dict[str, Any] | None:
        status = response.status
        if status == 404 and session:
            raise UpstreamSessionLost(f"{self.url} no longer knows session {session}")
        if status >= 400:
            body = await _read_body(response)
            error = _rpc_error(body)
            if 400 <= status < 500 and error is not None and _is_request(message):
                return {"jsonrpc": "2.0", "id": message["id"], "error": error}
            raise self._status_error(response, body)
        if not 200 <= status < 300:
            raise UpstreamError(f"{self.url} answered {status} {response.reason}")
        if not _is_request(message):
            return None  # 202 Accepted, as the spec asks; any other 2xx is as good
        request_id = message["id"]
        if response.content_type == SSE_TYPE:
            # The session the upstream just named, for an initialize: a resume needs it.
            session = response.headers.get(SESSION_HEADER, session)
            return await self._stream_answer(
                session, protocol_version, request_id, response, on_message
            )
        if response.content_type != JSON_TYPE:
            raise UpstreamError(
                f"{self.url} answered {status} with {response.content_type or 'no content type'}"
            )
        for item in _messages(await _read_body(response), f"the answer of {self.url}"):
            if "method" in item:
                await self._deliver(item, on_message)
            elif item.get("id") is None and "error" in item:
                return {**item, "id": request_id}  # an error the upstream could not attribute
            else:
                return item
        raise UpstreamError(f"{self.url} answered {status} without a response to {request_id!r}")

    async def _stream_answer(
        self,
        session: str | None,
        protocol_version: str | None,
        request_id: Any,
        response: aiohttp.ClientResponse,
        on_message: OnMessage | None,
    ) -> dict[str, Any]:
        """The response in a request's event stream. While the stream ends (or
        breaks) after an event id, it is resumed: at most MAX_RESUMES attempts."""
        parser = SSEParser()  # one for every part of the stream: the last id and retry
        part: aiohttp.ClientResponse | None = response
        attempts = 0
        try:
            while True:
                if part is not None:
                    try:
                        async for event in _sse_events(part, parser):
                            for item in _messages(event.data, f"an event from {self.url}"):
                                if _is_response_to(item, request_id):
                                    return item
                                await self._deliver(item, on_message)
                    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                        if parser.last_event_id is None:
                            raise
                        logger.debug("a stream from %s broke: %s", self.url, exc)
                    if part is not response:
                        part.release()
                    part = None
                if parser.last_event_id is None:
                    raise UpstreamError(
                        f"{self.url} ended the stream without a response to {request_id!r}"
                    )
                if attempts == MAX_RESUMES:
                    raise UpstreamError(
                        f"{self.url} gave no response to {request_id!r} in {attempts}"
                        " resumes of its stream"
                    )
                attempts += 1
                part = await self._resume(session, protocol_version, parser)
        finally:
            if part is not None and part is not response:
                part.release()

    async def _resume(
        self, session: str | None, protocol_version: str | None, parser: SSEParser
    ) -> aiohttp.ClientResponse | None:
        """After the stream's retry delay, the rest of it after ``parser``'s last
        event id; None if this attempt failed in a way worth another."""
        await self._sleep(parser.retry if parser.retry is not None else RECONNECT_DELAY)
        try:
            response = await self._get(session, protocol_version, parser.last_event_id)
        except _NoStream:
            raise UpstreamError(
                f"{self.url} ended a request's stream early but refuses to resume it (405)"
            ) from None
        except (_Retry, aiohttp.ClientConnectionError) as exc:
            logger.debug("resuming a stream from %s failed: %s", self.url, exc)
            return None
        parser.new_stream()
        return response

    async def _deliver(self, message: dict[str, Any], on_message: OnMessage | None) -> None:
        if on_message is None:
            logger.debug("dropping %s from %s: nobody listens", message.get("method"), self.url)
        else:
            await on_message(message)

    async def listen(
        self,
        session: str | None,
        on_message: OnStreamMessage,
        protocol_version: str | None = None,
        *,
        last_event_id: str | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        """Pass every message on the upstream's standalone stream to ``on_message``
        until cancelled, with the id of the event it came in.

        Resumes after ``last_event_id`` if given (where another listener stopped).
        ``on_open`` is called each time a stream is open, so the upstream has a
        stream to send on. Returns at once if the upstream has no such stream (405).
        A dropped stream is reopened, resuming after the last event id seen, after the
        server's ``retry:`` delay (or RECONNECT_DELAY), doubled for each attempt that
        brings nothing, up to RECONNECT_MAX. Raises UpstreamSessionLost on 404 and
        UpstreamError on other final refusals.
        """
        parser = SSEParser()  # one for the whole listen: it keeps the last id and retry
        parser.last_event_id = last_event_id
        failures = 0
        while True:
            try:
                delivered = await self._listen_once(
                    session, on_message, protocol_version, parser, on_open
                )
            except _NoStream:
                return
            except _Retry as exc:
                logger.debug("the stream from %s dropped: %s", self.url, exc)
                delivered = False
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.debug("the stream from %s dropped: %s", self.url, self._failure(exc))
                delivered = False
            failures = 0 if delivered else failures + 1
            base = parser.retry if parser.retry is not None else RECONNECT_DELAY
            await self._sleep(min(base * 2 ** max(failures - 1, 0), RECONNECT_MAX))

    async def _listen_once(
        self,
        session: str | None,
        on_message: OnStreamMessage,
        protocol_version: str | None,
        parser: SSEParser,
        on_open: Callable[[], None] | None,
    ) -> bool:
        """Read one GET stream until it ends; whether it brought anything new (a
        message, or a priming event's id)."""
        response = await self._get(session, protocol_version, parser.last_event_id)
        async with response:
            if on_open is not None:
                on_open()
            parser.new_stream()
            last_id = parser.last_event_id
            delivered = False
            async for event in _sse_events(response, parser):
                try:
                    messages = _messages(event.data, f"an event from {self.url}")
                except UpstreamError as exc:
                    logger.warning("skipping an event on the stream: %s", exc)
                    continue
                for message in messages:
                    delivered = True
                    await on_message(message, event.id)
            return delivered or parser.last_event_id != last_id

    async def _get(
        self, session: str | None, protocol_version: str | None, last_event_id: str | None
    ) -> aiohttp.ClientResponse:
        """An open event stream from a GET: the standalone stream, or with
        ``last_event_id`` what follows that event in its stream. The caller closes it.

        Raises _NoStream (405), UpstreamSessionLost (404), _Retry (worth another try)
        or UpstreamError (a final refusal).
        """
        headers = self._headers(session, protocol_version, SSE_TYPE, last_event_id)
        async with asyncio.timeout(self.timeout):  # for the headers; the stream is unbounded
            response = await self._client().get(self.url, headers=headers)
        try:
            status = response.status
            if status == 405:
                raise _NoStream()
            if status == 404 and session:
                raise UpstreamSessionLost(f"{self.url} no longer knows session {session}")
            if status >= 500 or status in RETRY_STATUSES:
                raise _Retry(f"{status} {response.reason}")
            if status != 200:
                raise self._status_error(response, await _read_body(response))
            if response.content_type != SSE_TYPE:
                raise UpstreamError(
                    f"{self.url} answered GET with {response.content_type or 'no content type'}"
                )
        except BaseException:
            response.release()
            raise
        return response

    async def end_session(self, session: str) -> None:
        """DELETE the session on the upstream. Failures only matter to the upstream,
        so they are logged at debug and ignored."""
        headers = {SESSION_HEADER: session}
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().delete(self.url, headers=headers) as response:
                    if response.status >= 400 and response.status != 405:
                        logger.debug(
                            "%s answered %s to ending session %s",
                            self.url,
                            response.status,
                            session,
                        )
        except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
            logger.debug("ending session %s on %s failed: %s", session, self.url, exc)
