"""Plots of a benchmark run (matplotlib, written as PNG next to the results)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from .harness import Row

__all__ = ["draw"]


def _leading_number(text: str) -> float | None:
    digits = text.split(" ", 1)[0]
    return float(digits) if digits.isdigit() else None


def _series(rows: list[Row], scenario: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    """(x, value) points per line. Idle: x = sessions, a line per system and backend.
    tools-call: x = clients, a line per system, transport and workers. proxy: x =
    clients, a line per system, backend and workers."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row.scenario != scenario or row.metric != metric:
            continue
        if scenario == "tools-call":
            transport, clients, *workers = row.parameter.split(", ")
            label = " ".join([row.system, transport, *workers])
            x = _leading_number(clients)
        elif scenario == "proxy":
            clients, *workers = row.parameter.split(", ")
            names = [row.system, row.backend, *workers] if row.system != "upstream" else []
            label = " ".join(names) or "SDK server alone"
            x = _leading_number(clients)
        else:
            label, x = f"{row.system} {row.backend}", _leading_number(row.parameter)
            if row.parameter.endswith("pool raised"):
                label += " (pool raised)"
            elif row.system == "contextforge" and row.backend == "redis":
                label += " (default pool: sessions past 49 fail)"
        if x is not None:
            series[label].append((x, row.value))
    return series


def _delivery(rows: list[Row], out: Path) -> None:
    bars = [
        r
        for r in rows
        if r.scenario == "delivery"
        and r.metric in ("p50", "p99")
        and "reply through the log" not in r.parameter
    ]
    if not bars:
        return
    labels = sorted({f"{r.system}\n{r.backend}\n{r.parameter}" for r in bars})
    figure, axis = plt.subplots(figsize=(max(6, len(labels) * 0.9), 4.5))
    for offset, metric in ((-0.2, "p50"), (0.2, "p99")):
        values = {
            f"{r.system}\n{r.backend}\n{r.parameter}": r.value for r in bars if r.metric == metric
        }
        axis.bar(
            [i + offset for i in range(len(labels))],
            [values.get(label, 0) for label in labels],
            width=0.4,
            label=metric,
        )
    axis.set_xticks(range(len(labels)), labels, fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("broadcast -> transport, ms (log)")
    axis.set_title("Delivery latency across processes")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "delivery.png", dpi=100)
    plt.close(figure)


def _lines(
    rows: list[Row], out: Path, scenario: str, metrics: list[str], xlabel: str, name: str
) -> None:
    panels = [(metric, _series(rows, scenario, metric)) for metric in metrics]
    panels = [(metric, series) for metric, series in panels if series]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (metric, series) in zip(axes[0], panels, strict=True):
        for label, points in sorted(series.items()):
            points.sort()
            axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
        axis.set_xscale("log")
        if metric in ("p50", "p99"):  # from a millisecond to hundreds
            axis.set_yscale("log")
        if scenario == "idle":  # from a few to 10,000: only a log scale shows both
            axis.set_yscale("symlog", linthresh=1)
            axis.set_ylim(bottom=0)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(metric)
        axis.legend(fontsize=7)
    figure.suptitle(name)
    figure.tight_layout()
    figure.savefig(out / f"{scenario}.png", dpi=100)
    plt.close(figure)


def draw(rows: list[Row], out: Path) -> None:
    _delivery(rows, out)
    _lines(
        rows,
        out,
        "idle",
        ["cpu %", "ops/s", "connections"],
        "open sessions",
        "Idle cost against open sessions",
    )
    _lines(
        rows,
        out,
        "tools-call",
        ["calls/s"],
        "concurrent clients",
        "tools/call throughput against concurrency",
    )
    _lines(
        rows,
        out,
        "proxy",
        ["calls/s", "p99"],
        "concurrent sessions",
        "tools/call through a proxy in front of the SDK server",
    )
