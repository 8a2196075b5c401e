"""Faults under load: what a client sees when the backend freezes or restarts.

One gateway worker serves HTTP+SSE clients that each post a message and wait for its
answer on their stream, in a loop (a client whose stream ends resumes it with
Last-Event-ID, as SDK clients do). Meanwhile the backend is frozen (every server
process SIGSTOPped; for SQLite another process holds the write lock, as a frozen
appender would) for ``FAULT`` seconds, or killed -9 and started again on its port.

A third fault puts the log's storage back to a copy taken ``FAULT`` seconds
earlier (a restore from a backup, a failover to a replica that was behind): what was
appended meanwhile is gone, and every worker must notice and fold the log again.

Measured per case: the longest any request waited for the gateway's answer during the
fault (a 503 is an answer), how long after the fault struck /readyz said 503, how long
after the backend came back the first message was answered again, and how many
messages were acknowledged (202) and never answered, as the clients saw it and as the
log says (a client message in the log without a reply). Both must be 0, except the
clients' count after a rollback: a message acknowledged after the copy was taken is
gone with what the rollback took (see the README: what an acknowledged write survives).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from eventlog import ClientMessage, ServerMessage, open_log
from gateway.protocol.sse_codec import SSEParser
from gateway.testing.rollback import Rollback
from gateway.testing.servers import PostgresServer, RedisServer
from gateway.testing.serving import serve_process

from .harness import Row, ScenarioResult, measured

__all__ = ["scenario"]

FAULT = 10.0  # s a backend stays frozen (--quick: QUICK_FAULT)
QUICK_FAULT = 2.0
WARM = 2.0  # s of load before the fault
SETTLE = 8.0  # s of load after the backend is back
DRAIN = 30.0  # s the clients wait for answers still owed at the end
ANSWER_PATIENCE = 3.0  # s a client waits for an answer before it sends the next message
CLIENTS = 10
REQUEST_GUARD = 120.0  # s: a request still unanswered by then is counted as hung
RETRY_PAUSE = 0.05  # s a client waits after a 503 or a broken connection
RESTARTED = "killed -9, restarted"
ROLLED_BACK = "rolled back to a copy"


@dataclass
class Load:
    """What the clients saw; times are time.monotonic()."""

    longest_request: float = 0.0
    hung: int = 0  # requests with no HTTP answer within REQUEST_GUARD
    acknowledged: dict[tuple[int, int], float] = field(default_factory=dict)
    answered: dict[tuple[int, int], float] = field(default_factory=dict)
    refused: int = 0  # 5xx answers and broken connections
    not_ready: list[float] = field(default_factory=list)  # when /readyz said 503
    sessions: list[str] = field(default_factory=list)


class _Client:
    """One HTTP+SSE session: a stream that resumes, and a loop of pings."""

    def __init__(self, number: int, http: aiohttp.ClientSession, base: str, load: Load) -> None:
        self.number, self.http, self.base, self.load = number, http, base, load
        self.endpoint = ""
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.opened = asyncio.Event()

    async def stream(self) -> None:
        """Hold the session's stream, resuming it whenever it ends."""
        parser, url = SSEParser(), f"{self.base}/sse"
        while True:
            headers = {}
            if parser.last_event_id is not None:
                headers["Last-Event-ID"] = parser.last_event_id
            try:
                async with self.http.get(url, headers=headers) as response:
                    if response.status != 200:
                        await asyncio.sleep(RETRY_PAUSE)
                        continue
                    parser.new_stream()
                    async for chunk in response.content.iter_any():
                        for event in parser.feed(chunk):
                            self._received(event.event, event.data)
                        if self.endpoint:
                            url = f"{self.base}{self.endpoint.replace('/messages/', '/sse')}"
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(RETRY_PAUSE)

    def _received(self, kind: str, data: str) -> None:
        if kind == "endpoint":
            if not self.endpoint:
                self.endpoint = data
                self.load.sessions.append(data.split("session_id=")[-1])
                self.opened.set()
            return
        number = orjson.loads(data).get("id")
        waiter = self.waiting.get(number)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            self.load.answered[self.number, number] = time.monotonic()

    async def ping(self, stop: asyncio.Event) -> None:
        await self.opened.wait()
        number = 0
        while not stop.is_set():
            number += 1
            key = (self.number, number)
            waiter = self.waiting[number] = asyncio.get_running_loop().create_future()
            message = {"jsonrpc": "2.0", "id": number, "method": "ping"}
            sent = time.monotonic()
            try:
                async with asyncio.timeout(REQUEST_GUARD):
                    async with self.http.post(f"{self.base}{self.endpoint}", json=message) as r:
                        status = r.status
                        await r.read()
            except TimeoutError:
                self.load.hung += 1
                continue
            except aiohttp.ClientError:
                status = 0
            self.load.longest_request = max(self.load.longest_request, time.monotonic() - sent)
            if status != 202:
                self.load.refused += 1
                del self.waiting[number]
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.load.acknowledged[key] = sent
            # A client gives up waiting at last (the answer still counts if it comes).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANSWER_PATIENCE):
                    await asyncio.shield(waiter)

    async def drain(self) -> None:
        """Wait (bounded) for the answers still owed."""
        owed = [w for w in self.waiting.values() if not w.done()]
        if owed:
            await asyncio.wait(owed, timeout=DRAIN)


async def _watch_readiness(http: aiohttp.ClientSession, base: str, load: Load) -> None:
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(5.0):
                async with http.get(f"{base}/readyz") as answer:
                    if answer.status == 503:
                        load.not_ready.append(time.monotonic())
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def _write_lock_held(path: Path) -> Iterator[None]:
    """Another process's write transaction on the SQLite file, left open."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@dataclass
class Case:
    backend: str
    fault: str  # the parameter column: what was done
    log_url: str
    # Runs the fault; returns when it struck and when the backend was back (monotonic).
    inflict: Callable[[], Awaitable[tuple[float, float]]]


async def _run_case(case: Case, output: Path) -> dict[str, Any]:
    load = Load()
    stop = asyncio.Event()
    with serve_process(case.log_url, output=output) as served:
        async with aiohttp.ClientSession() as http:
            clients = [_Client(n, http, served.url, load) for n in range(CLIENTS)]
            streams = [asyncio.create_task(c.stream()) for c in clients]
            pings = [asyncio.create_task(c.ping(stop)) for c in clients]
            readiness = asyncio.create_task(_watch_readiness(http, served.url, load))
            await asyncio.sleep(WARM)
            struck, back = await case.inflict()
            await asyncio.sleep(SETTLE)
            stop.set()
            await asyncio.gather(*pings)
            await asyncio.gather(*(c.drain() for c in clients))
            for task in [*streams, readiness]:
                task.cancel()
            await asyncio.gather(*streams, readiness, return_exceptions=True)
    unanswered_in_log = await _unanswered_in_log(case.log_url, set(load.sessions))
    after_fault = [t for t in load.not_ready if t >= struck]
    answered_again = [t for t in load.answered.values() if t >= back]
    return {
        "longest request": load.longest_request,
        "hung": load.hung,
        "acknowledged": len(load.acknowledged),
        "unanswered": len(load.acknowledged.keys() - load.answered.keys()),
        "unanswered in log": unanswered_in_log,
        "refused": load.refused,
        "readyz 503 after": after_fault[0] - struck if after_fault else None,
        "answered again after": min(answered_again) - back if answered_again else None,
    }


async def _unanswered_in_log(log_url: str, sessions: set[str]) -> int:
    """Client messages of ``sessions`` with no reply recorded after them."""
    asked: dict[tuple[str, Any], int] = {}
    replied: set[tuple[str, Any]] = set()
    async with await open_log(log_url, read_only=True) as log:
        position = 0
        while page := await log.read(position, 5000):
            position = page[-1].position
            for record in page:
                event = record.event
                if isinstance(event, ClientMessage) and event.session_id in sessions:
                    asked[event.session_id, orjson.loads(event.payload).get("id")] = 1
                elif isinstance(event, ServerMessage) and event.session_id in sessions:
                    replied.add((event.session_id, orjson.loads(event.payload).get("id")))
    return len(asked.keys() - replied)


def _cases(workdir: Path, postgres: PostgresServer, redis: RedisServer, fault: float) -> list[Case]:
    def frozen(server: PostgresServer | RedisServer) -> Callable[[], Any]:
        async def inflict() -> tuple[float, float]:
            struck = time.monotonic()
            server.freeze()
            try:
                await asyncio.sleep(fault)
            finally:
                server.thaw()
            return struck, time.monotonic()

        return inflict

    def restarted(server: PostgresServer | RedisServer) -> Callable[[], Any]:
        async def inflict() -> tuple[float, float]:
            struck = time.monotonic()
            await asyncio.to_thread(server.restart)
            return struck, time.monotonic()

        return inflict

    def rolled_back(backend: str, url: str) -> Case:
        async def inflict() -> tuple[float, float]:
            rollback = Rollback(url)
            await rollback.save()
            await asyncio.sleep(fault)
            await rollback.restore()
            struck = time.monotonic()
            return struck, struck

        return Case(backend, ROLLED_BACK, url, inflict)

    sqlite_file, rolled_file = workdir / "faults.db", workdir / "rolled-back.db"

    async def sqlite_locked() -> tuple[float, float]:
        struck = time.monotonic()
        with _write_lock_held(sqlite_file):
            await asyncio.sleep(fault)
        return struck, time.monotonic()

    frozen_for = f"frozen {fault:.0f} s"
    return [
        Case("sqlite", f"write lock held {fault:.0f} s", f"sqlite:///{sqlite_file}", sqlite_locked),
        Case("postgresql", frozen_for, f"{postgres.url}?namespace=f1", frozen(postgres)),
        Case("postgresql", RESTARTED, f"{postgres.url}?namespace=f2", restarted(postgres)),
        Case("redis", frozen_for, f"{redis.url}?namespace=f1", frozen(redis)),
        Case("redis", RESTARTED, f"{redis.url}?namespace=f2", restarted(redis)),
        rolled_back("sqlite", f"sqlite:///{rolled_file}"),
        rolled_back("postgresql", f"{postgres.url}?namespace=f3"),
        rolled_back("redis", f"{redis.url}?namespace=f3"),
    ]


UNITS = {
    "longest request": "s",
    "readyz 503 after": "s",
    "answered again after": "s",
    "acknowledged": "messages",
    "unanswered": "messages",
    "unanswered in log": "messages",
    "lost with the rollback": "messages",
    "hung": "requests",
}


def scenario(quick: bool, workdir: Path) -> ScenarioResult:
    """Every case on its own servers (they are frozen and killed), one after another."""
    rows: list[Row] = []
    fault = QUICK_FAULT if quick else FAULT
    raw: dict[str, Any] = {"fault_seconds": fault, "clients": CLIENTS, "cases": []}
    directory = Path(tempfile.mkdtemp(prefix="faults-", dir=workdir))
    (directory / "pg").mkdir()
    (directory / "redis").mkdir()
    postgres, redis = PostgresServer(directory / "pg"), RedisServer(directory / "redis")
    postgres.start()
    redis.start()
    try:
        for case in _cases(directory, postgres, redis, fault):
            output = directory / f"{case.backend}-{len(raw['cases'])}.log"
            figures = asyncio.run(_run_case(case, output))
            raw["cases"].append({"backend": case.backend, "fault": case.fault, **figures})
            if case.fault == ROLLED_BACK:  # acknowledged after the copy: taken with it
                figures["lost with the rollback"] = figures.pop("unanswered")
            values = [(name, figures.get(name), unit) for name, unit in UNITS.items()]
            rows += measured("faults", "sessionlog", case.backend, case.fault, values)
    finally:
        postgres.stop()
        redis.stop()
    return ScenarioResult(rows=rows, raw=raw)


if __name__ == "__main__":
    import json
    import sys

    result = scenario(False, Path(tempfile.mkdtemp(prefix="bench-faults-")))
    json.dump(result.raw, sys.stdout, indent=1)
