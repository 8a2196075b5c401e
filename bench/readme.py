"""Write the README's benchmark tables from the results files, never by hand.

    python -m bench.readme

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "update"]

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
RESULTS = Path(__file__).parent / "results"

EVENTLOG_TARGETS = {"memory": 500_000, "sqlite": 100_000, "redis": 100_000, "postgresql": 50_000}
READ_TARGET = 500_000
LATENCY_TARGETS = {"redis": "p50 <= 1, p99 <= 5", "postgresql": "p50 <= 2", "sqlite": "p50 <= 10"}


def _machine(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (
        f"Measured on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}."
    )


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**missed**"


def eventlog_table(report: dict[str, Any]) -> str:
    rows = [
        "| backend | append, 1 appender | 10 | 100 | 100 x 10 events (target) | read (target) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_backend: dict[str, dict[tuple[str, int, int], float]] = {}
    for r in report["results"]:
        key = (r["case"], r["appenders"], r["events_per_append"])
        by_backend.setdefault(r["backend"], {})[key] = r["per_second"]
    for backend, cases in by_backend.items():
        target, grouped, read = (
            EVENTLOG_TARGETS[backend],
            cases[("append", 100, 10)],
            cases[("read", 1, 1)],
        )
        rows.append(
            f"| {backend} | {cases[('append', 1, 1)]:,.0f} | {cases[('append', 10, 1)]:,.0f} "
            f"| {cases[('append', 100, 1)]:,.0f} "
            f"| {grouped:,.0f} (>= {target:,}: {_verdict(grouped, target)}) "
            f"| {read:,.0f} (>= {READ_TARGET:,}: {_verdict(read, READ_TARGET)}) |"
        )
    return "\n".join(["Events per second.", "", *rows, "", _machine(report)])


def registry_table(report: dict[str, Any]) -> str:
    rows = [
        "| backend | path | pattern | messages | p50 ms | p95 ms | p99 ms | max ms | target |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["latency"]:
        rows.append(
            f"| {r['backend']} | {r['path']} | {r['pattern']} | {r['messages']} "
            f"| {r['p50_ms']:.2f} "
            f"| {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} "
            f"| {LATENCY_TARGETS[r['backend']]} |"
        )
    if report.get("idle"):
        rows += [
            "",
            "Idle cost of open sessions on one worker (targets at 10,000: connections and "
            "operations flat in the session count, CPU < 2 %, < 20 KiB a session):",
            "",
            "| backend | sessions | connections | round trips/s | CPU % | KiB/session |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for i in report["idle"]:
            connections = "-" if i["connections"] is None else i["connections"]
            ops = i["backend_ops_per_second"]
            rows.append(
                f"| {i['backend']} | {i['sessions']:,} | {connections} "
                f"| {ops:.1f} | {i['cpu_percent']:.2f} "
                f"| {i['kib_per_session']:.1f} |"
            )
    replay = report["replay"]
    rate, start = replay["records_per_second"], replay["start_from_snapshot_seconds"]
    rows += [
        "",
        "| log records | replay (decode + fold) | worker start from a snapshot at the head |",
        "|---:|---:|---:|",
        f"| {replay['records']:,} | {rate:,.0f} records/s (>= 500,000: {_verdict(rate, 5e5)}) "
        f"| {start:.3f} s, snapshot {replay['snapshot_bytes'] / 2**20:.1f} MiB "
        f"(< 1 s: {_verdict(start, 1.0, higher_is_better=False)}) |",
    ]
    return "\n".join([*rows, "", _machine(report)])


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "eventlog": eventlog_table,
    "registry": registry_table,
}


def update(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- bench:{name} --> markers")
    return pattern.sub(lambda m: f"{m.group(1)}{body}\n{m.group(2)}", text)


def main() -> None:
    text = README.read_text()
    for name, render in SECTIONS.items():
        path = RESULTS / f"{name}.json"
        if path.exists():
            report = json.loads(path.read_text())
            if not report.get("quick"):
                text = update(text, name, render(report))
    README.write_text(text)


if __name__ == "__main__":
    main()
