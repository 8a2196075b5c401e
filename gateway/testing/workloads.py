"""Client workloads against running `sessionlog serve` processes, for the memory test
and bench: big tools/call messages over HTTP+SSE, messages posted to a session
nobody answers, and sessions opened and closed in a loop; and what the log says
about what was acknowledged."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from eventlog import ClientMessage, MessageHandled, ServerMessage, open_log

from .servers import accepts, free_port, stop_process, wait_until

__all__ = [
    "BigCalls",
    "EventReader",
    "Worker",
    "big_call",
    "call_big",
    "open_and_close",
    "open_sse",
    "post_big",
    "rss_mib",
    "unanswered",
    "worker",
]

JSON = {"Content-Type": "application/json"}
STREAMABLE = {**JSON, "Accept": "application/json, text/event-stream"}
LATEST = "2025-11-25"


@dataclass
class Worker:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def worker(log_url: str, *args: str, source: Path | None = None) -> Iterator[Worker]:
    """``sessionlog serve`` on a free port, run from the checkout ``source`` (default:
    the one imported here): how a bench compares another version side by side."""
    port = free_port()
    cwd = source or Path(__file__).parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--log", log_url, *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(cwd), "PYTHONWARNINGS": "ignore"},
    )
    try:
        wait_until(lambda: accepts(port), "sessionlog serve", process, None)
        yield Worker(f"http://127.0.0.1:{port}", process)
    finally:
        stop_process(process)


def rss_mib(process: subprocess.Popen[bytes]) -> float:
    return psutil.Process(process.pid).memory_info().rss / 2**20


class EventReader:
    """Server-sent events of any size from an open response (aiohttp's readline
    stops at 64 KiB)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._buffer = bytearray()

    async def next(self) -> dict[str, str]:
        """The next event with data (comments and pings skipped)."""
        while True:
            for separator in (b"\r\n\r\n", b"\n\n"):
                end = self._buffer.find(separator)
                if end >= 0:
                    block = bytes(self._buffer[:end])
                    del self._buffer[: end + len(separator)]
                    event = _parse(block)
                    if "data" in event or "event" in event:
                        return event
                    break
            else:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise ConnectionError("the stream ended")
                self._buffer += chunk


def _parse(block: bytes) -> dict[str, str]:
    event: dict[str, str] = {}
    for line in block.decode().splitlines():
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        event[name] = f"{event[name]}\n{value}" if name in event else value
    return event


@asynccontextmanager
async def open_sse(
    http: aiohttp.ClientSession, base: str
) -> AsyncIterator[tuple[str, EventReader]]:
    """An HTTP+SSE session held on ``base``: its id and its stream."""
    async with http.get(f"{base}/sse") as response:
        response.raise_for_status()
        reader = EventReader(response)
        endpoint = await reader.next()
        session_id = endpoint["data"].rsplit("=", 1)[1]
        yield session_id, reader


def big_call(request_id: int, size: int) -> bytes:
    """A tools/call of the built-in echo with ``size`` bytes of text."""
    arguments = {"text": "x" * size}
    params = {"name": "echo", "arguments": arguments}
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    )


async def post_big(
    http: aiohttp.ClientSession, base: str, session_id: str, request_id: int, size: int
) -> tuple[int, dict[str, Any] | None]:
    """POST one big tools/call to the session on ``base``: the status, and the JSON
    body of a refusal."""
    url = f"{base}/messages/?session_id={session_id}"
    async with http.post(url, data=big_call(request_id, size), headers=JSON) as response:
        body = await response.read()
        return response.status, (orjson.loads(body) if response.status >= 400 else None)


@dataclass
class BigCalls:
    statuses: Counter[int] = field(default_factory=Counter)
    answered: set[int] = field(default_factory=set)


async def call_big(
    http: aiohttp.ClientSession,
    stream: EventReader,
    poster: str,
    session_id: str,
    *,
    count: int,
    size: int,
    window: int = 4,
) -> BigCalls:
    """``count`` big tools/call POSTed to ``poster``, at most ``window`` unanswered at
    once, each answer read from the session's stream; a refusal (429) is sent again
    after the next answer."""
    result = BigCalls()
    waiting: list[int] = list(range(1, count + 1))
    unanswered: set[int] = set()
    while waiting or unanswered:
        while waiting and len(unanswered) < window:
            request_id = waiting[0]
            status, _ = await post_big(http, poster, session_id, request_id, size)
            result.statuses[status] += 1
            if status != 202:
                break  # refused (the backlog is full): sent again after an answer
            waiting.pop(0)
            unanswered.add(request_id)
        if not unanswered:
            continue  # refused with nothing of ours waiting: the poster is behind the log
        event = await stream.next()
        answer = orjson.loads(event["data"])
        if answer.get("id") in unanswered:
            unanswered.discard(answer["id"])
            result.answered.add(answer["id"])
    return result


async def open_and_close(http: aiohttp.ClientSession, base: str, count: int, clients: int) -> None:
    """``count`` Streamable HTTP sessions opened (initialize) and ended (DELETE), by
    ``clients`` concurrent clients."""
    numbers = itertools.count()
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LATEST,
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        }
    )

    async def client() -> None:
        while next(numbers) < count:
            async with http.post(f"{base}/mcp", data=body, headers=STREAMABLE) as response:
                response.raise_for_status()
                await response.read()
                session_id = response.headers["Mcp-Session-Id"]
            headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": LATEST}
            async with http.delete(f"{base}/mcp", headers=headers) as response:
                response.raise_for_status()

    await asyncio.gather(*(client() for _ in range(clients)))


async def unanswered(log_url: str) -> tuple[int, list[str]]:
    """How many client messages the log holds, and those with no recorded answer
    (a server message in reply and a "handled" outcome)."""
    async with await open_log(log_url, read_only=True) as log:
        asked: list[str] = []
        replied: set[str] = set()
        handled: set[str] = set()
        position = 0
        while True:
            records, reached = await log.read_page(position, 16)  # big records
            if reached == position:
                break
            position = reached
            for record in records:
                event = record.event
                if isinstance(event, ClientMessage):
                    asked.append(event.id)
                elif isinstance(event, ServerMessage) and event.reply_to is not None:
                    replied.add(event.reply_to)
                elif isinstance(event, MessageHandled) and event.outcome == "handled":
                    handled.add(event.message_id)
    return len(asked), [m for m in asked if m not in replied or m not in handled]
