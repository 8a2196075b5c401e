"""`python -m bench --quick` runs every scenario of ours at small sizes and writes its
results, the summary and the plots (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SCENARIOS, SLOW_BASELINES

# Guards against hangs only; the quick run takes about eight minutes on 2 cores.
QUICK_GUARD = 1800


@pytest.mark.timeout(QUICK_GUARD)
def test_quick_run_writes_every_scenario_summary_and_plots(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=QUICK_GUARD,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = set(SCENARIOS) - SLOW_BASELINES
    for name in ours:
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["quick"] is True and report["machine"]["cores"] >= 1
        assert report["rows"], f"{name} measured nothing"
    summary = json.loads((tmp_path / "summary.json").read_text())
    measured = {(row["scenario"], row["backend"]) for row in summary}
    for backend in ("memory", "sqlite", "postgresql", "redis"):
        assert ("append", backend) in measured
    for scenario in ("delivery", "idle", "sustained"):
        for backend in ("sqlite", "postgresql", "redis"):
            assert (scenario, backend) in measured
    assert {"replay", "tools-call", "proxy", "proxy-faults"} <= {s for s, _ in measured}
    # Measured here: ours only. The conformance rows come from the test run's results.
    ours_measured = [row for row in summary if row["scenario"] != "conformance"]
    assert all(row["system"] == "sessionlog" for row in ours_measured)
    # Growth (the retention soak's) may be negative: memory given back.
    assert all(row["value"] >= 0 for row in ours_measured if "growth" not in row["metric"])
    for plot in ("delivery.png", "idle.png", "tools-call.png", "proxy.png"):
        assert (tmp_path / plot).stat().st_size > 0
    assert "| backend | parameter | metric | sessionlog |" in result.stdout
    assert "| case | sessionlog, sqlite |" in result.stdout  # the failure cases
    # Faults under load: every case measured, nothing acknowledged left unanswered.
    assert "| backend | fault |" in result.stdout
    faults = [r for r in summary if r["scenario"] == "faults"]
    lost = [r for r in faults if r["metric"].startswith("unanswered")]
    assert len(lost) == 13 and all(r["value"] == 0 for r in lost), lost  # 8 cases, 3 rollbacks
    for backend in ("sqlite", "postgresql", "redis"):
        assert ("verify", backend) in measured
    # The retention soak: each backend with retention and without, its plot and table.
    soak = {
        (r["backend"], r["parameter"].split(", ")[-1])
        for r in summary
        if r["scenario"] == "retention"
    }
    for backend in ("sqlite", "postgresql", "redis"):
        assert {(backend, "retain 2s"), (backend, "retain off")} <= soak
    assert (tmp_path / "retention.png").stat().st_size > 0
    assert "| backend (measure) | run |" in result.stdout
