"""The retention soak: sessions through the gateway for a long run, on each backend,
with retention set to a short window and without it (``--retain off``).

    python -m bench.retention [--quick] [--sessions N] [--baseline-sessions N]
                              [--minutes M] [--baseline-minutes M]
                              [--backend NAME ...] [--one-at-a-time] [--out DIR]

One worker (``sessionlog serve``) per case; ``CLIENTS`` concurrent clients in this
process, each over Streamable HTTP: initialize, notifications/initialized,
``CALLS`` tools/call of the built-in echo, DELETE; then the next session. Every
two seconds a sampler records the worker's RSS and what the backend holds:
the SQLite file (the log gives space back with incremental vacuum), PostgreSQL's
``pg_total_relation_size`` of the events table, Valkey's ``used_memory``; and the
archive's size (it grows: that is where the records go), in each backend's default
place (a directory beside the SQLite file, PostgreSQL's archive table) or, for
Redis, a directory.

Flat means: the level over the ``WINDOW_SECONDS`` after warm-up (the first
``WARM_UP_SECONDS``: a few retention windows, so the hot log has reached what it
keeps) against the level over the last ``WINDOW_SECONDS``; levels are means of the
samples, so a compaction's saw-tooth does not decide it. The baseline (the same
worker with ``--retain off``) may run fewer sessions; its growth per session says
what keeping everything costs. A run stops at its sessions or at its time limit,
whichever comes first (the results say how many sessions it took).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import psutil
import redis.asyncio as aioredis

from gateway.testing.serving import serve_process

from .gateway import StreamableClient
from .harness import Row, ScenarioResult, backends, measured, report

__all__ = ["scenario"]

BACKENDS = ("sqlite", "postgresql", "redis")
SESSIONS = 200_000
BASELINE_SESSIONS = 50_000
# The three backends at once on 2 cores must fit half an hour: a run with
# retention stops at 23 min, one without at 3.5 min, if not done before.
TIME_LIMIT = 23 * 60.0
BASELINE_TIME_LIMIT = 3.5 * 60
CLIENTS = 16
FAILED: dict[str, str] = {}  # "backend, mode" -> why its run failed
CALLS = 3  # tools/call per session
WARM_UP_SECONDS = 120.0  # four retention windows
WINDOW_SECONDS = 30.0  # three compactions: levels are means over it
FLAT = 10.0  # % growth after warm-up that still counts as flat
RETAIN = "30s"
# Closed sessions forgotten by the registry as soon as they leave the retained
# window: the worker's memory then holds open sessions only, in both modes.
CLOSED_RETENTION = "30"
COMPACT_INTERVAL = "10s"
HANG_GUARD = 60.0  # s: a request slower than this fails the run
GIVE_UP = 3  # consecutive failed sessions of one client: the run stops


class Sample(msgspec.Struct, array_like=True):
    seconds: float  # since the case started
    sessions: int  # closed so far
    rss_mib: float  # the worker's
    backend_bytes: int  # the measure of the backend (see the module's docstring)
    archive_bytes: int
    wal_bytes: int  # SQLite's write-ahead log next to the file (0 elsewhere)


class Case(msgspec.Struct, kw_only=True):
    backend: str
    mode: str
    sessions: int
    seconds: float
    sessions_per_second: float
    failed_sessions: int
    worker_cpu_seconds: float
    client_cpu_seconds: float  # this process (the clients and samplers of runs at once too)
    warm_up_sessions: int
    backend_measure: str
    samples: list[Sample]
    levels: dict[str, dict[str, float]]  # metric -> {"warm": .., "end": .., "growth %": ..}


@dataclass(frozen=True)
class Plan:
    retain: str  # the window, as --retain takes it
    compact_interval: str
    sessions: int  # with retention
    baseline_sessions: int  # with --retain off
    seconds: float | None  # a run's time limit with retention
    baseline_seconds: float | None  # and with --retain off
    warm_up: float  # s
    window: float  # s of samples a level is the mean of
    sample_seconds: float
    # The backends' runs at once, each with its worker and clients, sharing the
    # cores: the machine kept busy while one worker waits on its backend.
    at_once: bool = True

    def modes(self) -> list[tuple[str, tuple[str, ...], int, float | None]]:
        """(name, serve arguments, sessions, time limit) of each run on a backend."""
        retained = ("--retain", self.retain, "--retain-size", "off")
        retained += ("--compact-interval", self.compact_interval)
        return [
            (f"retain {self.retain}", retained, self.sessions, self.seconds),
            ("retain off", ("--retain", "off"), self.baseline_sessions, self.baseline_seconds),
        ]


FULL = Plan(
    retain=RETAIN,
    compact_interval=COMPACT_INTERVAL,
    sessions=SESSIONS,
    baseline_sessions=BASELINE_SESSIONS,
    seconds=TIME_LIMIT,
    baseline_seconds=BASELINE_TIME_LIMIT,
    warm_up=WARM_UP_SECONDS,
    window=WINDOW_SECONDS,
    sample_seconds=2.0,
)
# Runs of seconds: a window of a few compactions within them.
QUICK = Plan(
    retain="2s",
    compact_interval="1s",
    sessions=1_500,
    baseline_sessions=500,
    seconds=None,
    baseline_seconds=None,
    warm_up=4.0,
    window=2.0,
    sample_seconds=0.25,
)


# -- the load ---------------------------------------------------------------------------


async def _session(http: aiohttp.ClientSession, url: str) -> None:
    client = StreamableClient(http, url)
    await client.open()
    for request_id in range(1, CALLS + 1):
        await client.call(request_id)
    async with http.delete(url, headers=client.headers) as response:
        response.raise_for_status()


async def _load(
    url: str, sessions: int, until: float, done: list[int], failures: list[str]
) -> None:
    """``sessions`` sessions by ``CLIENTS`` clients, none begun after ``until``
    (monotonic time); ``done[0]`` counts those closed."""
    numbers = itertools.count()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=HANG_GUARD)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            failed_in_a_row = 0
            while next(numbers) < sessions and time.monotonic() < until:
                try:
                    await _session(http, url)
                except (TimeoutError, aiohttp.ClientError, RuntimeError) as error:
                    failures.append(f"{type(error).__name__}: {error}")
                    failed_in_a_row += 1
                    if failed_in_a_row >= GIVE_UP:
                        message = f"{GIVE_UP} sessions failed in a row: {error}"
                        raise RuntimeError(message) from error
                    continue
                failed_in_a_row = 0
                done[0] += 1

        await asyncio.gather(*(client() for _ in range(CLIENTS)))


# -- what the backend holds ----------------------------------------------------------------


@dataclass
class Probe:
    """How one backend's size and its archive's are measured, and its log URL."""

    measure: str
    log_url: str
    size: Callable[[], Awaitable[int]]
    archive_size: Callable[[], Awaitable[int]]
    wal: Path | None = None


def _file_bytes(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _directory_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # a segment replaced while we walk
                pass
    return total


@asynccontextmanager
async def _probe(backend: str, url: str, workdir: Path) -> AsyncIterator[Probe]:
    """The backend's archive where it is by default: the directory beside a SQLite
    file, PostgreSQL's archive table; a directory for Redis (which has none by
    default). Whatever the run wrote is removed at the end: gigabytes, and Valkey's
    used_memory is the whole server's."""
    namespace = f"soak{secrets.token_hex(4)}"
    log_url = url.replace("NS", namespace)
    if backend == "sqlite":
        path = Path(log_url.removeprefix("sqlite:///").split("?", 1)[0])
        wal, archive = path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}.archive")

        async def file_bytes() -> int:
            return _file_bytes(path)

        async def archive_bytes() -> int:
            return _directory_bytes(archive)

        try:
            yield Probe("SQLite file", log_url, file_bytes, archive_bytes, wal)
        finally:
            for each in (path, wal, path.with_name(f"{path.name}-shm")):
                each.unlink(missing_ok=True)
            shutil.rmtree(archive, ignore_errors=True)
    elif backend == "postgresql":
        connection = await asyncpg.connect(url.split("?", 1)[0])

        async def relation_bytes(table: str) -> int:
            found = await connection.fetchval("SELECT to_regclass($1)", table)
            if found is None:
                return 0
            return await connection.fetchval("SELECT pg_total_relation_size($1)", table)

        async def events_bytes() -> int:
            return await relation_bytes(f"{namespace}_events")

        async def archive_bytes() -> int:
            return await relation_bytes(f"{namespace}_archive")

        measure = "events table (pg_total_relation_size)"
        try:
            yield Probe(measure, log_url, events_bytes, archive_bytes)
        finally:
            tables = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{namespace}\\_%"
            )
            for (name,) in tables:
                await connection.execute(f'DROP TABLE "{name}" CASCADE')
            await connection.close()
    else:
        archive = workdir / f"{namespace}.archive"
        client = aioredis.from_url(url.split("?", 1)[0])

        async def used_memory() -> int:
            return int((await client.info("memory"))["used_memory"])

        async def archive_bytes() -> int:
            return _directory_bytes(archive)

        try:
            yield Probe(
                "Valkey used_memory", f"{log_url}&archive={archive}", used_memory, archive_bytes
            )
        finally:
            async for key in client.scan_iter(match=f"{{{namespace}}}:*", count=1000):
                await client.unlink(key)
            await client.aclose()
            shutil.rmtree(archive, ignore_errors=True)


# -- one case ------------------------------------------------------------------------------


def _level(samples: list[Sample], field: str, since: float, until: float) -> float:
    values = [getattr(s, field) for s in samples if since <= s.seconds <= until]
    return statistics.fmean(values) if values else float("nan")


def _levels(samples: list[Sample], warm_end: float, window: float) -> dict[str, dict[str, float]]:
    end = samples[-1].seconds
    levels: dict[str, dict[str, float]] = {}
    for field in ("rss_mib", "backend_bytes"):
        warm = _level(samples, field, warm_end, warm_end + window)
        last = _level(samples, field, end - window, end)
        peak = max(getattr(s, field) for s in samples if s.seconds >= warm_end)
        levels[field] = {"warm": warm, "end": last}
        if warm > 0:
            levels[field] |= {
                "growth %": 100 * (last - warm) / warm,
                "peak after warm-up %": 100 * (peak - warm) / warm,
            }
    return levels


async def _run_case(
    backend: str,
    mode: str,
    args: tuple[str, ...],
    url: str,
    sessions: int,
    limit: float | None,
    workdir: Path,
    plan: Plan,
) -> Case:
    async with _probe(backend, url, workdir) as probe:
        args = (*args, "--closed-retention", CLOSED_RETENTION)
        output = workdir / f"retention-{backend}-{mode.split()[-1]}.log"
        with serve_process(probe.log_url, *args, output=output) as served:
            worker = psutil.Process(served.process.pid)
            client_cpu_before = sum(psutil.Process().cpu_times()[:2])
            done, failures, samples = [0], [], []
            warm_up: int | None = None  # sessions closed when warm-up ended
            started = time.monotonic()
            until = started + (limit if limit is not None else float("inf"))
            load = asyncio.create_task(_load(f"{served.url}/mcp", sessions, until, done, failures))
            while True:
                finished = load.done()
                seconds = time.monotonic() - started
                samples.append(
                    Sample(
                        seconds=seconds,
                        sessions=done[0],
                        rss_mib=worker.memory_info().rss / 2**20,
                        backend_bytes=await probe.size(),
                        archive_bytes=await probe.archive_size(),
                        wal_bytes=_file_bytes(probe.wal) if probe.wal else 0,
                    )
                )
                if warm_up is None and seconds >= plan.warm_up:
                    warm_up = done[0]
                if finished:
                    break
                await asyncio.wait([load], timeout=plan.sample_seconds)
            await load  # its failure, if it failed
            elapsed = time.monotonic() - started
            worker_cpu = sum(worker.cpu_times()[:2])
        client_cpu = sum(psutil.Process().cpu_times()[:2]) - client_cpu_before
    case = Case(
        backend=backend,
        mode=mode,
        sessions=done[0],
        seconds=elapsed,
        sessions_per_second=done[0] / elapsed,
        failed_sessions=len(failures),
        worker_cpu_seconds=worker_cpu,
        client_cpu_seconds=client_cpu,
        warm_up_sessions=warm_up if warm_up is not None else done[0],
        backend_measure=probe.measure,
        samples=samples,
        levels=_levels(samples, min(plan.warm_up, samples[-1].seconds), plan.window),
    )
    print(
        f"retention {backend} {mode}: {case.sessions} sessions in {elapsed:.0f} s "
        f"({case.sessions_per_second:.0f}/s), {case.failed_sessions} failed, "
        f"cpu s: worker {worker_cpu:.0f}, clients {client_cpu:.0f}, "
        + ", ".join(f"{k} {v.get('growth %', 0):+.1f} %" for k, v in case.levels.items()),
        file=sys.stderr,
        flush=True,
    )
    return case


# -- the scenario --------------------------------------------------------------------------


def _rows(case: Case) -> list[Row]:
    parameter = f"{case.sessions} sessions, {case.mode}"
    backend, rss = case.levels["backend_bytes"], case.levels["rss_mib"]
    values: list[tuple[str, float | None, str]] = [
        ("sessions/s", case.sessions_per_second, "1/s"),
        ("backend at warm-up", backend["warm"] / 2**20, "MiB"),
        ("backend at end", backend["end"] / 2**20, "MiB"),
        ("backend growth", backend.get("growth %"), "%"),
        ("rss at warm-up", rss["warm"], "MiB"),
        ("rss at end", rss["end"], "MiB"),
        ("rss growth", rss.get("growth %"), "%"),
    ]
    if case.mode == "retain off":
        warm = next(s for s in case.samples if s.sessions >= case.warm_up_sessions)
        last = case.samples[-1]
        grown = (last.backend_bytes - warm.backend_bytes) / max(1, last.sessions - warm.sessions)
        values.append(("backend growth per session", grown, "B"))
    return measured("retention", "sessionlog", case.backend, parameter, values)


def plot(cases: list[Case], path: Path) -> None:
    """One column per backend: the backend's size (top) and the worker's RSS (bottom)
    against sessions closed, with retention and without."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    shown = [b for b in BACKENDS if any(c.backend == b for c in cases)]
    figure, axes = plt.subplots(2, len(shown), figsize=(5 * len(shown), 7), squeeze=False)
    for column, backend in enumerate(shown):
        size_axis, rss_axis = axes[0][column], axes[1][column]
        for case in (c for c in cases if c.backend == backend):
            took = f"{case.seconds / 60:.1f} min" if case.seconds >= 60 else f"{case.seconds:.0f} s"
            label = f"{case.mode}: {case.sessions:,} sessions in {took}"
            sessions = [s.sessions for s in case.samples]
            line = size_axis.plot(
                sessions, [s.backend_bytes / 2**20 for s in case.samples], label=label
            )
            if backend == "sqlite":
                wal = [s.wal_bytes / 2**20 for s in case.samples]
                size_axis.plot(sessions, wal, color=line[0].get_color(), linestyle="--")
            rss_axis.plot(sessions, [s.rss_mib for s in case.samples], label=label)
            if case.mode != "retain off":
                size_axis.axvline(case.warm_up_sessions, color="grey", linestyle=":")
                rss_axis.axvline(case.warm_up_sessions, color="grey", linestyle=":")
        measure = next(c.backend_measure for c in cases if c.backend == backend)
        wal = " (dashed: its WAL)" if backend == "sqlite" else ""
        size_axis.set_title(f"{backend}: {measure}{wal}")
        size_axis.set_ylabel("MiB")
        rss_axis.set_title(f"{backend}: worker RSS")
        rss_axis.set_ylabel("MiB")
        rss_axis.set_xlabel("sessions closed (dotted: end of warm-up)")
        for axis in (size_axis, rss_axis):
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


async def _backend_cases(backend: str, url: str, workdir: Path, plan: Plan) -> list[Case]:
    """With retention, then without: one after the other (Valkey's used_memory is
    the whole server's)."""
    cases = []
    for mode, args, sessions, limit in plan.modes():
        try:
            cases.append(await _run_case(backend, mode, args, url, sessions, limit, workdir, plan))
        except Exception as error:  # the other backends' runs go on; the results say so
            message = f"{type(error).__name__}: {error}"
            print(f"retention {backend} {mode} failed: {message}", file=sys.stderr, flush=True)
            FAILED[f"{backend}, {mode}"] = message
    return cases


async def _every_case(
    urls: dict[str, str], workdir: Path, plan: Plan, only: tuple[str, ...]
) -> list[Case]:
    if plan.at_once:
        found = await asyncio.gather(*(_backend_cases(b, urls[b], workdir, plan) for b in only))
    else:
        found = [await _backend_cases(b, urls[b], workdir, plan) for b in only]
    return [case for cases in found for case in cases]


def scenario(
    quick: bool,
    urls: dict[str, str],
    workdir: Path,
    out: Path,
    plan: Plan | None = None,
    only: tuple[str, ...] = BACKENDS,
) -> ScenarioResult:
    """Each backend with retention, then without (fewer sessions); ``out`` gets
    ``retention.png``."""
    plan = plan or (QUICK if quick else FULL)
    cases = asyncio.run(_every_case(urls, workdir, plan, only))
    out.mkdir(parents=True, exist_ok=True)
    plot(cases, out / "retention.png")
    rows = [row for case in cases for row in _rows(case)]
    raw = {
        "clients": CLIENTS,
        "calls_per_session": CALLS,
        "warm_up_seconds": plan.warm_up,
        "time_limits_seconds": [plan.seconds, plan.baseline_seconds],
        "window_seconds": plan.window,
        "sample_seconds": plan.sample_seconds,
        "backends_at_once": plan.at_once,
        "closed_retention": CLOSED_RETENTION,
        "modes": {
            mode: [*args, "--closed-retention", CLOSED_RETENTION] for mode, args, *_ in plan.modes()
        },
        "flat_within_percent": FLAT,
        "cases": cases,
        "failed": dict(FAILED),
    }
    return ScenarioResult(rows=rows, raw=raw)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retention", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a 2 s window")
    parser.add_argument("--sessions", type=int, help=f"with retention (default {SESSIONS:,})")
    parser.add_argument(
        "--baseline-sessions", type=int, help=f"with --retain off (default {BASELINE_SESSIONS:,})"
    )
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--minutes", type=float, help="a time limit of each run with retention")
    parser.add_argument("--baseline-minutes", type=float, help="and of each without")
    parser.add_argument(
        "--one-at-a-time", action="store_true", help="each backend's runs after the last's"
    )
    parser.add_argument("--out", type=Path, help="a directory to write retention.json/png in")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    plan = dataclasses.replace(
        base,
        sessions=args.sessions or base.sessions,
        baseline_sessions=args.baseline_sessions or base.baseline_sessions,
        seconds=60 * args.minutes if args.minutes else base.seconds,
        baseline_seconds=60 * args.baseline_minutes
        if args.baseline_minutes
        else base.baseline_seconds,
        at_once=not args.one_at_a_time,
    )
    if min(plan.sessions, plan.baseline_sessions) < 1:
        parser.error("--sessions and --baseline-sessions must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as workdir:
        out = args.out or Path(workdir) / "out"
        with backends(Path(workdir)) as urls:
            result = scenario(args.quick, urls, Path(workdir), out, plan, tuple(args.backend))
        if args.out is not None:
            report(args.out / "retention.json", args.quick, rows=result.rows, **result.raw)
    for row in result.rows:
        print(f"{row.backend:10} {row.parameter:32} {row.metric:20} {row.value:12.1f} {row.unit}")


if __name__ == "__main__":
    main()
