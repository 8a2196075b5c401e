"""What every benchmark shares: the servers it runs against, the machine, the report."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import msgspec
import psutil

from gateway.testing.servers import PostgresServer, RedisServer

__all__ = [
    "Row",
    "ScenarioResult",
    "backends",
    "cpu_seconds",
    "machine",
    "measured",
    "percentile",
    "process_tree",
    "report",
    "rss_mib",
]


VERSIONED = ("sessionlog", "msgspec", "sqlalchemy", "asyncpg", "redis", "aiohttp", "mcp")


class Row(msgspec.Struct, kw_only=True):
    """One measured number: a row of ``bench/results/summary.json``."""

    scenario: str  # e.g. "delivery", "idle", "sustained", "tools-call", "append"
    system: str  # "sessionlog", "contextforge" or "mcp-sdk"
    backend: str  # "redis", "sqlite", "postgresql", "memory", or "" where none applies
    parameter: str  # what was varied, e.g. "after idle", "1000 sessions", "20 clients"
    metric: str  # e.g. "p50", "messages/s", "cpu %"
    value: float
    unit: str  # e.g. "ms", "1/s", "%", "KiB"


class ScenarioResult(msgspec.Struct, kw_only=True):
    """What a scenario hands the harness: its rows for summary.json, and everything
    else (raw percentiles, parameters, failures) for ``bench/results/<scenario>.json``."""

    rows: list[Row]
    raw: dict[str, Any] = {}


def measured(
    scenario: str,
    system: str,
    backend: str,
    parameter: str,
    values: Iterable[tuple[str, float | None, str]],
) -> list[Row]:
    """The rows of one measured case: a (metric, value, unit) each; None values (not
    measurable there) are left out."""
    return [
        Row(
            scenario=scenario,
            system=system,
            backend=backend,
            parameter=parameter,
            metric=metric,
            value=value,
            unit=unit,
        )
        for metric, value, unit in values
        if value is not None
    ]


def process_tree(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """A server's process and its children (a --workers supervisor's workers)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(process.pid)
        return [parent, *parent.children(recursive=True)]
    return []


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU of ``processes`` so far, as /proc counts it."""
    total = 0.0
    for each in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def rss_mib(processes: list[psutil.Process]) -> float:
    total = 0
    for each in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += each.memory_info().rss
    return total / 2**20


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine, for every results file."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu": model,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def backends(directory: Path) -> Iterator[dict[str, str]]:
    (directory / "pg").mkdir()
    (directory / "redis").mkdir()
    postgres, redis = PostgresServer(directory / "pg"), RedisServer(directory / "redis")
    try:
        postgres.start()
        redis.start()
        yield {
            "memory": "memory://",
            "sqlite": f"sqlite:///{directory}/NS.db",
            "postgresql": f"{postgres.url}?namespace=NS",
            "redis": f"{redis.url}?namespace=NS",
        }
    finally:
        postgres.stop()
        redis.stop()


def report(out: Path, quick: bool, **results: Any) -> None:
    """Results as JSON, with the machine and library versions they were measured with."""
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine(),
        "versions": {p: version(p) for p in VERSIONED},
        "quick": quick,
        **results,
    }
    out.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
