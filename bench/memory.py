"""Worker memory with big messages and with many sessions: RSS of `sessionlog serve`.

    python -m bench.memory [--quick] [--before DIR] [--out DIR]

- **big messages**: two workers on one SQLite log; a client holds its HTTP+SSE
  stream on one (the holder) and POSTs 60 tools/call of 3 MiB (the built-in echo)
  to the other, which only records and folds them; at most 4 unanswered at once,
  every answer read from the stream. RSS of each worker before and after.
- **no stream**: the same two workers; the holder is killed (-9), and 60 POSTs of
  3 MiB go to the session on the survivor, which nobody answers: how many are
  accepted (202) and refused (429), and the survivor's RSS.
- **churn**: 20,000 Streamable HTTP sessions opened (initialize) and closed
  (DELETE) on one worker by 8 clients; RSS growth per session from 2,000 on; again
  with ``--closed-retention 0`` (closed sessions forgotten at once, as they are a
  day after closing by default).

- **backend memory**: 2,000 Streamable HTTP sessions opened (initialize) and closed
  (DELETE) through one worker on Redis (Valkey): its ``used_memory`` per closed
  session, within the log's ``dedupe_window`` (the event ids of the window kept) and
  after it (only the stream, the log itself, left).

``--before DIR`` runs the worker scenarios against another checkout too (for example
``git archive main | tar -x -C DIR``), side by side; its rows are system
"sessionlog (before)".
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from gateway.testing.servers import RedisServer
from gateway.testing.workloads import (
    call_big,
    open_and_close,
    open_sse,
    post_big,
    rss_mib,
    unanswered,
    worker,
)

from .harness import Row, ScenarioResult, measured, report

MESSAGE = 3 * 2**20  # bytes of text in each tools/call
CALLS = 60
CHURN = 20_000
CHURN_FROM = 2_000  # sessions before the growth is measured (warm-up)
CLIENTS = 8
BACKEND_SESSIONS = 2_000
DEDUPE_WINDOW = 2.0  # s: short, so the run sees the ids forgotten


def _log_url(directory: Path, name: str) -> str:
    return f"sqlite:///{directory / name}.db"


async def _big_messages(
    system: str, source: Path | None, directory: Path, calls: int
) -> tuple[list[Row], dict[str, object]]:
    url = _log_url(directory, f"big-{system.split()[-1].strip('()')}")
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    with worker(url, source=source) as holder, worker(url, source=source) as poster:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with open_sse(http, holder.url) as (session_id, stream):
                before = {"holder": rss_mib(holder.process), "non-holder": rss_mib(poster.process)}
                calls_made = await call_big(
                    http, stream, poster.url, session_id, count=calls, size=MESSAGE
                )
                after = {"holder": rss_mib(holder.process), "non-holder": rss_mib(poster.process)}
            # The holder killed: messages to a session nobody answers.
            holder.process.send_signal(signal.SIGKILL)
            holder.process.wait()
            statuses: dict[int, int] = {}
            for request_id in range(calls + 1, 2 * calls + 1):
                status, _ = await post_big(http, poster.url, session_id, request_id, MESSAGE)
                statuses[status] = statuses.get(status, 0) + 1
            idle = rss_mib(poster.process)
    asked, missing = await unanswered(url)
    rows: list[Row] = []
    for role in ("holder", "non-holder"):
        parameter = f"{calls} x 3 MiB tools/call, {role}"
        rows += measured(
            "memory",
            system,
            "sqlite",
            parameter,
            [("rss before", before[role], "MiB"), ("rss after", after[role], "MiB")],
        )
    rows += measured(
        "memory",
        system,
        "sqlite",
        f"{calls} x 3 MiB POSTs, no stream",
        [
            ("accepted", statuses.get(202, 0), "messages"),
            ("refused", statuses.get(429, 0), "messages"),
            ("rss after", idle, "MiB"),
        ],
    )
    raw = {
        "rss_mib": {"before": before, "after": after, "no stream": idle},
        "calls": dict(calls_made.statuses),
        "answered": len(calls_made.answered),
        "no stream statuses": statuses,
        "client messages in the log": asked,
        "unanswered in the log": len(missing),
    }
    return rows, raw


async def _churn(
    system: str,
    source: Path | None,
    directory: Path,
    sessions: int,
    warm_up: int,
    retention: float | None = None,
) -> tuple[list[Row], dict[str, object]]:
    """``retention``: the registry's closed-session retention (default: the
    setting's default, a day, longer than the run)."""
    name = f"churn-{system.split()[-1].strip('()')}-{retention}"
    args = () if retention is None else ("--closed-retention", str(retention))
    with worker(_log_url(directory, name), *args, source=source) as served:
        async with aiohttp.ClientSession() as http:
            await open_and_close(http, served.url, warm_up, CLIENTS)
            start = rss_mib(served.process)
            await open_and_close(http, served.url, sessions - warm_up, CLIENTS)
            end = rss_mib(served.process)
    # Growth only: RSS that shrank (the allocator gave pages back) is no growth.
    per_session = max(0.0, end - start) * 1024 / (sessions - warm_up)
    parameter = f"{sessions} sessions opened and closed"
    if retention is not None:
        parameter += f", closed retention {retention:g} s"
    rows = measured(
        "memory",
        system,
        "sqlite",
        parameter,
        [("rss growth per session", per_session, "KiB"), ("rss after", end, "MiB")],
    )
    raw = {"rss_mib": {"from": start, "to": end}, "sessions": sessions, "warm_up": warm_up}
    return rows, raw


async def _valkey_per_closed_session(directory: Path, sessions: int) -> list[Row]:
    """Valkey's used_memory per opened-and-closed session, within the dedupe window
    and once it has passed (what stays is the log's stream)."""
    (directory / "valkey").mkdir()
    server = RedisServer(directory / "valkey")
    server.start()
    client = aioredis.from_url(server.url)

    async def used() -> int:
        await client.execute_command("MEMORY", "PURGE")
        return int((await client.info("memory"))["used_memory"])

    try:
        url = f"{server.url}?namespace=m&dedupe_window={DEDUPE_WINDOW}"
        with worker(url) as served:
            async with aiohttp.ClientSession() as http:
                await open_and_close(http, served.url, 10, 1)  # the log's keys exist
                start = await used()
                await open_and_close(http, served.url, sessions, CLIENTS)
                within = await used()
        # Each id bucket expires two windows after its last write.
        await asyncio.sleep(3 * DEDUPE_WINDOW + 1)
        after = await used()
    finally:
        await client.aclose()
        server.stop()
    parameter = f"{sessions} sessions opened and closed, Valkey"
    values = [
        ("used_memory per closed session, within the dedupe window", (within - start) / sessions),
        ("used_memory per closed session, after it", (after - start) / sessions),
    ]
    return measured("memory", "sessionlog", "redis", parameter, [(m, v, "B") for m, v in values])


def scenario(quick: bool, workdir: Path, before: Path | None = None) -> ScenarioResult:
    calls = 12 if quick else CALLS
    sessions, warm_up = (600, 200) if quick else (CHURN, CHURN_FROM)
    systems: list[tuple[str, Path | None]] = [("sessionlog", None)]
    if before is not None:
        systems.insert(0, ("sessionlog (before)", before))
    rows: list[Row] = []
    raw: dict[str, object] = {"message_bytes": MESSAGE}
    for system, source in systems:
        big_rows, big_raw = asyncio.run(_big_messages(system, source, workdir, calls))
        churn_rows, churn_raw = asyncio.run(_churn(system, source, workdir, sessions, warm_up))
        rows += big_rows + churn_rows
        raw[system] = {"big messages": big_raw, "churn": churn_raw}
    # Closed sessions forgotten at once: what the registry keeps past the window.
    forgetting, forgetting_raw = asyncio.run(
        _churn("sessionlog", None, workdir, sessions, warm_up, retention=0.0)
    )
    rows += forgetting
    raw["sessionlog, closed retention 0 s"] = {"churn": forgetting_raw}
    backend_sessions = 200 if quick else BACKEND_SESSIONS
    rows += asyncio.run(_valkey_per_closed_session(workdir, backend_sessions))
    return ScenarioResult(rows=rows, raw=raw)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--before", type=Path, help="another checkout to run side by side")
    parser.add_argument("--out", type=Path, help="a directory to write memory.json in")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sessionlog-memory-") as workdir:
        result = scenario(args.quick, Path(workdir), args.before)
    for row in result.rows:
        print(f"{row.system:22} {row.parameter:42} {row.metric:24} {row.value:10.2f} {row.unit}")
    if args.out is not None:
        report(args.out / "memory.json", args.quick, rows=result.rows, **result.raw)


if __name__ == "__main__":
    main()
