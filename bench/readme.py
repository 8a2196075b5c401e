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

from . import retention
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
    "proxy": "tools/call through a proxy in front of the SDK server",
    "proxy-faults": "What each proxy does on failure (two proxy processes, one store)",
    "memory": "Worker memory: 3 MiB messages on one session, sessions opened and closed",
    "faults": "Faults under load: 10 HTTP+SSE clients posting and awaiting each answer",
    "verify": "Verify (the hash chain walked) beside replay (read, decode, fold), one log",
    "retention": "Retention soak: sessions through one worker, with a short retention and without",
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
    ("verify", "", "verify records/s"): ">= 500,000",
    # Issue 12's: at the SDK's latency and CPU or better, 3x its calls/s at 20 clients.
    ("tools-call", "", "calls/s"): ">= 3x the SDK (20 clients)",
    ("tools-call", "", "p50"): "<= the SDK's",
    ("tools-call", "", "cpu per call"): "<= the SDK's",
}
ORDER = [
    "tools-call",
    "proxy",
    "delivery",
    "sustained",
    "idle",
    "memory",
    "append",
    "read",
    "replay",
    "faults",
    "verify",
    "retention",
]
# Scenarios with several systems side by side, not one baseline: tables of their own.
# Conformance rows are in summary.json; the README has its own table for them.
SPECIAL = {"proxy", "proxy-faults", "conformance", "faults", "retention"}
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
    if 0.95 <= ratio <= 1.05:
        return "same"
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
    tables = []
    for scenario in ordered:
        if scenario == "proxy":
            tables += [_proxy_tables(rows), _proxy_faults(rows)]
        elif scenario == "faults":
            tables.append(_faults(rows))
        elif scenario == "retention":
            tables.append(_retention(rows))
        elif scenario not in SPECIAL:
            tables.append(_table(scenario, rows))
    return "\n\n".join(filter(None, tables))


# -- retention: one row per backend and run ------------------------------------------

RETENTION_MEASURES = {
    "sqlite": "the file",
    "postgresql": "events table",
    "redis": "used_memory",
}
RETENTION_COLUMNS = (
    ("sessions/s", "sessions/s"),
    ("backend at warm-up", "backend at warm-up"),
    ("backend at end", "at end"),
    ("backend growth", "growth"),
    ("rss at warm-up", "worker RSS at warm-up"),
    ("rss at end", "at end"),
    ("rss growth", "growth"),
    ("backend growth per session", "backend per session"),
)


def _retention(rows: list[Row]) -> str:
    soak = [r for r in rows if r.scenario == "retention"]
    if not soak:
        return ""
    runs = list(dict.fromkeys((r.backend, r.parameter) for r in soak))
    found = {(r.backend, r.parameter, r.metric): r for r in soak}
    lines = [
        f"**{TITLES['retention']}**",
        "",
        "| backend (measure) | run | " + " | ".join(h for _, h in RETENTION_COLUMNS) + " | flat |",
        "|---|---|" + "---:|" * len(RETENTION_COLUMNS) + "---|",
    ]
    for backend, run in runs:
        cells = []
        for metric, _ in RETENTION_COLUMNS:
            row = found.get((backend, run, metric))
            cells.append("" if row is None else _value(row))
        growth = [found.get((backend, run, m)) for m in ("backend growth", "rss growth")]
        flat = ""
        if "retain off" not in run and all(growth):
            flat = "yes" if all(abs(g.value) <= retention.FLAT for g in growth if g) else "**no**"
        measure = f"{backend} ({RETENTION_MEASURES.get(backend, '')})"
        lines.append(f"| {measure} | {run} | " + " | ".join(cells) + f" | {flat} |")
    note = (
        f"Each session: initialize, notifications/initialized, {retention.CALLS} tools/call of "
        f"the built-in echo, DELETE (Streamable HTTP, {retention.CLIENTS} clients). Levels are "
        f"means of the samples over {retention.WINDOW_SECONDS:g} s after warm-up (the first "
        f"{retention.WARM_UP_SECONDS:g} s) and over the last {retention.WINDOW_SECONDS:g} s; "
        f"flat: both within {retention.FLAT:g} %. The backend: the SQLite file (its WAL beside "
        "it in the plot), PostgreSQL's `pg_total_relation_size` of the events table, "
        "Valkey's `used_memory`. Over time: `bench/results/retention.png`."
    )
    return "\n".join(lines) + "\n\n" + textwrap.fill(note, width=88, break_on_hyphens=False)


# -- faults: one row per case, one column per figure -----------------------------------

FAULT_COLUMNS = (
    ("longest request", "longest request"),
    ("readyz 503 after", "/readyz 503 after"),
    ("answered again after", "answered again after it is back"),
    ("acknowledged", "acknowledged (202)"),
    ("unanswered", "unanswered: clients / log"),
)


def _faults(rows: list[Row]) -> str:
    faults = [r for r in rows if r.scenario == "faults"]
    if not faults:
        return ""
    cases = list(dict.fromkeys((r.backend, r.parameter) for r in faults))
    found = {(r.backend, r.parameter, r.metric): r for r in faults}
    lines = [
        f"**{TITLES['faults']}**",
        "",
        "| backend | fault | " + " | ".join(head for _, head in FAULT_COLUMNS) + " |",
        "|---|---|" + "---:|" * len(FAULT_COLUMNS),
    ]
    for backend, fault in cases:
        cells = []
        for metric, _ in FAULT_COLUMNS:
            row = found.get((backend, fault, metric))
            value = "never" if row is None else _number(row.value, row.unit)
            if metric == "unanswered":
                in_log = found.get((backend, fault, "unanswered in log"))
                lost = found.get((backend, fault, "lost with the rollback"))
                if lost is not None:
                    value = f"{_number(lost.value, '')} taken by the rollback"
                value += f" / {_number(in_log.value, '') if in_log else '?'}"
            elif row is not None and row.unit == "s":
                value += " s"
            cells.append(value)
        lines.append(f"| {backend} | {fault} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- proxy mode: several systems side by side, not one baseline -----------------------

PROXY_ORDER = ("upstream", "sessionlog", "mcp-persist")
PROXY_BACKENDS = ("sqlite", "postgresql", "redis")


def _proxy_system(row: Row) -> tuple[int, int, str, str]:
    """(order, backend order, system label, workers) of a proxy row."""
    workers = row.parameter.split(", ", 1)[1] if ", " in row.parameter else ""
    label = "SDK server alone" if row.system == "upstream" else f"{row.system}, {row.backend}"
    if workers:
        label += f", {workers}"
    backend = PROXY_BACKENDS.index(row.backend) if row.backend in PROXY_BACKENDS else -1
    return (PROXY_ORDER.index(row.system), backend, label, workers)


def _clients(row: Row) -> int:
    return int(row.parameter.split(" ", 1)[0])


def _proxy_grid(rows: list[Row]) -> tuple[list[str], list[int], dict[tuple[str, int, str], Row]]:
    """System labels in order, concurrencies, and (label, clients, metric) -> row."""
    proxy = [r for r in rows if r.scenario == "proxy"]
    systems = sorted({_proxy_system(r) for r in proxy})
    grid = {(_proxy_system(r)[2], _clients(r), r.metric): r for r in proxy}
    return [s[2] for s in systems], sorted({_clients(r) for r in proxy}), grid


def _proxy_tables(rows: list[Row]) -> str:
    labels, concurrency, grid = _proxy_grid(rows)
    if not labels:
        return ""
    heads = " | ".join(f"{c} session{'s' if c > 1 else ''}" for c in concurrency)
    lines = [
        f"**{TITLES['proxy']}**: calls/s, p50 / p99",
        "",
        f"| proxy, log or store | {heads} |",
        "|---|" + "---:|" * len(concurrency),
    ]
    for label in labels:
        cells = []
        for c in concurrency:
            calls, p50, p99 = (grid.get((label, c, m)) for m in ("calls/s", "p50", "p99"))
            cells.append(
                f"{_number(calls.value, '1/s')}/s, {_number(p50.value, 'ms')} / "
                f"{_number(p99.value, 'ms')} ms"
                if calls and p50 and p99
                else ""
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**CPU per call (the proxy's processes alone / with the upstream's) and the "
        "proxy's RSS after the run**",
        "",
        f"| proxy, log or store | {heads} | RSS |",
        "|---|" + "---:|" * (len(concurrency) + 1),
    ]
    for label in labels:
        cells = []
        for c in concurrency:
            alone, total = (
                grid.get((label, c, "proxy cpu per call")),
                grid.get((label, c, "total cpu per call")),
            )
            cells.append(
                f"{_number(alone.value, 'ms')} / {_number(total.value, 'ms')} ms"
                if alone and total
                else ""
            )
        rss = grid.get((label, concurrency[-1], "rss"))
        cells.append(f"{_number(rss.value, 'MiB')} MiB" if rss else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _proxy_ratios(labels, concurrency, grid)


def _proxy_ratios(
    labels: list[str], concurrency: list[int], grid: dict[tuple[str, int, str], Row]
) -> str:
    """sessionlog against mcp-persist-proxy on each store both have."""
    heads = " | ".join(str(c) for c in concurrency)
    lines = [
        "**sessionlog against mcp-persist-proxy on the same backend**: calls/s, p99 "
        "(sessions across)",
        "",
        f"| backend | sessionlog | {heads} |",
        "|---|---|" + "---|" * len(concurrency),
    ]
    for backend in PROXY_BACKENDS:
        theirs = f"mcp-persist, {backend}"
        if theirs not in labels:
            continue
        for ours in [label for label in labels if label.startswith(f"sessionlog, {backend}")]:
            cells = []
            for c in concurrency:
                pair = [
                    (grid.get((ours, c, m)), grid.get((theirs, c, m))) for m in ("calls/s", "p99")
                ]
                cells.append(
                    ", ".join(
                        _comparison(a.value, b.value, a.metric)
                        for a, b in pair
                        if a is not None and b is not None
                    )
                )
            workers = ours.split(", ", 2)[2] if ours.count(", ") == 2 else "1 worker"
            lines.append(f"| {backend} | {workers} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 4 else ""


def _proxy_faults(rows: list[Row]) -> str:
    faults = [r for r in rows if r.scenario == "proxy-faults"]
    if not faults:
        return ""
    systems = sorted(
        {(PROXY_ORDER.index(r.system), r.system, r.backend) for r in faults},
        key=lambda s: (s[0], PROXY_BACKENDS.index(s[2]) if s[2] in PROXY_BACKENDS else -1),
    )
    cases = list(dict.fromkeys(r.parameter for r in faults))
    found = {(r.system, r.backend, r.parameter, r.metric): r for r in faults}
    heads = " | ".join(f"{system}, {backend}" for _, system, backend in systems)
    lines = [
        f"**{TITLES['proxy-faults']}**: answered?, and in how long",
        "",
        f"| case | {heads} |",
        "|---|" + "---|" * len(systems),
    ]
    for case in cases:
        cells = []
        for _, system, backend in systems:
            answered = found.get((system, backend, case, "answered"))
            took = found.get((system, backend, case, "time to answer"))
            if answered is None:
                cells.append("")
            elif answered.value:
                cells.append(f"yes, {_number(took.value, 'ms')} ms" if took else "yes")
            else:
                cells.append("**no**")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _machine() -> str:
    """The machine the results files say they were measured on."""
    for path in sorted((Path(__file__).parent / "results").glob("*.json")):
        report = json.loads(path.read_text())
        if isinstance(report, dict) and "machine" in report:
            m = report["machine"]
            return (
                f"Measured on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
                f"Python {m['python']}, by `python -m bench`."
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
