"""Baseline 1: ContextForge's own SessionRegistry, measured the way bench/registry.py
measures ours, on the same machine and the same Redis server.

    python -m bench.contextforge [--quick]

The reference is ``mcpgateway.cache.session_registry.SessionRegistry`` of
mcp-contextforge-gateway 1.1.0. It runs in its own virtualenv,
``bench/.venv-contextforge/``, made on first use by gateway/testing/venvs.py (``pip install
--ignore-requires-python``: it declares Python >= 3.12, its wheel runs on 3.11), and
is driven by ``bench/contextforge_driver.py`` in separate OS processes that import
nothing of ours. They talk JSON lines over stdin/stdout and say "ready" before any
measurement starts. Its settings come from the environment, as in a deployment:
``CACHE_TYPE=redis`` + ``REDIS_URL`` for the Redis backend (the registry takes its
client from the shared factory, not from its ``redis_url`` argument),
``DATABASE_URL=sqlite:///...`` for the database backend (its tables created as its
bootstrap does on an empty database: ``Base.metadata.create_all``), ``LOG_LEVEL=ERROR``
(its default), and random values for the secrets its settings refuse to start without.
On the database backend the holder adds its sessions only once the registry's
start-up cleanup pass is over: that pass removes every local session whose row it
does not find, and drops a session whose INSERT has not committed yet (seen here:
the delivery session vanished and every broadcast failed its foreign key).

The holder process adds sessions with a recording transport and runs ``respond()``
for each as the reference's SSE endpoint does (a task per session, registered with
``register_respond_task``). ``generate_response`` is replaced by one that sends the
message straight back on the transport, so only the registry is measured (the real
one makes an HTTP call to the gateway's own /rpc). The sender process calls
``broadcast()``. Each message carries ``time.monotonic_ns()`` at send, the system-wide
monotonic clock, and the holder computes the latency when its transport is called.

delivery: one session; 200 messages 20 ms apart ("busy"), then 20 messages 2 s apart
("after idle"), each phase waited out until every message arrived, or no delivery
came for 20 s after the last send, or a cap (300 s); "lost" counts the messages of the
phase never delivered by then. The database backend polls each session (1 s after a
message, backing off x1.5 to 5 s when none) and takes one message a poll, then sleeps,
so a burst drains at one message a second: the busy phase takes ~200 s on SQLite.

idle: one holder process with 100, 1,000 and 10,000 sessions, added 20 at a time,
their respond loops started 1,000 at a time, each batch subscribed (``PUBSUB NUMSUB``
says so, or its respond task ended) before the next, as sessions arriving over time
would be. (Started all at once, 9,999 of 10,000 Redis respond loops failed, even with
the pool raised: redis-py's 2 s connect timeout expired while the event loop opened
the others. Holding 10,000 sessions keeps the holder's event loop busy, so the ramp
takes a minute or more.) Then a settle time, then a window of doing nothing.
connections: Redis ``INFO clients`` ``connected_clients`` during the holder's life
minus before it started; SQLite: file descriptors the holder has open to the database
file (``/proc/self/fd``; the WAL and SHM descriptors and the engine pool's counts are
in raw; at most ``asyncio.to_thread``'s worker threads use connections). ops/s: Redis
``INFO stats total_commands_processed`` over the window, minus our own INFO, per
second; SQLite: statements counted by a ``before_cursor_execute`` listener on the
reference's engine in the holder (pool pre-ping checks bypass it; checkouts, each of
which pre-pings, are counted apart in raw). cpu %: the holder's user+sys time over
the window. rss MiB: the holder's resident memory at the end of the window.
failures: respond tasks ended by an exception plus ERROR records logged in the holder
(the registry logs its respond-loop, add and broadcast errors and carries on), from
the start of the respond loops to the end of the window (most happen at the start).
Windows: the Redis window is 30 s, one full ``REDIS_HEALTH_CHECK_INTERVAL`` (30 s):
redis-py pings each idle pub/sub connection once per interval, every connection of
the reference at nearly the same moment, so a 10 s window would see either all
those PINGs or none of them; 2 s settle. The SQLite window is 10 s after a 10 s
settle, by which time the poll loops have backed off to their 5 s steady state. A
run whose respond loops already failed at the start (the default pool) is there for
its failures and gets a plain 10 s window.

Redis pool: the reference takes every session's pub/sub connection from its one
shared client's pool, ``settings.redis_max_connections`` (env
``REDIS_MAX_CONNECTIONS``, "Connection pool size per worker", default 50), where the
registry's own ``mcp_session_events`` subscription holds one: 49 sessions fit. Past
that, ``pubsub.subscribe`` raises ``MaxConnectionsError`` ("Too many connections")
outside the respond loop's try, the respond task dies and its session never receives
anything (nothing is logged: the exception ends the task). So each idle size runs
first with the default pool; when any respond loop failed, it runs again with
``REDIS_MAX_CONNECTIONS`` = sessions + 100 as "N sessions, pool raised", so the cost
of the sessions can be measured. The
Redis server's ``maxclients`` is raised for the run if below sessions + 200, and put
back after. The sustained scenario runs with the raised pool in both processes (100
sessions would not fit the default one).

sustained: the holder answers 100 sessions; the sender broadcasts to all of them at
once, each session's next message as soon as ``broadcast()`` returned for its last
(as bench/registry.py does), 5,000 messages in all or until 30 s; messages/s is what
the holder received over first send -> last delivery (or the 30 s bound).

Numbers are the reference's as it behaves by default; whatever fails is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gateway.testing import venvs

from .harness import Row, ScenarioResult, percentile

__all__ = ["ensure_venv", "main", "run"]

SYSTEM = "contextforge"
VERSION = "1.1.0"
REQUIREMENT = f"mcp-contextforge-gateway[redis,aiosqlite]=={VERSION}"
VENV = Path(__file__).parent / ".venv-contextforge"
DRIVER = Path(__file__).with_name("contextforge_driver.py")
DEFAULT_POOL = 50  # settings.redis_max_connections of 1.1.0
HEALTH_CHECK_INTERVAL = 30.0  # settings.redis_health_check_interval of 1.1.0

# Guards: every wait is bounded.
START_GUARD = 120.0  # a driver importing the reference and initializing
READY_GUARD = 360.0  # a holder adding and subscribing up to 10,000 sessions
STALL = 20.0  # no delivery for this long after the last send: the rest is lost
DRAIN_CAP = 300.0  # a delivery phase ends this long after its last send at the latest
RESPOND_BATCH = 1_000  # respond loops a holder starts at a time (see the docstring)
FAILED_WINDOW = 10.0  # the idle window of a run whose respond loops failed at start


def _log(message: str) -> None:
    print(f"[contextforge] {message}", file=sys.stderr, flush=True)


# -- the reference's virtualenv -----------------------------------------------------------


def ensure_venv() -> Path:
    """The virtualenv's Python, with the reference installed; made on first use."""
    _log(f"the reference's virtualenv: {VENV}")
    probe = (
        "import importlib.metadata as m, redis, hiredis, sqlalchemy, mcpgateway;"
        f"assert m.version('mcp-contextforge-gateway') == {VERSION!r}"
    )
    return venvs.ensure_venv(VENV, [REQUIREMENT], probe, pip_args=("--ignore-requires-python",))


# -- driver processes ---------------------------------------------------------------------


class DriverError(RuntimeError):
    """Raised when a driver process fails, exits or misses a guard."""


class Driver:
    """One contextforge_driver.py process: JSON commands in, JSON events out."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log  # the driver's stderr: the reference's own logging goes there

    @classmethod
    async def start(
        cls,
        python: Path,
        workdir: Path,
        name: str,
        role: str,
        backend: str,
        url: str,
        env: dict[str, str],
        sessions: int = 1,
        prefix: str = "bench",
    ) -> Driver:
        log = workdir / f"{name}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                str(python),
                str(DRIVER),
                role,
                f"--backend={backend}",
                f"--url={url}",
                f"--sessions={sessions}",
                f"--prefix={prefix}",
                f"--batch={RESPOND_BATCH}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=workdir,
                env=env,
                limit=2**26,  # a line of 5,000 latencies
            )
        return cls(name, process, log)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    async def send(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        await self.process.stdin.drain()

    async def wait_for(self, event: str, guard: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + guard
        while True:
            try:
                line = await asyncio.wait_for(
                    self.process.stdout.readline(), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise DriverError(
                    f"{self.name}: no {event!r} after {guard:.0f}s\n{self._tail()}"
                ) from None
            if not line:
                await self.process.wait()
                raise DriverError(
                    f"{self.name} exited ({self.process.returncode}) before {event!r}\n"
                    f"{self._tail()}"
                )
            message = json.loads(line)
            if message["event"] == "error":
                raise DriverError(
                    f"{self.name}: {message['error']}\n{message['traceback']}\n{self._tail()}"
                )
            if message["event"] == event:
                return message

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.send("stop")
                await asyncio.wait_for(self.process.wait(), 90)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class Bench:
    """What every measurement of one run shares: the venv, the server, the files."""

    def __init__(self, python: Path, redis_url: str, workdir: Path) -> None:
        self.python = python
        self.redis_url = redis_url
        self.workdir = workdir
        self.probe = aioredis.Redis.from_url(redis_url, single_connection_client=True)
        self.drivers: list[Driver] = []
        self.files = 0

    def sqlite_url(self, name: str) -> str:
        self.files += 1
        path = self.workdir / f"cf-{self.files}-{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"

    def env(self, backend: str, url: str, pool: int | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        }
        env.update(
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="ERROR",  # settings.log_level's default
            # Its settings refuse placeholder secrets: random ones for this process only.
            JWT_SECRET_KEY=secrets.token_urlsafe(32),
            AUTH_ENCRYPTION_SECRET=secrets.token_urlsafe(32),
            PLATFORM_ADMIN_PASSWORD=secrets.token_urlsafe(24),
            DEFAULT_USER_PASSWORD=secrets.token_urlsafe(24),
        )
        if backend == "redis":
            env.update(
                CACHE_TYPE="redis",
                REDIS_URL=url,
                DATABASE_URL=f"sqlite:///{self.workdir}/cf-unused.db",
            )
            if pool is not None:
                env["REDIS_MAX_CONNECTIONS"] = str(pool)
        else:
            env.update(CACHE_TYPE="database", DATABASE_URL=url)
        return env

    async def start(
        self,
        name: str,
        role: str,
        backend: str,
        url: str,
        env: dict[str, str],
        sessions: int = 1,
        prefix: str = "bench",
    ) -> Driver:
        driver = await Driver.start(
            self.python,
            self.workdir,
            name,
            role,
            "redis" if backend == "redis" else "database",
            url,
            env,
            sessions,
            prefix,
        )
        self.drivers.append(driver)
        return driver

    async def stop(self, *drivers: Driver) -> None:
        for driver in drivers:
            await driver.close()
            if driver in self.drivers:
                self.drivers.remove(driver)

    async def close(self) -> None:
        await self.stop(*list(self.drivers))
        await self.probe.aclose()

    async def clients(self) -> int:
        return int((await self.probe.info("clients"))["connected_clients"])

    async def commands(self) -> int:
        return int((await self.probe.info("stats"))["total_commands_processed"])


def _row(scenario: str, backend: str, parameter: str, metric: str, value: float, unit: str) -> Row:
    return Row(
        scenario=scenario,
        system=SYSTEM,
        backend=backend,
        parameter=parameter,
        metric=metric,
        value=float(value),
        unit=unit,
    )


def _stats(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        nan = float("nan")
        return {"p50": nan, "p95": nan, "p99": nan, "max": nan}
    return {
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
    }


# -- delivery -----------------------------------------------------------------------------


async def delivery(bench: Bench, backend: str, busy: int, after_idle: int) -> dict[str, Any]:
    url = bench.redis_url if backend == "redis" else bench.sqlite_url("delivery")
    if backend == "redis":
        await bench.probe.flushdb()
    env = bench.env(backend, url)
    _log(f"delivery, {backend}: {busy} busy + {after_idle} after idle")
    holder = await bench.start(f"delivery-{backend}-holder", "holder", backend, url, env)
    sender = await bench.start(f"delivery-{backend}-sender", "sender", backend, url, env)
    phases: dict[str, Any] = {}
    try:
        ready = await holder.wait_for("ready", START_GUARD + READY_GUARD)
        await sender.send("init")
        await sender.wait_for("ready", START_GUARD)
        first_id = 0
        for pattern, count, gap in (("busy", busy, 0.02), ("after idle", after_idle, 2.0)):
            await holder.send("expect", count=count, cap=count * gap + DRAIN_CAP, stall=STALL)
            await sender.send("paced", session="bench", count=count, gap=gap, first_id=first_id)
            sent = await sender.wait_for("sent", count * gap + 120)
            await holder.send("sent", count=sent["count"])
            done = await holder.wait_for("done", count * gap + DRAIN_CAP + 60)
            ours = range(first_id, first_id + count)
            delivered = {
                i: ms for i, ms in zip(done["ids"], done["latencies_ms"], strict=True) if i in ours
            }
            latencies = list(delivered.values())
            phases[pattern] = {
                "messages": count,
                "gap_seconds": gap,
                "broadcast": sent["count"],
                "broadcast_errors": sent["errors"],
                "delivered": len(delivered),
                "lost": sent["count"] - len(delivered),
                "ended": done["reason"],
                "holder_failures": done["failures"],
                "failure_kinds": done["failure_kinds"],
                **{f"{k}_ms": v for k, v in _stats(latencies).items()},
                "latencies_ms": latencies,
            }
            _log(
                f"  {pattern}: {len(delivered)}/{sent['count']} delivered ({done['reason']}),"
                f" p50 {phases[pattern]['p50_ms']:.2f} ms, max {phases[pattern]['max_ms']:.2f} ms"
            )
            first_id += count
    finally:
        await bench.stop(holder, sender)
    return {"backend": backend, "holder_ready": ready, "phases": phases}


# -- idle ---------------------------------------------------------------------------------


async def idle(
    bench: Bench, backend: str, sessions: int, pool: int | None, window: float, settle: float
) -> dict[str, Any]:
    url = bench.redis_url if backend == "redis" else bench.sqlite_url(f"idle{sessions}")
    baseline = overhead = 0
    if backend == "redis":
        await bench.probe.flushdb()
        baseline = await bench.clients()
        # What one INFO of ours adds to total_commands_processed.
        overhead = -(await bench.commands()) + await bench.commands()
    pool_label = "default" if pool is None else str(pool)
    _log(f"idle, {backend}: {sessions} sessions, pool {pool_label}, window {window:g}s")
    holder = await bench.start(
        f"idle-{backend}-{sessions}-{pool_label}",
        "holder",
        backend,
        url,
        bench.env(backend, url, pool),
        sessions=sessions,
        prefix=f"idle-{sessions}-",
    )
    try:
        ready = await holder.wait_for("ready", START_GUARD + READY_GUARD)
        if ready["failures"]:
            # Broken from the start (the default pool): recorded for its failures,
            # with the plain 10 s window.
            window = min(window, FAILED_WINDOW)
        await asyncio.sleep(settle)  # let periodic behaviour reach its steady state
        before = await bench.commands() if backend == "redis" else 0
        started = time.monotonic()
        await holder.send("window", seconds=window)
        measured = await holder.wait_for("window", window + 120)
        result: dict[str, Any] = {
            "backend": backend,
            "sessions": sessions,
            "redis_max_connections": pool or (DEFAULT_POOL if backend == "redis" else None),
            "settle_seconds": settle,
            "window_seconds": window,
            "ready": ready,
            "window": measured,
            "cpu_percent": measured["cpu_percent"],
            "rss_mib": measured["rss_mib"],
            "failures": measured["failures_total"],
        }
        if backend == "redis":
            after = await bench.commands()
            elapsed = time.monotonic() - started
            result["connections"] = await bench.clients() - baseline
            result["connections_counted_as"] = "INFO clients connected_clients minus before"
            result["commands"] = after - before - overhead
            result["ops_per_second"] = (after - before - overhead) / elapsed
            result["ops_counted_as"] = "INFO stats total_commands_processed, less our INFO"
        else:
            result["connections"] = measured["fds"]["db"]
            result["connections_counted_as"] = "fds of the holder to the db file (/proc/self/fd)"
            result["ops_per_second"] = measured["statements_per_second"]
            result["ops_counted_as"] = "before_cursor_execute events on the reference's engine"
    finally:
        await bench.stop(holder)
    _log(
        f"  {window:g}s: {result['connections']} connections,"
        f" {result['ops_per_second']:.1f} ops/s,"
        f" {result['cpu_percent']:.1f}% cpu, {result['rss_mib']:.0f} MiB,"
        f" {result['failures']} failures"
    )
    return result


@contextlib.asynccontextmanager
async def _maxclients(bench: Bench, needed: int, raw: dict[str, Any]):  # type: ignore[no-untyped-def]
    """One connection a session: let the server accept them all for the run."""
    original = int((await bench.probe.config_get("maxclients"))["maxclients"])
    raw["redis_maxclients"] = {"original": original}
    raised = False
    if original < needed:
        try:
            await bench.probe.config_set("maxclients", needed)
            raised = True
            raw["redis_maxclients"]["raised_to"] = needed
        except Exception as error:  # recorded; the run goes on
            raw["redis_maxclients"]["raise_failed"] = repr(error)
    try:
        yield
    finally:
        if raised:
            await bench.probe.config_set("maxclients", original)


# -- sustained ----------------------------------------------------------------------------


async def sustained(
    bench: Bench, backend: str, sessions: int, messages: int, bound: float
) -> dict[str, Any]:
    url = bench.redis_url if backend == "redis" else bench.sqlite_url("sustained")
    pool = sessions + 100 if backend == "redis" else None
    if backend == "redis":
        await bench.probe.flushdb()
    env = bench.env(backend, url, pool)
    _log(f"sustained, {backend}: {sessions} sessions, {messages} messages or {bound:g}s")
    holder = await bench.start(
        f"sustained-{backend}-holder", "holder", backend, url, env, sessions, prefix="s"
    )
    sender = await bench.start(f"sustained-{backend}-sender", "sender", backend, url, env)
    try:
        ready = await holder.wait_for("ready", START_GUARD + READY_GUARD)
        await sender.send("init")
        await sender.wait_for("ready", START_GUARD)
        await holder.send("expect", count=messages, cap=bound, stall=STALL)
        await sender.send(
            "sustained",
            sessions=[f"s{i}" for i in range(sessions)],
            per_session=messages // sessions,
            seconds=bound,
        )
        sent = await sender.wait_for("sent", bound + 120)
        await holder.send("sent", count=sent["count"])
        done = await holder.wait_for("done", bound + 120)
    finally:
        await bench.stop(holder, sender)
    latencies = done["latencies_ms"]
    seconds = (done["last_delivery_ns"] - sent["started_ns"]) / 1e9 if latencies else bound
    result = {
        "backend": backend,
        "sessions": sessions,
        "redis_max_connections": pool,
        "holder_ready": ready,
        "broadcast": sent["count"],
        "broadcast_seconds": sent["seconds"],
        "broadcast_errors": sent["errors"],
        "broadcast_error_kinds": sent["error_kinds"],
        "delivered": len(latencies),
        "undelivered": sent["count"] - len(latencies),
        "ended": done["reason"],
        "seconds": seconds,
        "messages_per_second": len(latencies) / seconds if seconds > 0 else 0.0,
        "holder_failures": done["failures"],
        **{f"{k}_ms": v for k, v in _stats(latencies).items()},
    }
    _log(
        f"  {len(latencies)}/{sent['count']} delivered in {seconds:.1f}s ({done['reason']}):"
        f" {result['messages_per_second']:.0f}/s, p50 {result['p50_ms']:.2f} ms"
    )
    return result


# -- the scenario --------------------------------------------------------------------------


async def _run(quick: bool, redis_url: str, workdir: Path, python: Path) -> ScenarioResult:
    busy, after_idle = (5, 2) if quick else (200, 20)
    sizes = (100,) if quick else (100, 1_000, 10_000)
    windows = (
        {"redis": 1.0, "sqlite": 1.0} if quick else {"redis": HEALTH_CHECK_INTERVAL, "sqlite": 10.0}
    )
    settles = {"redis": 0.0, "sqlite": 0.0} if quick else {"redis": 2.0, "sqlite": 10.0}
    messages, bound = (200, 5.0) if quick else (5_000, 30.0)
    sustained_sessions = 100
    backends = ("redis", "sqlite")
    rows: list[Row] = []
    raw: dict[str, Any] = {
        "reference": f"mcp-contextforge-gateway {VERSION}",
        "delivery": [],
        "idle": [],
        "sustained": [],
        "windows_seconds": windows,
        "settle_seconds": settles,
    }
    bench = Bench(python, redis_url, workdir)
    try:
        for backend in backends:
            measured = await delivery(bench, backend, busy, after_idle)
            raw["delivery"].append(measured)
            for pattern, phase in measured["phases"].items():
                for metric in ("p50", "p95", "p99", "max"):
                    rows.append(
                        _row("delivery", backend, pattern, metric, phase[f"{metric}_ms"], "ms")
                    )
                rows.append(_row("delivery", backend, pattern, "lost", phase["lost"], "messages"))

        async with _maxclients(bench, max(sizes) + 200, raw):
            for backend in backends:
                for sessions in sizes:
                    window, settle = windows[backend], settles[backend]
                    result = await idle(bench, backend, sessions, None, window, settle)
                    results = [(f"{sessions} sessions", result)]
                    if backend == "redis" and result["failures"]:
                        raised = sessions + 100
                        again = await idle(bench, backend, sessions, raised, window, settle)
                        results.append((f"{sessions} sessions, pool raised", again))
                    for parameter, r in results:
                        r["parameter"] = parameter
                        raw["idle"].append(r)
                        for metric, value, unit in (
                            ("connections", r["connections"], "connections"),
                            ("ops/s", r["ops_per_second"], "1/s"),
                            ("cpu %", r["cpu_percent"], "%"),
                            ("rss MiB", r["rss_mib"], "MiB"),
                            ("failures", r["failures"], "errors"),
                        ):
                            rows.append(_row("idle", backend, parameter, metric, value, unit))

        for backend in backends:
            r = await sustained(bench, backend, sustained_sessions, messages, bound)
            raw["sustained"].append(r)
            parameter = f"{sustained_sessions} sessions"
            rows.append(
                _row("sustained", backend, parameter, "messages/s", r["messages_per_second"], "1/s")
            )
            rows.append(_row("sustained", backend, parameter, "p50", r["p50_ms"], "ms"))
            rows.append(_row("sustained", backend, parameter, "p99", r["p99_ms"], "ms"))
    finally:
        await bench.close()
    return ScenarioResult(rows=rows, raw=raw)


def run(quick: bool, servers: dict[str, str], workdir: Path) -> ScenarioResult:
    """Measure the reference registry: delivery, idle cost and sustained delivery on
    Redis (``servers["redis"]``, a running server) and SQLite (files under workdir)."""
    python = ensure_venv()
    redis_url = servers["redis"].split("?", 1)[0]
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = asyncio.run(_run(quick, redis_url, workdir, python))
    _log(f"done in {time.monotonic() - started:.0f}s")
    return result


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from gateway.testing.servers import RedisServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-contextforge-") as directory:
        root = Path(directory)
        (root / "redis").mkdir()
        server = RedisServer(root / "redis")
        server.start()
        started = time.monotonic()
        try:
            result = run(args.quick, {"redis": server.url}, root / "work")
        finally:
            server.stop()
    seconds = time.monotonic() - started
    table = Table(title=f"ContextForge {VERSION} SessionRegistry ({seconds:.0f} s)")
    for column in ("scenario", "backend", "parameter", "metric", "value", "unit"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in result.rows:
        table.add_row(
            row.scenario, row.backend, row.parameter, row.metric, f"{row.value:,.2f}", row.unit
        )
    Console().print(table)


if __name__ == "__main__":
    main()
