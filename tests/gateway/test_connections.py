"""Connection hygiene of `sessionlog serve`, with real sockets against a real worker
process: clients that send half their headers or a body shorter than its
Content-Length are cut off, the worker never holds more connections than its cap
(nor than its file descriptor limit allows), an event stream outlives every read
timeout, and running out of descriptors is one log line now and then."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.connections import ACCEPT_BACKLOG, FD_RESERVE, Occasional, connection_limit
from gateway.settings import Settings
from gateway.testing.servers import accepts, free_port, stop_process, wait_until
from tests.gateway.helpers import FakeClock

# Guards against hangs only; nothing asserts how fast anything is.
HANG_GUARD = 30.0

INITIALIZE = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
)
PING = b'{"jsonrpc":"2.0","id":2,"method":"ping"}'
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


@dataclass
class Worker:
    port: int
    process: subprocess.Popen[bytes]
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> bytes:
        return self.output.read_bytes()


@contextlib.contextmanager
def worker(tmp_path: Path, *args: str, open_files: int | None = None) -> Iterator[Worker]:
    """``sessionlog serve`` in its own process; with ``open_files``, its file
    descriptor limit lowered to that."""

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    port = free_port()
    output = tmp_path / "serve.log"
    log = ("--log", f"sqlite:///{tmp_path}/log.db")
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), *log, *args],
            stdout=sink,
            stderr=sink,
            preexec_fn=limit_files,
        )
    try:
        wait_until(lambda: accepts(port), "sessionlog serve", process, output)
        yield Worker(port, process, output)
    finally:
        stop_process(process)


async def initialize(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(f"{url}/mcp", data=INITIALIZE, headers=JSON_HEADERS) as response:
        assert response.status == 200, await response.text()
        return response.headers["Mcp-Session-Id"]


async def ping(http: aiohttp.ClientSession, url: str, session_id: str) -> None:
    headers = {**JSON_HEADERS, "Mcp-Session-Id": session_id}
    async with http.post(f"{url}/mcp", data=PING, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["result"] == {}


async def read_to_close(reader: asyncio.StreamReader) -> bytes:
    """All a connection got until the worker closed it. A close with our unread
    request bytes in the worker's buffer is a reset (the kernel's choice): closed too."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


class Attack:
    """Connections that each send part of a request and then nothing."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, count: int, sent: bytes) -> None:
        for _ in range(count):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:  # refused by the kernel (the backlog is full): not held
                continue
            writer.write(sent)
            self.connections.append((reader, writer))

    async def half_headers(self, count: int) -> None:
        await self.open(count, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: appl")

    async def short_bodies(self, count: int) -> None:
        head = (
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        await self.open(count, head + b'{"jsonrpc":')

    async def answers(self) -> list[bytes]:
        """What each connection got before the worker closed it (waits for every
        one to be closed)."""

        async with asyncio.timeout(HANG_GUARD):
            return await asyncio.gather(*(read_to_close(reader) for reader, _ in self.connections))

    def close(self) -> None:
        for _, writer in self.connections:
            writer.close()


@contextlib.asynccontextmanager
async def attack(port: int) -> AsyncIterator[Attack]:
    attacker = Attack(port)
    try:
        yield attacker
    finally:
        attacker.close()


def status_of(answer: bytes) -> int | None:
    """The status of the HTTP response in ``answer``, None when there is none."""
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def json_rpc_error(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    error = orjson.loads(body)
    assert error["jsonrpc"] == "2.0" and isinstance(error["error"]["code"], int), error
    return error


# -- slow clients ----------------------------------------------------------------------


async def test_slow_headers_and_short_bodies_are_cut_off_while_others_are_served(
    tmp_path: Path,
) -> None:
    # 600 clients that stop mid-request against a worker allowed 512 descriptors
    # (so 192 connections): before, they were held 40 s and new requests timed out;
    # the log grew 54 MB in 30 s.
    timeouts = ("--header-timeout", "1", "--body-timeout", "1")
    with worker(tmp_path, *timeouts, open_files=512) as served:
        async with aiohttp.ClientSession() as http, attack(served.port) as attacker:
            session_id = await initialize(http, served.url)
            await attacker.half_headers(300)
            await attacker.short_bodies(300)
            # Served while the attack holds what it can.
            waits = []
            for _ in range(20):
                started = time.perf_counter()
                async with asyncio.timeout(HANG_GUARD):
                    await ping(http, served.url, session_id)
                waits.append(time.perf_counter() - started)
            # Every attacking connection ends: cut off, made room for others, or refused.
            answers = await attacker.answers()
            # And after it.
            await ping(http, served.url, session_id)
        log = served.log()
    statuses = {status_of(answer) for answer in answers}
    assert statuses <= {None, 408, 503}, statuses
    for answer in answers:
        if status_of(answer) is not None:
            json_rpc_error(answer)
    assert 408 in statuses  # some short bodies were answered, not only dropped
    # A burst of accepts may still find the descriptors gone: a line, not a traceback each.
    assert b"Traceback" not in log, log[-2000:]
    assert len(log) < 4096, log
    print(
        f"\nnormal client during the attack: max {max(waits) * 1000:.1f} ms per ping;"
        f" server log {len(log)} bytes"
    )


async def test_an_event_stream_outlives_the_read_timeouts(tmp_path: Path) -> None:
    timeouts = ("--header-timeout", "0.2", "--body-timeout", "0.2")
    with worker(tmp_path, *timeouts) as served:
        async with aiohttp.ClientSession() as http, attack(served.port) as attacker:
            async with http.get(f"{served.url}/sse") as stream:
                endpoint = (await anext_event(stream))["data"]
                # Both timeouts have fired since the stream opened.
                await attacker.half_headers(1)
                await attacker.short_bodies(1)
                late = await attacker.answers()
                assert status_of(late[0]) is None and status_of(late[1]) == 408, late
                async with http.post(f"{served.url}{endpoint}", data=PING) as posted:
                    assert posted.status == 202
                event = await anext_event(stream)
                assert orjson.loads(event["data"]) == {"jsonrpc": "2.0", "id": 2, "result": {}}


async def test_a_kept_alive_connection_that_stalls_in_its_next_request_is_cut_off(
    tmp_path: Path,
) -> None:
    with worker(tmp_path, "--header-timeout", "0.2") as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            async with asyncio.timeout(HANG_GUARD):
                head = await reader.readuntil(b"\r\n\r\n")
                assert status_of(head) == 200, head
                await reader.readexactly(
                    int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                )
                # Kept alive: the next request starts, and stops halfway.
                writer.write(b"GET /healthz HTTP/1.1\r\nHo")
                assert await read_to_close(reader) == b""
        finally:
            writer.close()


async def test_a_streamable_http_stream_outlives_the_read_timeouts(tmp_path: Path) -> None:
    with worker(tmp_path, "--header-timeout", "0.2") as served:
        async with aiohttp.ClientSession() as http, attack(served.port) as attacker:
            session_id = await initialize(http, served.url)
            headers = {"Accept": "text/event-stream", "Mcp-Session-Id": session_id}
            async with http.get(f"{served.url}/mcp", headers=headers) as stream:
                assert stream.status == 200
                await anext_event(stream)  # the priming event
                await attacker.half_headers(1)
                await attacker.answers()  # the header timeout fired
                # The stream is still the session's: a second one is refused.
                async with http.get(f"{served.url}/mcp", headers=headers) as second:
                    assert second.status == 409
                await ping(http, served.url, session_id)
                assert not stream.content.at_eof()


async def anext_event(stream: aiohttp.ClientResponse) -> dict[str, str]:
    fields: dict[str, str] = {}
    async with asyncio.timeout(HANG_GUARD):
        while True:
            line = (await stream.content.readline()).decode().rstrip("\r\n")
            if not line and fields:
                return fields
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


# -- the connection cap ----------------------------------------------------------------


async def test_past_the_cap_the_longest_waiting_connection_makes_room(tmp_path: Path) -> None:
    with worker(tmp_path, "--max-connections", "10") as served:
        async with aiohttp.ClientSession() as http, attack(served.port) as attacker:
            await attacker.half_headers(10)
            # The cap is full of clients that send nothing: a new one is served...
            await initialize(http, served.url)
            # ...in place of the one that waited longest.
            reader, _ = attacker.connections[0]
            async with asyncio.timeout(HANG_GUARD):
                assert await read_to_close(reader) == b""


async def test_past_the_cap_with_every_connection_served_a_newcomer_gets_503(
    tmp_path: Path,
) -> None:
    with worker(tmp_path, "--max-connections", "4") as served:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with contextlib.AsyncExitStack() as streams:
                for _ in range(4):
                    stream = await streams.enter_async_context(http.get(f"{served.url}/sse"))
                    await anext_event(stream)
                async with attack(served.port) as attacker:
                    await attacker.open(1, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    [answer] = await attacker.answers()
                assert status_of(answer) == 503, answer
                error = json_rpc_error(answer)
                assert "at most 4" in str(error["error"]), error
            # Streams closed: room again, once the worker has seen them close.
            async with asyncio.timeout(HANG_GUARD):
                while True:
                    async with http.get(f"{served.url}/healthz") as response:
                        if response.status == 200:
                            break
                        assert response.status == 503
                    await asyncio.sleep(0)
        log = served.log()
    assert b"all being served: refused one" in log, log
    assert b"Traceback" not in log, log


def test_the_default_cap_leaves_room_in_the_descriptor_limit() -> None:
    # The cap is the limit less a reserve: accept() never runs out first.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit(Settings()) == soft - FD_RESERVE - 2 * ACCEPT_BACKLOG
    assert connection_limit(Settings(max_connections=7)) == 7


async def test_out_of_descriptors_is_one_log_line_now_and_then(tmp_path: Path) -> None:
    # A cap above what the descriptor limit allows: accept() fails with EMFILE.
    args = ("--max-connections", "1000", "--header-timeout", "1")
    with worker(tmp_path, *args, open_files=128) as served:
        async with attack(served.port) as attacker:
            await attacker.half_headers(300)
            await attacker.answers()
        # Descriptors back: served again.
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(HANG_GUARD):
                await initialize(http, served.url)
        log = served.log()
    lines = [line for line in log.splitlines() if b"cannot accept connections" in line]
    assert lines, log
    assert b"Traceback" not in log, log
    assert len(log) < 4096, log


def test_occasional_says_each_trouble_once_in_a_while_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = Occasional(every=10.0, clock=clock)
    with caplog.at_level("WARNING", logger="sessionlog.gateway"):
        for _ in range(5):
            log.warning("exhausted", "out of %s", "files")
        log.warning("refused", "refused one")
        clock.advance(10.0)
        log.warning("exhausted", "out of %s", "files")
    assert [record.getMessage() for record in caplog.records] == [
        "out of files",
        "refused one",
        "out of files (and 4 more times in the 10 s before)",
    ]
