"""SessionRegistry across processes: delivery latency, idle cost, sustained delivery,
replay speed and start from a snapshot.

Delivery: a holder process adds a session and answers it (``respond``); this
process ``broadcast``s requests carrying their send time; the holder's handler
echoes the time back, the reply goes through the log, and the holder's transport
measures broadcast -> transport on the system-wide monotonic clock. Messages go
out close together (20 ms apart) and after idle gaps (2 s). Per shared backend.

Idle cost: one worker holds 100, 1,000 and 10,000 sessions and does nothing for a
while: its connections to the backend (as the server counts them), the round trips it
makes per second, its CPU, and its memory per session.

Sustained: a holder process answers 100 sessions; the sender broadcasts to all of
them at once, each session's next message as soon as its last is acknowledged.

Replay: a log of about 1M records (sessions with their messages and replies) is
read, decoded and folded; then a worker starts from a snapshot at its head.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from eventlog import (
    ClientMessage,
    Event,
    MessageHandled,
    OwnerClaimed,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    open_log,
)
from gateway import HandlerContext, SessionRegistry
from gateway.reading import catch_up
from projections import SNAPSHOT_NAME, RegistryProjection, encode_snapshot

from .harness import Row, ScenarioResult, measured, percentile

__all__ = ["delivery_scenario", "idle_scenario", "replay_scenario", "sustained_scenario"]

SPAWN = multiprocessing.get_context("spawn")
HANG_GUARD = 120.0


class LatencyResult(msgspec.Struct):
    backend: str
    pattern: str  # "busy" (20 ms apart) or "after idle" (2 s apart)
    # "handler sends": the handler writes straight to the transport (the reference
    # benchmark's setup); "reply through the log": the reply is appended, then delivered.
    path: str
    messages: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class ReplayResult(msgspec.Struct):
    records: int
    replay_seconds: float
    records_per_second: float
    snapshot_bytes: int
    start_from_snapshot_seconds: float


# -- delivery latency ------------------------------------------------------------------


class _TimingTransport:
    kind = "sse"

    def __init__(self, latencies: list[float], done: asyncio.Event, expected: int) -> None:
        self.latencies, self.done, self.expected = latencies, done, expected

    async def send_message(self, message: dict[str, Any]) -> None:
        sent_ns = message["result"]["t"]
        self.latencies.append((time.monotonic_ns() - sent_ns) / 1e6)
        if len(self.latencies) >= self.expected:
            self.done.set()

    async def disconnect(self) -> None:
        self.done.set()

    async def is_connected(self) -> bool:
        return True


def _hold(url: str, expected: int, via_log: bool, ready: Any, results: Any) -> None:
    async def run() -> None:
        latencies: list[float] = []
        done = asyncio.Event()
        transport = _TimingTransport(latencies, done, expected)

        async def echo(message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any] | None:
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": message["params"]}
            if via_log:
                return reply  # appended as a ServerMessage, then sent by the tail
            await transport.send_message(reply)  # straight back, as the reference's test does
            return None

        registry = SessionRegistry(log_url=url, handler=echo, worker_id="holder")
        await registry.initialize()
        await registry.add_session("bench", transport)
        responder = asyncio.create_task(registry.respond(None, {}, "bench"))
        ready.set()
        await asyncio.wait_for(done.wait(), HANG_GUARD)
        results.put(latencies)
        responder.cancel()
        await registry.shutdown()

    asyncio.run(run())


async def bench_latency(
    backend: str, url: str, busy: int, idle: int, via_log: bool
) -> list[LatencyResult]:
    ready, results = SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(target=_hold, args=(url, busy + idle, via_log, ready, results))
    holder.start()
    sender = SessionRegistry(log_url=url, worker_id="sender")
    await sender.initialize()
    try:
        await asyncio.to_thread(ready.wait, HANG_GUARD)
        for i, gap in enumerate([0.02] * busy + [2.0] * idle):
            await asyncio.sleep(gap)
            message = {"jsonrpc": "2.0", "id": i, "method": "ping"}
            message["params"] = {"t": time.monotonic_ns()}
            await sender.broadcast("bench", message)
        latencies = await asyncio.to_thread(results.get, timeout=HANG_GUARD)
        await asyncio.to_thread(holder.join, HANG_GUARD)
    finally:
        await sender.shutdown()
        if holder.is_alive():
            holder.kill()
    out = []
    path = "reply through the log" if via_log else "handler sends"
    for pattern, values in (("busy", latencies[:busy]), ("after idle", latencies[busy:])):
        out.append(
            LatencyResult(
                backend=backend,
                pattern=pattern,
                path=path,
                messages=len(values),
                p50_ms=statistics.median(values),
                p95_ms=percentile(values, 0.95),
                p99_ms=percentile(values, 0.99),
                max_ms=max(values),
            )
        )
    return out


# -- idle cost -------------------------------------------------------------------------------


class IdleResult(msgspec.Struct):
    backend: str
    sessions: int
    seconds: float
    connections: int | None  # to the backend, this worker's (None: a file, no server)
    # Round trips this worker makes: commits, reads, head queries, a waiting tail's checks.
    backend_ops_per_second: float
    cpu_percent: float
    kib_per_session: float


class _IdleTransport:
    kind = "sse"

    async def send_message(self, message: dict[str, Any]) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def is_connected(self) -> bool:
        return True


async def _connections(backend: str, url: str) -> int | None:
    """This worker's connections to the server, as the server counts them."""
    if backend == "redis":
        client = aioredis.from_url(url.split("?", 1)[0])
        try:
            return (await client.info("clients"))["connected_clients"] - 1  # minus ours
        finally:
            await client.aclose()
    if backend == "postgresql":
        connection = await asyncpg.connect(url.split("?", 1)[0])
        try:
            return await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await connection.close()
    return None  # a file: no connections to count


async def bench_idle(backend: str, url: str, sessions: int, window: float) -> IdleResult:
    registry = SessionRegistry(log_url=url)
    await registry.initialize()
    try:
        # Python allocations while the sessions are added: transports, local state,
        # the projection's entries (RSS would mostly show the allocator's reuse).
        tracemalloc.start()
        allocated_before = tracemalloc.get_traced_memory()[0]
        for start in range(0, sessions, 200):
            await asyncio.gather(
                *(
                    registry.add_session(f"idle-{backend}-{i}", _IdleTransport())
                    for i in range(start, min(start + 200, sessions))
                )
            )
        allocated = tracemalloc.get_traced_memory()[0] - allocated_before
        tracemalloc.stop()
        stats = registry.runtime.log.stats
        before = stats.commits + stats.queries
        cpu_before, started = os.times(), time.monotonic()
        await asyncio.sleep(window)  # idle: what does holding the sessions cost?
        cpu_after, seconds = os.times(), time.monotonic() - started
        operations = stats.commits + stats.queries - before
        connections = await _connections(backend, url)
    finally:
        await registry.shutdown()
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return IdleResult(
        backend=backend,
        sessions=sessions,
        seconds=seconds,
        connections=connections,
        backend_ops_per_second=operations / seconds,
        cpu_percent=100 * cpu / seconds,
        kib_per_session=allocated / 1024 / sessions,
    )


# -- replay and snapshot start ---------------------------------------------------------------


def _session_events(i: int, messages: int) -> list[Event]:
    session_id = f"session-{i}"
    events: list[Event] = [
        SessionOpened(session_id=session_id, transport="sse"),
        OwnerClaimed(session_id=session_id, owner=f"worker-{i % 4}"),
    ]
    for m in range(messages):
        request = ClientMessage(
            session_id=session_id,
            payload=b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{}}' % m,
        )
        events += [
            request,
            ServerMessage(
                session_id=session_id,
                payload=b'{"jsonrpc":"2.0","id":%d,"result":{"content":[]}}' % m,
                reply_to=request.id,
            ),
            MessageHandled(session_id=session_id, message_id=request.id),
        ]
    if i % 2:
        events.append(SessionClosed(session_id=session_id, reason="client"))
    return events


async def bench_replay(directory: Path, records: int) -> ReplayResult:
    url = f"sqlite:///{directory}/replay.db"
    log = await open_log(url, durability="off")
    try:
        batch: list[Event] = []
        i = 0
        while await log.head() + len(batch) < records:
            batch += _session_events(i, messages=30)
            i += 1
            if len(batch) >= 2_000:
                await log.append(batch, worker="bench")
                batch = []
        if batch:
            await log.append(batch, worker="bench")
        total = await log.head()
        started = time.perf_counter()
        projection = RegistryProjection()
        await catch_up(log, projection)
        replay_seconds = time.perf_counter() - started
        snapshot = encode_snapshot(projection)
        await log.save_snapshot(SNAPSHOT_NAME, projection.position, snapshot)
    finally:
        await log.close()
    started = time.perf_counter()
    worker = SessionRegistry(log_url=url)
    await worker.initialize(housekeeping=False)
    start_seconds = time.perf_counter() - started
    assert worker.runtime.projection.state == projection.state
    await worker.shutdown()
    return ReplayResult(
        records=total,
        replay_seconds=replay_seconds,
        records_per_second=total / replay_seconds,
        snapshot_bytes=len(snapshot),
        start_from_snapshot_seconds=start_seconds,
    )


# -- sustained delivery --------------------------------------------------------------------


def _hold_many(url: str, sessions: int, expected: int, ready: Any, results: Any) -> None:
    async def run() -> None:
        latencies: list[float] = []
        done = asyncio.Event()
        transports = {f"s{i}": _TimingTransport(latencies, done, expected) for i in range(sessions)}

        async def echo(message: dict[str, Any], ctx: HandlerContext) -> dict[str, Any] | None:
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": message["params"]}
            await transports[ctx.session_id].send_message(reply)
            return None

        registry = SessionRegistry(log_url=url, handler=echo, worker_id="holder")
        await registry.initialize()
        responders = []
        for session_id, transport in transports.items():
            await registry.add_session(session_id, transport)
            responders.append(asyncio.create_task(registry.respond(None, {}, session_id)))
        ready.set()
        await asyncio.wait_for(done.wait(), HANG_GUARD)
        results.put((latencies, time.monotonic_ns()))
        for responder in responders:
            responder.cancel()
        await registry.shutdown()

    asyncio.run(run())


async def bench_sustained(url: str, sessions: int, messages: int) -> dict[str, float]:
    """Messages/s delivered across processes: one sender per session, each
    broadcasting its next message as soon as the last is acknowledged (durable)."""
    ready, results = SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(target=_hold_many, args=(url, sessions, messages, ready, results))
    holder.start()
    sender = SessionRegistry(log_url=url, worker_id="sender")
    await sender.initialize()
    try:
        await asyncio.to_thread(ready.wait, HANG_GUARD)
        per_session = messages // sessions

        async def send(session_id: str) -> None:
            for i in range(per_session):
                message = {"jsonrpc": "2.0", "id": i, "method": "ping"}
                message["params"] = {"t": time.monotonic_ns()}
                await sender.broadcast(session_id, message)

        started = time.monotonic_ns()
        await asyncio.gather(*(send(f"s{i}") for i in range(sessions)))
        latencies, finished = await asyncio.to_thread(results.get, timeout=HANG_GUARD)
        await asyncio.to_thread(holder.join, HANG_GUARD)
    finally:
        await sender.shutdown()
        if holder.is_alive():
            holder.kill()
    return {
        "messages": len(latencies),
        "messages_per_second": len(latencies) / ((finished - started) / 1e9),
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
    }


# -- scenarios for the harness -------------------------------------------------------------

SHARED = ("sqlite", "postgresql", "redis")


def delivery_scenario(quick: bool, urls: dict[str, str]) -> ScenarioResult:
    busy, idle_gaps = (20, 2) if quick else (200, 20)
    results: list[LatencyResult] = []
    for backend in SHARED:
        url = urls[backend].replace("NS", "delivery")
        for via_log in (False, True):
            results += asyncio.run(bench_latency(backend, url, busy, idle_gaps, via_log))
    rows: list[Row] = []
    for r in results:
        parameter = (
            r.pattern if r.path == "handler sends" else f"{r.pattern}, reply through the log"
        )
        percentiles = (("p50", r.p50_ms), ("p95", r.p95_ms), ("p99", r.p99_ms), ("max", r.max_ms))
        values = [(metric, value, "ms") for metric, value in percentiles]
        values.append(("lost", 0, "messages"))
        rows += measured("delivery", "sessionlog", r.backend, parameter, values)
    return ScenarioResult(
        rows=rows, raw={"busy": busy, "after_idle": idle_gaps, "results": results}
    )


def idle_scenario(quick: bool, urls: dict[str, str]) -> ScenarioResult:
    sizes, window = ((100,), 1.0) if quick else ((100, 1_000, 10_000), 10.0)
    results = [
        asyncio.run(bench_idle(backend, urls[backend].replace("NS", f"idle{size}"), size, window))
        for backend in SHARED
        for size in sizes
    ]
    rows: list[Row] = []
    for r in results:
        rows += measured(
            "idle",
            "sessionlog",
            r.backend,
            f"{r.sessions} sessions",
            [
                ("connections", r.connections, "connections"),
                ("ops/s", r.backend_ops_per_second, "1/s"),
                ("cpu %", r.cpu_percent, "%"),
                ("KiB/session", r.kib_per_session, "KiB"),
            ],
        )
    return ScenarioResult(rows=rows, raw={"window_seconds": window, "results": results})


def sustained_scenario(quick: bool, urls: dict[str, str]) -> ScenarioResult:
    sessions, messages = 100, (1_000 if quick else 5_000)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for backend in SHARED:
        url = urls[backend].replace("NS", "sustained")
        result = raw[backend] = asyncio.run(bench_sustained(url, sessions, messages))
        rows += measured(
            "sustained",
            "sessionlog",
            backend,
            f"{sessions} sessions",
            [
                ("messages/s", result["messages_per_second"], "1/s"),
                ("p50", result["p50_ms"], "ms"),
                ("p99", result["p99_ms"], "ms"),
            ],
        )
    return ScenarioResult(rows=rows, raw={"sessions": sessions, "messages": messages, **raw})


def replay_scenario(quick: bool, workdir: Path) -> ScenarioResult:
    result = asyncio.run(bench_replay(workdir, 20_000 if quick else 1_000_000))
    rows = measured(
        "replay",
        "sessionlog",
        "sqlite",
        f"{result.records} records",
        [
            ("records/s", result.records_per_second, "1/s"),
            ("start from snapshot", result.start_from_snapshot_seconds, "s"),
        ],
    )
    return ScenarioResult(rows=rows, raw={"result": result})
