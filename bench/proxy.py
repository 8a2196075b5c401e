"""Proxy mode: ``sessionlog serve --upstream`` beside mcp-persist-proxy, the resumable
proxy a user would pick instead, both in front of the same official SDK server.

The upstream is the SDK 2.3 ``MCPServer`` of gateway/testing/sdk_server.py (Streamable HTTP,
SSE responses, no event store of its own), one fresh process per proxy measured.
Systems: the upstream alone; sessionlog on each log backend with 1 and 2 workers;
mcp-persist-proxy 2.2.0 (its own virtualenv, see gateway/testing/persist_proxy.py) on each of
its stores, as its README runs it. Each is driven by the tools/call load generator
of bench/gateway.py at 1, 5, 20 and 50 concurrent sessions, in rounds that
interleave the systems (so a slow minute of the machine hits all of them); reported
per concurrency is the mean of the rounds: calls/s, p50/p99, CPU per call of the
proxy's processes alone and with the upstream's, and the proxy's RSS after the run.

Then what each proxy does on failure, with two proxy processes A and B sharing one
log or store and one upstream, using the upstream's ``gate`` tool (a call that stays
in flight until a second call with the same key opens it):

- "session opened on another process": initialize on A, call on B.
- "client drops mid-call, resumes on the same process" / "... on another process":
  a gated call on A; the client reads the first event of the call's stream, drops
  the connection; the gate is opened; the client resumes with ``GET`` and the
  ``Last-Event-ID`` it saw, on A or on B.
- "kill -9 with a call in flight, resume on another process": as above, but A is
  killed with SIGKILL after the first event, before the gate opens.

Each case is a row "answered" (1 or 0) and, when answered, "time to answer" (from
the resume or the call on B to the answer). A case that is not answered within
RESUME_GUARD seconds counts as not answered; what the proxy said instead is in the
raw results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import aiohttp
import psutil

from gateway.protocol.sse_codec import SSEParser
from gateway.testing.persist_proxy import VERSION as PERSIST_VERSION
from gateway.testing.persist_proxy import persist_proxy
from gateway.testing.sdk_server import sdk_server
from gateway.testing.serving import serve_process

from .gateway import StreamableClient, _sse_messages, drive, tool_call
from .harness import (
    Row,
    ScenarioResult,
    cpu_seconds,
    measured,
    percentile,
    process_tree,
    rss_mib,
)

__all__ = ["CONCURRENCY", "System", "scenario"]

CONCURRENCY = (1, 5, 20, 50)
CONFORMANCE = Path(__file__).parent / "results" / "conformance.json"
RESUME_GUARD = 40.0  # seconds a resumed call may take (a dead worker is known after 15 s)
SESSIONLOG_BACKENDS = ("sqlite", "postgresql", "redis")
PERSIST_BACKENDS = {"sqlite": "sqlite", "postgresql": "postgres", "redis": "redis"}


@dataclass(frozen=True)
class System:
    name: str  # "upstream", "sessionlog" or "mcp-persist"
    backend: str = ""  # the log or store: "sqlite", "postgresql", "redis"
    workers: int = 1

    @property
    def label(self) -> str:
        if self.name == "upstream":
            return "SDK server alone"
        workers = f", {self.workers} workers" if self.workers > 1 else ""
        return f"{self.name} ({self.backend}{workers})"


def systems(quick: bool) -> list[System]:
    if quick:
        return [System("sessionlog", "sqlite")]
    return [
        System("upstream"),
        *(System("sessionlog", b, w) for b in SESSIONLOG_BACKENDS for w in (1, 2)),
        *(System("mcp-persist", b) for b in PERSIST_BACKENDS),
    ]


# -- the processes ------------------------------------------------------------------


class Stores:
    """A fresh log or store per proxy started, on the run's servers."""

    def __init__(self, urls: dict[str, str], workdir: Path) -> None:
        self.urls, self.workdir = urls, workdir

    def fresh(self, system: System) -> str:
        """A log URL for sessionlog, a store for mcp-persist (a file, or the server's
        URL: it keeps its keys under a prefix and its rows in one table, so a fresh
        Redis database or PostgreSQL schema is not needed, a fresh run is)."""
        if system.name == "sessionlog":
            return self.urls[system.backend].replace("NS", f"proxy_{secrets.token_hex(4)}")
        if system.backend == "sqlite":
            return str(self.workdir / f"persist-{secrets.token_hex(4)}.db")
        return self.urls[system.backend].split("?", 1)[0]


@dataclass
class Proxy:
    url: str  # MCP endpoint
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def proxy(system: System, upstream_url: str, store: str, output: Path) -> Iterator[Proxy]:
    """One proxy process of ``system`` in front of ``upstream_url``, on ``store``."""
    if system.name == "sessionlog":
        workers = ("--workers", str(system.workers)) if system.workers > 1 else ()
        with serve_process(store, "--upstream", upstream_url, *workers, output=output) as served:
            yield Proxy(f"{served.url}/mcp", served.process)
    else:
        base = upstream_url.rsplit("/", 1)[0]
        backend = PERSIST_BACKENDS[system.backend]
        with persist_proxy(base, backend, store, output) as served:
            yield Proxy(f"{served.url}/mcp", served.process)


# -- throughput ---------------------------------------------------------------------


async def _load(
    url: str,
    proxy_processes: list[psutil.Process],
    upstream_processes: list[psutil.Process],
    clients: int,
    seconds: float,
) -> dict[str, float]:
    await drive(url, "streamable-http", clients, min(1.0, seconds))  # warm-up
    proxy_before, upstream_before = cpu_seconds(proxy_processes), cpu_seconds(upstream_processes)
    started = time.perf_counter()
    latencies = await drive(url, "streamable-http", clients, seconds)
    elapsed = time.perf_counter() - started
    proxy_cpu = cpu_seconds(proxy_processes) - proxy_before
    upstream_cpu = cpu_seconds(upstream_processes) - upstream_before
    calls = max(1, len(latencies))
    return {
        "calls": len(latencies),
        "calls_per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        # The upstream alone has no proxy: its own CPU is the "proxy" column's.
        "proxy_cpu_ms_per_call": 1000 * (proxy_cpu or upstream_cpu) / calls,
        "total_cpu_ms_per_call": 1000 * (proxy_cpu + upstream_cpu) / calls,
        "rss_mib": rss_mib(proxy_processes or upstream_processes),
    }


def _throughput_round(
    system: System, stores: Stores, workdir: Path, seconds: float
) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    with sdk_server() as (upstream_process, upstream_url):
        upstream_processes = process_tree(upstream_process)
        with contextlib.ExitStack() as stack:
            if system.name == "upstream":
                url, proxy_processes = upstream_url, []
            else:
                store = stores.fresh(system)
                served = stack.enter_context(proxy(system, upstream_url, store, _output(workdir)))
                url, proxy_processes = served.url, process_tree(served.process)
            for clients in CONCURRENCY:
                results[clients] = asyncio.run(
                    _load(url, proxy_processes, upstream_processes, clients, seconds)
                )
                print(f"proxy {system.label} {clients} clients {results[clients]}", file=sys.stderr)
    return results


# -- failures -----------------------------------------------------------------------


@dataclass
class Outcome:
    answered: bool
    ms: float | None = None
    detail: str = ""


async def _answer_on(response: aiohttp.ClientResponse, request_id: int) -> dict[str, Any] | None:
    async for message in _sse_messages(response):
        if message.get("id") == request_id:
            return message
    return None


async def _timed_answer(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    request_id: int,
    body: dict[str, Any] | None = None,
) -> Outcome:
    """Send a request whose answer comes on its SSE stream; how long it took."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(RESUME_GUARD):
            async with http.request(method, url, json=body, headers=headers) as response:
                if response.status != 200:
                    text = (await response.text())[:300]
                    return Outcome(False, detail=f"HTTP {response.status}: {text}")
                if response.content_type == "application/json":
                    answer = await response.json()
                else:
                    answer = await _answer_on(response, request_id)
    except TimeoutError:
        return Outcome(False, detail=f"no answer within {RESUME_GUARD:.0f} s")
    except aiohttp.ClientError as exc:
        return Outcome(False, detail=f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - started) * 1000
    if answer is None:
        return Outcome(False, detail="the stream ended without the answer")
    if "result" not in answer:
        return Outcome(False, ms, detail=f"answered with an error: {answer.get('error')}")
    return Outcome(True, ms, detail=str(answer["result"])[:200])


async def _open(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    client = StreamableClient(http, url)
    await client.open()
    return client.headers


async def _release(http: aiohttp.ClientSession, upstream_url: str, key: str) -> None:
    """Open the upstream's gate ``key``: a call of its own, straight to the upstream."""
    client = StreamableClient(http, upstream_url)
    await client.open()
    async with (
        asyncio.timeout(RESUME_GUARD),
        http.post(
            upstream_url, json=tool_call(1, "gate", key=key), headers=client.headers
        ) as response,
    ):
        response.raise_for_status()
        await response.read()


async def _start_gated(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], request_id: int, key: str
) -> str | None:
    """POST a gated call and read its stream until the upstream says it holds the
    call ("gated <key>"); the connection is then dropped. The id of the last event
    that had one by then (None if none had)."""
    parser, last_id = SSEParser(), None
    async with asyncio.timeout(RESUME_GUARD):
        response = await http.post(
            url, json=tool_call(request_id, "gate", key=key), headers=headers
        )
        try:
            response.raise_for_status()
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    last_id = event.id or last_id
                    if f"gated {key}" in event.data:
                        return last_id
            raise RuntimeError("the gated call's stream ended before the upstream held it")
        finally:
            response.close()  # the client drops mid-call


async def _failure_case(case: str, a: Proxy, b: Proxy, upstream_url: str) -> Outcome:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        headers = await _open(http, a.url)
        if case == "session opened on another process":
            return await _timed_answer(
                http, "POST", b.url, headers, 7, tool_call(7, "echo", text="hello")
            )
        key = secrets.token_hex(4)
        event_id = await _start_gated(http, a.url, headers, 7, key)
        if event_id is None:
            return Outcome(False, detail="the call's stream had no event id to resume from")
        if case.startswith("kill -9"):
            os.kill(a.process.pid, signal.SIGKILL)
            a.process.wait()
        await _release(http, upstream_url, key)
        target = a if case.endswith("on the same process") else b
        resume = {**headers, "Accept": "text/event-stream", "Last-Event-ID": event_id}
        return await _timed_answer(http, "GET", target.url, resume, 7)


FAILURE_CASES = (
    "session opened on another process",
    "client drops mid-call, resumes on the same process",
    "client drops mid-call, resumes on another process",
    "kill -9 with a call in flight, resume on another process",
)


def _failures(system: System, stores: Stores, workdir: Path) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for case in FAILURE_CASES:
        with sdk_server() as (_, upstream_url), contextlib.ExitStack() as stack:
            store = stores.fresh(system)
            a, b = (
                stack.enter_context(proxy(system, upstream_url, store, _output(workdir)))
                for _ in "ab"
            )
            outcome = asyncio.run(_failure_case(case, a, b, upstream_url))
        print(f"proxy {system.label} {case}: {outcome}", file=sys.stderr)
        outcomes[case] = outcome
    return outcomes


def _output(workdir: Path) -> Path:
    """A file for one proxy process's output."""
    return workdir / f"proxy-{secrets.token_hex(4)}.log"


def _parameter(system: System, clients: int) -> str:
    return f"{clients} clients" + (f", {system.workers} workers" if system.workers > 1 else "")


def conformance_rows(report: dict[str, Any]) -> list[Row]:
    """Each target's conformance score, from the test run that wrote ``report``
    (tests/conformance with SESSIONLOG_WRITE_CONFORMANCE=1): scenarios passed of
    those that apply."""
    scores: dict[tuple[str, str], list[int]] = {}
    for result in report["results"]:
        if result["applies"]:
            score = scores.setdefault((result["target"], result["suite"]), [0, 0])
            score[0] += result["passed"]
            score[1] += 1
    rows: list[Row] = []
    for (name, suite), (passed, total) in sorted(scores.items()):
        target = report["targets"][name]
        upstream = report["targets"][target["upstream"]]["label"] if target["upstream"] else ""
        rows += measured(
            "conformance",
            target["proxy"] or "upstream",
            target["backend"] or "",
            f"{suite} suite, " + (f"through to the {upstream}" if upstream else target["label"]),
            [("scenarios passed", passed, f"of {total}")],
        )
    return rows


# -- the scenario -------------------------------------------------------------------


def scenario(quick: bool, urls: dict[str, str], workdir: Path) -> ScenarioResult:
    seconds, rounds = (1.0, 1) if quick else (8.0, 2)
    stores = Stores(urls, workdir)
    measured_systems = systems(quick)
    runs: dict[System, list[dict[int, dict[str, float]]]] = {s: [] for s in measured_systems}
    for _ in range(rounds):
        for system in measured_systems:
            runs[system].append(_throughput_round(system, stores, workdir, seconds))
    rows: list[Row] = []
    cases: list[dict[str, Any]] = []
    for system, results in runs.items():
        for clients in CONCURRENCY:
            per_round = [result[clients] for result in results]
            mean = {key: fmean(r[key] for r in per_round) for key in per_round[0]}
            cases.append({"system": system.label, "clients": clients, "rounds": per_round})
            rows += measured(
                "proxy",
                system.name,
                system.backend,
                f"{clients} clients"
                + (f", {system.workers} workers" if system.workers > 1 else ""),
                [
                    ("calls/s", mean["calls_per_second"], "1/s"),
                    ("p50", mean["p50_ms"], "ms"),
                    ("p99", mean["p99_ms"], "ms"),
                    ("proxy cpu per call", mean["proxy_cpu_ms_per_call"], "ms"),
                    ("total cpu per call", mean["total_cpu_ms_per_call"], "ms"),
                    ("rss", mean["rss_mib"], "MiB"),
                ],
            )
    failures: list[dict[str, Any]] = []
    for system in measured_systems:
        if system.name == "upstream" or system.workers > 1:
            continue
        for case, outcome in _failures(system, stores, workdir).items():
            failures.append({"system": system.label, "case": case, **outcome.__dict__})
            rows += measured(
                "proxy-faults",
                system.name,
                system.backend,
                case,
                [("answered", float(outcome.answered), ""), ("time to answer", outcome.ms, "ms")],
            )
    if CONFORMANCE.exists():
        rows += conformance_rows(json.loads(CONFORMANCE.read_text()))
    raw = {
        "seconds": seconds,
        "rounds": rounds,
        "concurrency": list(CONCURRENCY),
        "mcp_persist": PERSIST_VERSION,
        "cases": cases,
        "failures": failures,
    }
    return ScenarioResult(rows=rows, raw=raw)
