"""The benchmarks run, at small sizes, and write their results (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("name", ["eventlog", "registry"])
def test_benchmark_runs_and_writes_results(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["cores"] >= 1
    if name == "eventlog":
        backends = {r["backend"] for r in report["results"]}
        assert backends == {"memory", "sqlite", "postgresql", "redis"}
        assert all(r["events"] > 0 and r["per_second"] > 0 for r in report["results"])
    else:
        assert {r["backend"] for r in report["latency"]} == {"sqlite", "postgresql", "redis"}
        assert all(r["messages"] > 0 for r in report["latency"])
        assert {r["backend"] for r in report["idle"]} == {"sqlite", "postgresql", "redis"}
        assert report["replay"]["records"] >= 20_000
