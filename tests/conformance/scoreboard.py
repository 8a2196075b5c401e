"""Every (target, suite) run of the conformance suite, concurrently, into one
scoreboard; and the scoreboard as ``bench/results/conformance.json``."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .suite import SUITES, ScenarioResult, Toolchain, run_suite
from .targets import TARGETS, Declared

__all__ = ["REPEATS", "SERVER_TO_CLIENT", "Scoreboard", "run_all", "write_results"]

RESULTS = Path(__file__).parents[2] / "bench" / "results" / "conformance.json"

# Scenarios in which the server sends the client requests (sampling, elicitation,
# roots), in-band or on an SSE stream: their outcome through the gateway once
# depended on timing, so each runs this many times and passes only if every run does.
REPEATS = 5
SERVER_TO_CLIENT = {
    "tools-call-sampling",
    "tools-call-elicitation",
    "elicitation-sep1034-defaults",
    "elicitation-sep1330-enums",
    "input-required-result-basic-elicitation",
    "input-required-result-basic-sampling",
    "input-required-result-basic-list-roots",
    "input-required-result-multiple-input-requests",
}
CONCURRENT_RUNS = 4  # suite processes at once; the servers share the 2 cores with them


@dataclass
class Scoreboard:
    results: dict[tuple[str, str], dict[str, ScenarioResult]] = field(default_factory=dict)
    consoles: dict[tuple[str, str], str] = field(default_factory=dict)  # the first run's
    declared: Declared | None = None  # by the plain gateway

    def result(self, target: str, suite: str, scenario: str) -> ScenarioResult:
        runs = self.results[(target, suite)]
        if scenario not in runs:
            console = self.consoles[(target, suite)][-3000:]
            broken = ScenarioResult(scenario)
            broken.add_broken_run(f"the suite reported nothing for it; its output ends:\n{console}")
            return broken
        return runs[scenario]


def _run_target(
    toolchain: Toolchain, target: str, suite_name: str, url: str, scenarios: list[str], out: Path
) -> tuple[dict[str, ScenarioResult], str]:
    suite = SUITES[suite_name]
    checks, console = run_suite(toolchain, suite, url, out / "all")
    results = {scenario: ScenarioResult(scenario) for scenario in scenarios}
    for scenario, result in results.items():
        if scenario in checks:
            result.add_run(checks[scenario])
        else:
            result.add_broken_run(f"the suite could not run it:\n{console[-2000:]}")
    for scenario in sorted(SERVER_TO_CLIENT & set(scenarios)):
        for repeat in range(2, REPEATS + 1):
            again, again_console = run_suite(
                toolchain, suite, url, out / f"{scenario}-{repeat}", scenario
            )
            if scenario in again:
                results[scenario].add_run(again[scenario])
            else:
                results[scenario].add_broken_run(f"run {repeat}:\n{again_console[-2000:]}")
    return results, console


def run_all(
    toolchain: Toolchain,
    urls: dict[str, str],
    pairs: set[tuple[str, str]],
    scenarios: dict[str, list[str]],
    out: Path,
) -> Scoreboard:
    """Run each (target, suite) of ``pairs``, CONCURRENT_RUNS at a time."""
    board = Scoreboard()
    with ThreadPoolExecutor(CONCURRENT_RUNS) as pool:
        futures = {
            (target, suite): pool.submit(
                _run_target,
                toolchain,
                target,
                suite,
                urls[target],
                scenarios[suite],
                out / f"{target}-{suite}",
            )
            for target, suite in sorted(pairs)
        }
        for pair, future in futures.items():
            board.results[pair], board.consoles[pair] = future.result()
    return board


def write_results(board: Scoreboard, applies: dict[tuple[str, str, str], bool]) -> None:
    """Merge this run's results into bench/results/conformance.json."""
    report = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    report["suites"] = {
        name: {"package": suite.package, "args": list(suite.args)} for name, suite in SUITES.items()
    }
    report["targets"] = {
        name: {
            "label": target.label,
            "upstream": target.upstream,
            "gateway": target.gateway,
            "proxy": target.proxy,
            "backend": target.backend,
        }
        for name, target in TARGETS.items()
    }
    report["repeats"] = {"scenarios": sorted(SERVER_TO_CLIENT), "runs": REPEATS}
    kept = [
        row
        for row in report.get("results", [])
        if (row["target"], row["suite"]) not in board.results
    ]
    for (target, suite), results in sorted(board.results.items()):
        for scenario, result in results.items():
            kept.append(
                {
                    "target": target,
                    "suite": suite,
                    "scenario": scenario,
                    "applies": applies.get((target, suite, scenario), True),
                    "outcome": result.outcome(),
                    "passed": result.passed,
                    "runs": result.runs,
                    "passed_runs": result.passed_runs,
                    "checks_passed": result.checks_passed,
                    "checks_total": result.checks_total,
                    "failures": [line[:300] for line in result.failures[:5]],
                }
            )
    report["results"] = kept
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
