"""The proxy scenario's README tables and summary rows, from rows made up here."""

from __future__ import annotations

from bench.harness import Row, measured
from bench.proxy import conformance_rows
from bench.readme import render


def _row(system: str, backend: str, parameter: str, metric: str, value: float) -> Row:
    unit = {"calls/s": "1/s", "answered": ""}.get(metric, "ms")
    scenario = "proxy-faults" if metric in ("answered", "time to answer") else "proxy"
    [row] = measured(scenario, system, backend, parameter, [(metric, value, unit)])
    return row


def test_proxy_tables_compare_each_backend_and_show_the_failures() -> None:
    rows = [
        _row("upstream", "", "1 clients", "calls/s", 700),
        _row("upstream", "", "1 clients", "p50", 1.4),
        _row("upstream", "", "1 clients", "p99", 2.0),
        _row("sessionlog", "redis", "1 clients", "calls/s", 300),
        _row("sessionlog", "redis", "1 clients", "p50", 3.0),
        _row("sessionlog", "redis", "1 clients", "p99", 4.0),
        _row("sessionlog", "redis", "1 clients, 2 workers", "calls/s", 200),
        _row("sessionlog", "redis", "1 clients, 2 workers", "p99", 5.0),
        _row("mcp-persist", "redis", "1 clients", "calls/s", 150),
        _row("mcp-persist", "redis", "1 clients", "p50", 2.0),
        _row("mcp-persist", "redis", "1 clients", "p99", 8.0),
        _row("sessionlog", "redis", "kill -9", "answered", 1),
        _row("sessionlog", "redis", "kill -9", "time to answer", 15_000),
        _row("mcp-persist", "redis", "kill -9", "answered", 0),
    ]
    text = render(rows)
    assert "| SDK server alone | 700/s, 1.4 / 2 ms |" in text
    assert "| sessionlog, redis | 300/s, 3 / 4 ms |" in text
    # Ours against theirs on the same backend: twice the calls, half the p99.
    assert "| redis | 1 worker | 2x better, 2x better |" in text
    assert "| redis | 2 workers | 1.3x better, 1.6x better |" in text
    assert "| kill -9 | yes, 15,000 ms | **no** |" in text


def test_conformance_scores_are_summary_rows() -> None:
    report = {
        "targets": {
            "py": {"label": "Python server", "upstream": None, "proxy": None, "backend": None},
            "p+py": {"label": "p", "upstream": "py", "proxy": "mcp-persist", "backend": "redis"},
        },
        "results": [
            {"target": "p+py", "suite": "2025", "applies": True, "passed": True},
            {"target": "p+py", "suite": "2025", "applies": True, "passed": False},
            {"target": "p+py", "suite": "2025", "applies": False, "passed": False},
            {"target": "py", "suite": "2025", "applies": True, "passed": True},
        ],
    }
    rows = {(r.system, r.backend, r.parameter): (r.value, r.unit) for r in conformance_rows(report)}
    assert rows == {
        ("mcp-persist", "redis", "2025 suite, through to the Python server"): (1, "of 2"),
        ("upstream", "", "2025 suite, Python server"): (1, "of 1"),
    }
