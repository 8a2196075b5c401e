"""Append and read throughput of every EventLog backend, side by side.

Each case runs for a bounded number of events on a fresh log, three times (the
median run is kept). Appenders are asyncio tasks sharing one log object, so
concurrent appends are group-committed; ``events/append`` is how many events each
``append`` call carries.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import msgspec

from eventlog import EventLog, WorkerHeartbeat, open_log

from .harness import Row, ScenarioResult, measured

__all__ = ["scenario"]

# (appenders, events per append) cases; the last is the group-commit target case.
CASES = [(1, 1), (10, 1), (100, 1), (100, 10)]


class Result(msgspec.Struct):
    backend: str
    case: str
    appenders: int
    events_per_append: int
    events: int
    seconds: float
    per_second: float
    commits: int | None = None


async def _append_case(log: EventLog, appenders: int, per_append: int, total: int) -> Result:
    calls = total // (appenders * per_append)
    batches = [[WorkerHeartbeat() for _ in range(per_append)] for _ in range(appenders * calls)]

    async def appender(mine: list[list[WorkerHeartbeat]]) -> None:
        for batch in mine:
            await log.append(batch, worker="bench")

    commits_before = log.stats.commits
    started = time.perf_counter()
    await asyncio.gather(*(appender(batches[i::appenders]) for i in range(appenders)))
    seconds = time.perf_counter() - started
    events = appenders * calls * per_append
    return Result(
        backend="",
        case="append",
        appenders=appenders,
        events_per_append=per_append,
        events=events,
        seconds=seconds,
        per_second=events / seconds,
        commits=log.stats.commits - commits_before,
    )


async def _read_case(log: EventLog) -> Result:
    started = time.perf_counter()
    position, count = 0, 0
    while records := await log.read(after=position, limit=5_000):
        position = records[-1].position
        count += len(records)
    seconds = time.perf_counter() - started
    return Result("", "read", 1, 1, count, seconds, count / seconds)


async def bench_backend(backend: str, url: str, scale: int, repeats: int) -> list[Result]:
    """Each case ``repeats`` times, each time on a fresh log; the median run is kept
    (this machine's runs vary by a fifth from one to the next)."""
    results = []
    for appenders, per_append in CASES:
        appends, reads = [], []
        for _ in range(repeats):
            log = await open_log(url.replace("NS", f"b{secrets.token_hex(4)}"))
            try:
                # Fewer appenders are slower per event: scale their share down so every
                # case takes a similar time.
                total = scale * per_append * appenders // 100
                appends.append(await _append_case(log, appenders, per_append, total))
                if (appenders, per_append) == CASES[-1]:
                    reads.append(await _read_case(log))
            finally:
                await log.close()
        for runs in (appends, reads):
            if runs:
                results.append(sorted(runs, key=lambda r: r.per_second)[len(runs) // 2])
    for result in results:
        result.backend = backend
    return results


def scenario(quick: bool, urls: dict[str, str]) -> ScenarioResult:
    scale, repeats = (2_000, 1) if quick else (50_000, 3)
    results: list[Result] = []
    for backend, url in urls.items():
        results += asyncio.run(bench_backend(backend, url, scale, repeats))
    rows: list[Row] = []
    for r in results:
        parameter = "" if r.case == "read" else f"{r.appenders} appenders x {r.events_per_append}"
        metric = "events/s" if r.case == "append" else "records/s"
        rows += measured(
            r.case, "sessionlog", r.backend, parameter, [(metric, r.per_second, "1/s")]
        )
    return ScenarioResult(rows=rows, raw={"scale": scale, "repeats": repeats, "results": results})
