"""Verifying a log beside replaying it: ``eventlog.verify.verify`` over a clean log of
a million records on each backend, in records/s, and the replay of the same log
(read + decode + fold into the registry projection) in records/s.

    python -m bench.verify [--quick] [--records N] [--backend NAME ...] [--out DIR]

The log is filled with sessions of 30 tools/call each (the replay bench's records),
in appends of ``BATCH`` events. Then, on each backend: verify and replay with every
record in the hot log; the older half moved to an archive directory
(``archive_until``, in records/s); verify and replay again, across archive and
hot log.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from eventlog import Event, EventLog, open_log
from eventlog.verify import verify
from gateway.reading import catch_up
from projections import RegistryProjection

from .harness import Row, ScenarioResult, backends, measured, report
from .registry import _session_events

__all__ = ["scenario"]

BACKENDS = ("sqlite", "postgresql", "redis")
RECORDS = 1_000_000
BATCH = 2_000  # events per append while filling
MESSAGES = 30  # tools/call per session in the records


class Result(msgspec.Struct, kw_only=True):
    backend: str
    records: int
    fill_per_second: float
    hot: dict[str, float]  # "verify", "replay": records/s with every record in the hot log
    moved_per_second: float  # archive_until of the older half
    archived: int
    across: dict[str, float]  # the same, half in the archive


async def _fill(log: EventLog, records: int) -> float:
    """Appends sessions' records until ``records``; returns records/s."""
    started = time.perf_counter()
    batch: list[Event] = []
    session = 0
    while await log.head() + len(batch) < records:
        batch += _session_events(session, messages=MESSAGES)
        session += 1
        if len(batch) >= BATCH:
            await log.append(batch, worker="bench")
            batch = []
    if batch:
        await log.append(batch, worker="bench")
    return await log.head() / (time.perf_counter() - started)


async def _verify_and_replay(log: EventLog, records: int) -> dict[str, float]:
    found = await verify(log)
    if not found.ok:
        raise RuntimeError(f"{log.url}: a clean log failed verify: {found.broken}")
    walked = found.checked + found.unchained
    if walked != records:
        raise RuntimeError(f"{log.url}: verify walked {walked} of {records} records")
    started = time.perf_counter()
    projection = RegistryProjection()
    await catch_up(log, projection)
    replay_seconds = time.perf_counter() - started
    if projection.position != records:
        raise RuntimeError(f"{log.url}: replay reached {projection.position} of {records}")
    return {"verify": walked / found.seconds, "replay": records / replay_seconds}


async def bench_backend(backend: str, url: str, records: int, workdir: Path) -> Result:
    archive = workdir / f"verify-archive-{backend}-{secrets.token_hex(3)}"
    log_url = url.replace("NS", f"v{secrets.token_hex(4)}")
    log_url += f"{'&' if '?' in log_url else '?'}archive={archive}"
    log = await open_log(log_url)
    try:
        fill = await _fill(log, records)
        total = await log.head()
        hot = await _verify_and_replay(log, total)
        started = time.perf_counter()
        start = await log.archive_until(total // 2)
        moved = (start - 1) / (time.perf_counter() - started)
        across = await _verify_and_replay(log, total)
    finally:
        await log.close()
    result = Result(
        backend=backend,
        records=total,
        fill_per_second=fill,
        hot=hot,
        moved_per_second=moved,
        archived=start - 1,
        across=across,
    )
    print(f"verify {result}", file=sys.stderr, flush=True)
    return result


def _rows(result: Result) -> list[Row]:
    rows: list[Row] = []
    cases = {"all in the hot log": result.hot, "half archived": result.across}
    for where, rates in cases.items():
        parameter = f"{result.records} records, {where}"
        values = [(f"{what} records/s", rate, "1/s") for what, rate in rates.items()]
        rows += measured("verify", "sessionlog", result.backend, parameter, values)
    parameter = f"{result.archived} records moved to the archive"
    values = [("archive_until records/s", result.moved_per_second, "1/s")]
    return rows + measured("verify", "sessionlog", result.backend, parameter, values)


def scenario(
    quick: bool,
    urls: dict[str, str],
    workdir: Path,
    records: int | None = None,
    only: tuple[str, ...] = BACKENDS,
) -> ScenarioResult:
    records = records or (20_000 if quick else RECORDS)
    results = [asyncio.run(bench_backend(b, urls[b], records, workdir)) for b in only]
    rows = [row for result in results for row in _rows(result)]
    return ScenarioResult(rows=rows, raw={"batch": BATCH, "results": results})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.verify", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="20,000 records")
    parser.add_argument("--records", type=int, help=f"records per log (default {RECORDS:,})")
    parser.add_argument(
        "--backend", nargs="+", choices=("memory", *BACKENDS), default=list(BACKENDS)
    )
    parser.add_argument("--out", type=Path, help="a directory to write verify.json in")
    args = parser.parse_args(argv)
    if args.records is not None and args.records < 2:
        parser.error("--records must be at least 2")
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as workdir:
        with backends(Path(workdir)) as urls:
            result = scenario(args.quick, urls, Path(workdir), args.records, tuple(args.backend))
    for row in result.rows:
        print(f"{row.backend:10} {row.parameter:40} {row.metric:24} {row.value:12,.0f} {row.unit}")
    if args.out is not None:
        report(args.out / "verify.json", args.quick, rows=result.rows, **result.raw)


if __name__ == "__main__":
    main()
