"""The README's benchmark tables, generated from ``bench/results/summary.json``.

One table per scenario: sessionlog, its baseline where one was measured (the
reference registry, or the official MCP SDK server), and how they compare. The
tables sit between ``<!-- bench:summary -->`` and ``<!-- /bench:summary -->``; the
conformance table (from ``bench/results/conformance.json``, which tests/conformance
writes: per everything server and suite, its score alone and through each proxy
measured, sessionlog and mcp-persist-proxy on each of their stores) between
``<!-- bench:conformance -->`` and ``<!-- /bench:conformance -->``.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from .harness import Row

__all__ = ["render", "render_conformance", "write", "write_conformance"]

README = Path(__file__).parent.parent / "README.md"
MARKERS = re.compile(r"(<!-- bench:summary -->\n).*?(<!-- /bench:summary -->)", re.DOTALL)

TITLES = {
    "append": "Event log append throughput (100 appenders x 10 is the target case)",
    "read": "Event log read + decode",
    "delivery": "Broadcast -> transport across two processes",
    "idle": "Idle cost of open sessions on one worker",
    "sustained": "Sustained delivery across processes",
    "replay": "Replay (decode + fold) and worker start from a snapshot",
    "tools-call": "tools/call echo through the gateway vs the MCP SDK server",
}
# Metrics where more is better; for all others (latency, CPU, ...) less is.
HIGHER_IS_BETTER = ("events/s", "records/s", "messages/s", "calls/s")
# The targets of ../shared/DESIGN.md, by (scenario, backend, metric); "" matches any.
TARGETS = {
    ("append", "memory", "events/s"): ">= 500,000",
    ("append", "sqlite", "events/s"): ">= 100,000",
    ("append", "redis", "events/s"): ">= 100,000",
    ("append", "postgresql", "events/s"): ">= 50,000",
    ("read", "", "records/s"): ">= 500,000",
    ("delivery", "redis", "p50"): "<= the reference's",
    ("delivery", "redis", "p99"): "<= 5 ms",
    ("delivery", "postgresql", "p50"): "<= 2 ms",
    ("delivery", "sqlite", "p50"): "<= 10 ms",
    ("idle", "", "cpu %"): "< 2 % at 10,000",
    ("idle", "", "KiB/session"): "< 20 KB",
    ("idle", "", "connections"): "flat",
    ("idle", "", "ops/s"): "flat",
    ("replay", "", "records/s"): ">= 500,000",
    ("replay", "", "start from snapshot"): "< 1 s",
    ("tools-call", "", "calls/s"): ">= 2x the SDK",
}
ORDER = ["tools-call", "delivery", "sustained", "idle", "append", "read", "replay"]
# In summary.json and the results files, not in the README's tables (kept short).
LEFT_OUT = ("p95", "max")


def _target(row: Row) -> str:
    if row.scenario == "append" and row.parameter != "100 appenders x 10":
        return ""
    for backend in (row.backend, ""):
        if (found := TARGETS.get((row.scenario, backend, row.metric))) is not None:
            return found
    return ""


def _number(value: float, unit: str) -> str:
    if value >= 1000 or (unit == "1/s" and value >= 10):
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _baseline_parameter(row: Row) -> str:
    """Ours "sse, 20 clients, 2 workers" compares with the SDK's "sse, 20 clients"."""
    return re.sub(r", \d+ workers?$", "", row.parameter)


def _comparison(ours: float, theirs: float, metric: str) -> str:
    if ours <= 0 or theirs <= 0:
        return ""
    ratio = ours / theirs if metric in HIGHER_IS_BETTER else theirs / ours
    shown = ratio if ratio >= 1 else 1 / ratio
    text = f"{shown:,.0f}x" if shown >= 100 else f"{shown:.2g}x"
    return f"{text} better" if ratio >= 1 else f"**{text} worse**"


def _key(row: Row, parameter: str) -> tuple[str, str, str]:
    # The SDK server has no log backend: its rows match ours of any backend.
    backend = "" if row.scenario == "tools-call" else row.backend
    return (backend, parameter, row.metric)


def _value(row: Row) -> str:
    return f"{_number(row.value, row.unit)} {row.unit}"


def _table(scenario: str, rows: list[Row]) -> str:
    rows = [r for r in rows if r.metric not in LEFT_OUT]
    ours = [r for r in rows if r.scenario == scenario and r.system == "sessionlog"]
    baselines = [r for r in rows if r.scenario == scenario and r.system != "sessionlog"]
    theirs = {_key(r, r.parameter): r for r in baselines}
    name = baselines[0].system if baselines else ""
    header, rule = "| backend | parameter | metric | sessionlog |", "|---|---|---|---:|"
    if baselines:
        header += f" {name} | sessionlog vs {name} |"
        rule += "---:|---|"
    lines = [f"**{TITLES.get(scenario, scenario)}**", "", f"{header} target |", f"{rule}---|"]
    matched = set()
    for r in ours:
        cells = [r.backend, r.parameter, r.metric, _value(r)]
        if baselines:
            other = theirs.get(_key(r, _baseline_parameter(r)))
            if other is None:
                cells += ["", ""]
            else:
                matched.add(_key(other, other.parameter))
                cells += [_value(other), _comparison(r.value, other.value, r.metric)]
        lines.append("| " + " | ".join([*cells, _target(r)]) + " |")
    for k, r in theirs.items():
        if k not in matched:  # measured for the baseline only (e.g. its raised pool)
            lines.append(
                "| " + " | ".join([r.backend, r.parameter, r.metric, "", _value(r), "", ""]) + " |"
            )
    return "\n".join(lines)


def render(rows: list[Row]) -> str:
    scenarios = {row.scenario for row in rows}
    ordered = [s for s in ORDER if s in scenarios] + sorted(scenarios - set(ORDER))
    return "\n\n".join(_table(scenario, rows) for scenario in ordered)


def _machine() -> str:
    """The machine the results files say they were measured on."""
    for path in sorted((Path(__file__).parent / "results").glob("*.json")):
        report = json.loads(path.read_text())
        if isinstance(report, dict) and "machine" in report:
            m = report["machine"]
            return (
                f"Measured on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
                f"Python {m['python']}, in one run of `python -m bench`."
            )
    return ""


def write(rows: list[Row]) -> None:
    """Put the tables for ``rows`` between the README's markers."""
    text = README.read_text()
    if not MARKERS.search(text):
        raise SystemExit("README.md has no <!-- bench:summary --> markers")
    body = f"{_machine()}\n\n{render(rows)}"
    README.write_text(MARKERS.sub(lambda m: f"{m.group(1)}{body}\n{m.group(2)}", text))


CONFORMANCE_RESULTS = Path(__file__).parent / "results" / "conformance.json"
CONFORMANCE_MARKERS = re.compile(
    r"(<!-- bench:conformance -->\n).*?(<!-- /bench:conformance -->)", re.DOTALL
)
SUITE_TITLES = {"2025": "2025-06-18 / 2025-11-25", "2026": "2026-07-28"}


def render_conformance(report: dict) -> str:
    """The conformance table: per upstream server and suite, scenarios passed alone
    and through each proxy (sessionlog, mcp-persist) on each store it was measured
    on, with how many fail only through it (written by tests/conformance with
    SESSIONLOG_WRITE_CONFORMANCE=1)."""
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for result in report["results"]:
        rows.setdefault((result["target"], result["suite"]), {})[result["scenario"]] = result
    suites, targets = report["suites"], report["targets"]
    measured = {name for name, _ in rows}
    # server -> {"alone" or (proxy, backend): target}; sessionlog alone is a server of
    # its own, its score in the sessionlog column.
    servers: dict[str, dict[object, str]] = {}
    for name, target in targets.items():
        if name not in measured:
            continue
        column = (target["proxy"], target["backend"]) if target["proxy"] else "alone"
        servers.setdefault(target["upstream"] or name, {})[column] = name
    # sessionlog before the competitor, SQLite before Redis
    columns = sorted(
        {column for found in servers.values() for column in found if column != "alone"},
        key=lambda c: (c[0] != "sessionlog", c[0], c[1] != "sqlite", c[1]),
    )
    stores = {"sqlite": "SQLite", "redis": "Redis"}
    headers = [f"through {proxy} ({stores.get(b, b)})" for proxy, b in columns]
    lines = [
        "| server | suite (revisions) | alone | " + " | ".join(headers) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]

    def score(results: dict[str, dict]) -> str:
        applicable = [r for r in results.values() if r["applies"]]
        skipped = len(results) - len(applicable)
        text = f"{sum(r['passed'] for r in applicable)}/{len(applicable)}"
        return text + (f" ({skipped} n/a)" if skipped else "")

    def through(results: dict[str, dict] | None, alone: dict[str, dict] | None) -> str:
        if results is None:
            return ""
        worse = [
            scenario
            for scenario, result in results.items()
            if alone is not None and alone[scenario]["passed"] and not result["passed"]
        ]
        return score(results) + (f" ({len(worse)} fail only here)" if worse else "")

    for server, found in servers.items():
        if found.keys() == {"alone"}:
            continue
        for suite in suites:
            alone = rows.get((found["alone"], suite)) if "alone" in found else None
            cells = [
                through(rows.get((found[c], suite)) if c in found else None, alone) for c in columns
            ]
            if not any(cells):
                continue
            package = suites[suite]["package"].rsplit("@", 1)[1]
            lines.append(
                f"| {targets[server]['label']} | {SUITE_TITLES.get(suite, suite)} ({package}) "
                f"| {score(alone) if alone is not None else ''} | " + " | ".join(cells) + " |"
            )
    repeats = report.get("repeats", {})
    note = (
        f"Scenarios passed, of those the suite runs; server-to-client scenarios "
        f"(sampling, elicitation, roots) pass only if all {repeats.get('runs', 1)} runs do. "
        "n/a: about something the server does not declare. Fail only here: scenarios that "
        "pass against the server alone and fail through that proxy. mcp-persist: "
        "`mcp-persist-proxy`, the resumable MCP proxy of PyPI's mcp-persist. Per scenario, "
        "with the suite's failure messages: `bench/results/conformance.json`; the tests: "
        "`tests/conformance/`."
    )
    return "\n".join(lines) + "\n\n" + textwrap.fill(note, width=88, break_on_hyphens=False)


def write_conformance() -> None:
    """Put the conformance table between the README's conformance markers."""
    text = README.read_text()
    if not CONFORMANCE_MARKERS.search(text):
        raise SystemExit("README.md has no <!-- bench:conformance --> markers")
    body = render_conformance(json.loads(CONFORMANCE_RESULTS.read_text()))
    README.write_text(CONFORMANCE_MARKERS.sub(lambda m: f"{m.group(1)}{body}\n{m.group(2)}", text))


def main() -> None:
    """Rewrite the README's tables from the committed summary.json and
    conformance.json."""
    raw = json.loads((Path(__file__).parent / "results" / "summary.json").read_text())
    write([Row(**row) for row in raw])
    if CONFORMANCE_RESULTS.exists():
        write_conformance()


if __name__ == "__main__":
    main()
