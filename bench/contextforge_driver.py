"""Drive ContextForge's SessionRegistry in one process, for bench/contextforge.py.

    bench/.venv-contextforge/bin/python bench/contextforge_driver.py holder|sender \\
        --backend redis|database --url URL [--sessions N] [--prefix P]

Runs with the reference's own virtualenv (mcp-contextforge-gateway 1.1.0) and imports
nothing of ours. Its settings come from the environment that bench/contextforge.py
sets (CACHE_TYPE, REDIS_URL, DATABASE_URL, REDIS_MAX_CONNECTIONS, LOG_LEVEL, secrets).

The holder adds sessions with a recording transport and runs ``respond()`` for each,
as the reference's SSE endpoint does; the registry's ``generate_response`` is replaced
by one that sends the message straight back, so the transport sees the broadcast's
send time (``time.monotonic_ns()``, one clock for the whole machine) and the holder
measures broadcast -> transport. The sender calls ``broadcast()``.

Protocol: one JSON object a line. Commands come on stdin; events go to the original
stdout (the process's fd 1 is pointed at stderr, so whatever the reference prints
cannot mix with them). Every wait has a guard.

holder commands: ``expect`` {count, cap, stall} starts collecting deliveries and
answers ``done`` when all arrived, when none came for ``stall`` s after ``sent``, or
after ``cap`` s; ``sent`` {count} says the sender is through; ``window`` {seconds}
measures an idle window; ``stop``. sender commands: ``init`` (then ``ready``),
``paced`` {session, count, gap, first_id}, ``sustained`` {sessions, per_session,
seconds}, each answered by ``sent``; ``stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import time
import traceback
from collections import Counter
from typing import Any

READY_GUARD = 300.0  # seconds for sessions to be added and subscribed
COMMAND_GUARD = 900.0  # seconds without a command before the driver gives up
# Sessions added at once: each add takes a pool connection (Redis) or a thread (SQLite)
# for a moment; 20 stay well inside the default Redis pool of 50.
ADD_CONCURRENCY = 20

# Events for bench/contextforge.py go to the original stdout; everything else to stderr.
_PROTOCOL_FD = os.dup(1)
os.dup2(2, 1)
sys.stdout = sys.stderr


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n"
    os.write(_PROTOCOL_FD, line.encode())


class FailureCounter(logging.Handler):
    """Counts ERROR records (the registry logs respond-loop, broadcast and Redis
    errors at ERROR, then carries on) by logger and message start."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.kinds: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            message = record.getMessage()
        except Exception:  # a bad record still counts
            message = str(record.msg)
        self.kinds[f"{record.name}: {message[:90]}"] += 1


FAILURES = FailureCounter()


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def db_fds(path: str) -> dict[str, int]:
    """Open file descriptors of this process to the SQLite file and its WAL/SHM."""
    counts = {"db": 0, "wal": 0, "shm": 0}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target == path:
            counts["db"] += 1
        elif target == path + "-wal":
            counts["wal"] += 1
        elif target == path + "-shm":
            counts["shm"] += 1
    return counts


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def next_command(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), COMMAND_GUARD)
    if not line:
        return {"cmd": "stop"}  # bench/contextforge.py went away
    return json.loads(line)


def make_registry(args: argparse.Namespace) -> Any:
    from mcpgateway.cache.session_registry import SessionRegistry

    if args.backend == "redis":
        return SessionRegistry(backend="redis", redis_url=args.url)
    return SessionRegistry(backend="database", database_url=args.url)


def patch_generate_response() -> None:
    """Only the registry is measured: the handler sends the message straight back."""
    from mcpgateway.cache.session_registry import SessionRegistry

    async def echo(
        self: Any, message: dict[str, Any], transport: Any, server_id: Any, user: Any
    ) -> None:
        reply = {"jsonrpc": "2.0", "id": message.get("id"), "result": message.get("params")}
        await transport.send_message(reply)

    SessionRegistry.generate_response = echo  # type: ignore[method-assign]


# -- holder ------------------------------------------------------------------------------


class Holder:
    def __init__(self) -> None:
        self.collecting = False
        self.latencies: list[float] = []  # ms, in delivery order, while collecting
        self.ids: list[Any] = []
        self.last_delivery_ns = 0
        self.deliveries_total = 0
        self.changed = asyncio.Event()
        self.task_failures = 0  # exceptions that ended a respond() task
        self.task_failure_kinds: Counter[str] = Counter()

    def deliver(self, message: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        self.deliveries_total += 1
        if not self.collecting:
            return
        result = message.get("result") or {}
        self.latencies.append((now - result["t"]) / 1e6)
        self.ids.append(message.get("id"))
        self.last_delivery_ns = now
        self.changed.set()

    def task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.task_failures += 1
            self.task_failure_kinds[f"{type(error).__name__}: {str(error)[:90]}"] += 1

    def failures(self) -> int:
        return self.task_failures + FAILURES.count

    def failure_kinds(self) -> dict[str, int]:
        return dict(self.task_failure_kinds + FAILURES.kinds)


class RecordingTransport:
    """What the registry needs of an SSETransport: send, disconnect, is_connected."""

    def __init__(self, holder: Holder, session_id: str) -> None:
        self.holder = holder
        self.session_id = session_id

    async def send_message(self, message: dict[str, Any]) -> None:
        self.holder.deliver(message)

    async def disconnect(self) -> None:
        pass

    async def is_connected(self) -> bool:
        return True


async def wait_subscribed(
    probe: Any, session_ids: list[str], tasks: list[asyncio.Task[None]]
) -> int:
    """Until every respond loop has subscribed to its channel or ended (Redis), as
    the server counts subscribers, asked through a client of our own."""
    deadline = time.monotonic() + READY_GUARD
    while True:
        subscribed = 0
        for start in range(0, len(session_ids), 1000):
            counts = await probe.pubsub_numsub(*session_ids[start : start + 1000])
            subscribed += sum(1 for _, n in counts if n)
        ended = sum(1 for t in tasks if t.done())
        if subscribed + ended >= len(session_ids):
            return subscribed
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{subscribed} of {len(session_ids)} sessions subscribed, {ended} ended,"
                f" after {READY_GUARD}s"
            )
        await asyncio.sleep(0.01)  # polling the server for a state, not for time


async def start_responders(
    args: argparse.Namespace, registry: Any, holder: Holder, session_ids: list[str]
) -> tuple[list[asyncio.Task[None]], int]:
    """A respond task per session, as the reference's SSE endpoint starts one per
    connection; ``--batch`` at a time, each batch subscribed before the next, as sessions
    arriving over time would be (10,000 started at once mostly fail: redis-py's 2 s
    connect timeout expires while the loop opens the others)."""
    tasks: list[asyncio.Task[None]] = []
    subscribed = 0
    probe = None
    if args.backend == "redis":
        import redis.asyncio as aioredis

        probe = aioredis.Redis.from_url(args.url)
    try:
        for start in range(0, len(session_ids), args.batch):
            batch = session_ids[start : start + args.batch]
            started = []
            for session_id in batch:
                task = asyncio.create_task(registry.respond(None, {}, session_id))
                registry.register_respond_task(session_id, task)
                task.add_done_callback(holder.task_done)
                started.append(task)
            tasks += started
            await asyncio.sleep(0)
            if probe is not None:
                subscribed += await wait_subscribed(probe, batch, started)
            else:
                subscribed += len(batch)  # a poll loop: nothing to wait for
    finally:
        if probe is not None:
            await probe.aclose()
    return tasks, subscribed


def count_sessions(args: argparse.Namespace, session_ids: list[str]) -> int:
    """How many of the sessions the shared backend knows (rows, or Redis keys)."""
    if args.backend == "database":
        from mcpgateway.db import SessionLocal, SessionRecord

        with SessionLocal() as db:
            return db.query(SessionRecord).count()
    import redis

    client = redis.Redis.from_url(args.url)
    try:
        return sum(
            client.exists(*(f"mcp:session:{s}" for s in session_ids[i : i + 1000]))
            for i in range(0, len(session_ids), 1000)
        )
    finally:
        client.close()


async def hold(args: argparse.Namespace) -> None:
    patch_generate_response()
    db_path = ""
    statements = {"n": 0, "checkouts": 0}
    engine = None
    if args.backend == "database":
        from mcpgateway.db import Base, SessionMessageRecord, SessionRecord, engine
        from sqlalchemy import event

        # What bootstrap_db does on an empty database (create_all), for the two
        # tables the registry uses.
        Base.metadata.create_all(
            engine, tables=[SessionRecord.__table__, SessionMessageRecord.__table__]
        )
        db_path = args.db_path

        def count_statement(*_: Any) -> None:
            statements["n"] += 1

        def count_checkout(*_: Any) -> None:
            statements["checkouts"] += 1

        event.listen(engine, "before_cursor_execute", count_statement)
        event.listen(engine, "checkout", count_checkout)

    holder = Holder()
    registry = make_registry(args)
    first_cleanup = asyncio.Event()
    if args.backend == "database":
        # The database backend's cleanup task runs a pass at once: it snapshots the
        # local sessions and removes every one whose row it cannot find yet, so a
        # session added while that pass runs (its INSERT not yet committed in another
        # thread) is silently dropped. Let the first pass finish before adding any.
        cleanup = registry._cleanup_database_sessions

        async def observed_cleanup(*a: Any, **k: Any) -> None:
            try:
                await cleanup(*a, **k)
            finally:
                first_cleanup.set()

        registry._cleanup_database_sessions = observed_cleanup
    else:
        first_cleanup.set()
    await registry.initialize()
    await asyncio.wait_for(first_cleanup.wait(), 60)
    if args.backend == "redis" and registry._redis is None:
        raise RuntimeError("the reference found no Redis (CACHE_TYPE/REDIS_URL not taken)")
    rss_start = rss_mib()
    session_ids = [
        f"{args.prefix}{i}" if args.sessions > 1 else args.prefix for i in range(args.sessions)
    ]
    started = time.monotonic()
    for start in range(0, len(session_ids), ADD_CONCURRENCY):
        await asyncio.gather(
            *(
                registry.add_session(session_id, RecordingTransport(holder, session_id))
                for session_id in session_ids[start : start + ADD_CONCURRENCY]
            )
        )
    tasks, subscribed = await start_responders(args, registry, holder, session_ids)
    in_backend = await asyncio.to_thread(count_sessions, args, session_ids)
    emit(
        "ready",
        sessions=len(session_ids),
        sessions_in_backend=in_backend,
        sessions_local=len(registry._sessions),
        subscribed=subscribed,
        setup_seconds=time.monotonic() - started,
        failures=holder.failures(),
        failure_kinds=holder.failure_kinds(),
        rss_start_mib=rss_start,
        rss_ready_mib=rss_mib(),
    )
    reader = await stdin_lines()
    collector: asyncio.Task[None] | None = None
    sent_at: list[tuple[float, int]] = []  # (when, how many) the sender finished
    try:
        while True:
            command = await next_command(reader)
            cmd = command["cmd"]
            if cmd == "stop":
                break
            if cmd == "expect":
                holder.latencies, holder.ids = [], []
                holder.collecting = True
                sent_at.clear()
                collector = asyncio.create_task(
                    collect(holder, command["count"], command["cap"], command["stall"], sent_at)
                )
            elif cmd == "sent":
                sent_at.append((time.monotonic(), command["count"]))
                holder.changed.set()
            elif cmd == "window":
                emit(
                    "window",
                    **await idle_window(
                        holder, command["seconds"], statements, db_path, engine, registry
                    ),
                )
    finally:
        if collector is not None:
            collector.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.wait_for(registry.shutdown(), 60)
    emit("stopped", failures=holder.failures())


async def collect(
    holder: Holder, count: int, cap: float, stall: float, sent_at: list[tuple[float, int]]
) -> None:
    started = time.monotonic()
    reason = "all delivered"
    while len(holder.latencies) < (min(count, sent_at[0][1]) if sent_at else count):
        now = time.monotonic()
        waits = [started + cap - now]
        if sent_at:
            last = max(sent_at[0][0], holder.last_delivery_ns / 1e9)
            waits.append(last + stall - now)
        timeout = min(waits)
        if timeout <= 0:
            reason = "stalled" if len(waits) > 1 and waits[1] <= 0 else "cap"
            break
        holder.changed.clear()
        try:
            await asyncio.wait_for(holder.changed.wait(), timeout)
        except TimeoutError:
            pass
    holder.collecting = False
    emit(
        "done",
        reason=reason,
        latencies_ms=holder.latencies,
        ids=holder.ids,
        last_delivery_ns=holder.last_delivery_ns,
        failures=holder.failures(),
        failure_kinds=holder.failure_kinds(),
    )


async def idle_window(
    holder: Holder,
    seconds: float,
    statements: dict[str, int],
    db_path: str,
    engine: Any,
    registry: Any,
) -> dict[str, Any]:
    failures_before = holder.failures()
    statements_before, checkouts_before = statements["n"], statements["checkouts"]
    cpu_before, started = os.times(), time.monotonic()
    await asyncio.sleep(seconds)  # idle: what does holding the sessions cost?
    cpu_after, elapsed = os.times(), time.monotonic() - started
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    result: dict[str, Any] = {
        "seconds": elapsed,
        "cpu_percent": 100 * cpu / elapsed,
        "rss_mib": rss_mib(),
        "failures_total": holder.failures(),
        "failures_in_window": holder.failures() - failures_before,
        "failure_kinds": holder.failure_kinds(),
        "respond_tasks_alive": sum(1 for t in registry._respond_tasks.values() if not t.done()),
    }
    if db_path:
        result["statements"] = statements["n"] - statements_before
        result["statements_per_second"] = (statements["n"] - statements_before) / elapsed
        result["pool_checkouts_per_second"] = (statements["checkouts"] - checkouts_before) / elapsed
        result["fds"] = db_fds(db_path)
        pool = engine.pool
        result["pool"] = {
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "checked_in": pool.checkedin(),
            "overflow": pool.overflow(),
        }
    else:
        pool = registry._redis.connection_pool
        result["pool"] = {
            "max_connections": pool.max_connections,
            "in_use": len(pool._in_use_connections),
            "available": len(pool._available_connections),
        }
    return result


# -- sender ------------------------------------------------------------------------------


async def send(args: argparse.Namespace) -> None:
    reader = await stdin_lines()
    registry = None
    try:
        while True:
            command = await next_command(reader)
            cmd = command["cmd"]
            if cmd == "stop":
                break
            if cmd == "init":
                registry = make_registry(args)
                await registry.initialize()
                if args.backend == "redis" and registry._redis is None:
                    raise RuntimeError("the reference found no Redis")
                emit("ready")
                continue
            assert registry is not None, "init first"
            errors_before, started_ns = FAILURES.count, time.monotonic_ns()
            if cmd == "paced":
                count = 0
                for i in range(command["count"]):
                    await asyncio.sleep(command["gap"])
                    message = {"jsonrpc": "2.0", "id": command["first_id"] + i, "method": "ping"}
                    message["params"] = {"t": time.monotonic_ns()}
                    await registry.broadcast(command["session"], message)
                    count += 1
            elif cmd == "sustained":
                count = await sustained(registry, command)
            else:
                raise ValueError(f"unknown command {cmd!r}")
            emit(
                "sent",
                count=count,
                started_ns=started_ns,
                seconds=(time.monotonic_ns() - started_ns) / 1e9,
                errors=FAILURES.count - errors_before,
                error_kinds=dict(FAILURES.kinds),
            )
    finally:
        if registry is not None:
            await asyncio.wait_for(registry.shutdown(), 60)
    emit("stopped")


async def sustained(registry: Any, command: dict[str, Any]) -> int:
    """Each session's next message as soon as broadcast() returns for its last one,
    all sessions at once, for a fixed count or until the deadline."""
    deadline = time.monotonic() + command["seconds"]
    per_session = command["per_session"]
    sent = 0

    async def one_session(index: int, session_id: str) -> None:
        nonlocal sent
        for k in range(per_session):
            if time.monotonic() > deadline:
                return
            message = {"jsonrpc": "2.0", "id": index * per_session + k, "method": "ping"}
            message["params"] = {"t": time.monotonic_ns()}
            await registry.broadcast(session_id, message)
            sent += 1

    await asyncio.gather(*(one_session(i, s) for i, s in enumerate(command["sessions"])))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["holder", "sender"])
    parser.add_argument("--backend", choices=["redis", "database"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--batch", type=int, default=1000, help="respond loops started at once")
    args = parser.parse_args()
    args.db_path = os.path.realpath(args.url.removeprefix("sqlite:///"))
    # One Redis connection per session: allow this process as many sockets as it may.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    import mcpgateway.cache.session_registry  # noqa: F401 - the slow import, timed

    logging.getLogger().addHandler(FAILURES)
    emit("loaded", import_seconds=time.monotonic() - started, nofile=[soft, hard])
    try:
        asyncio.run(hold(args) if args.role == "holder" else send(args))
    except BaseException as error:
        emit("error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        raise


if __name__ == "__main__":
    main()
