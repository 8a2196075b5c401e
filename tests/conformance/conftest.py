from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .scoreboard import Scoreboard, run_all, write_results
from .suite import SetupError, Toolchain, install_toolchain
from .targets import TARGETS, declared, start_targets

# Set to 1 to write the scores to bench/results/conformance.json (for the README).
WRITE_RESULTS = "SESSIONLOG_WRITE_CONFORMANCE"


@pytest.fixture(scope="session")
def conformance_toolchain() -> Toolchain:
    """Node 22 and both suites, installed from npm on the first run, then cached."""
    try:
        return install_toolchain()
    except SetupError as error:
        failure = str(error)
    pytest.fail(f"setting up the MCP conformance suite failed: {failure}", pytrace=False)


@pytest.fixture(scope="session")
def conformance_scoreboard(
    request: pytest.FixtureRequest,
    conformance_toolchain: Toolchain,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scoreboard]:
    """The suites' results for every (target, suite) the collected tests ask about
    (and the upstreams they are compared with), run once, concurrently."""
    from .test_conformance import SCENARIOS, applies

    pairs = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "target" in params and "suite" in params:
            upstream = TARGETS[params["target"]].upstream
            pairs |= {(params["target"], params["suite"])}
            pairs |= {(upstream, params["suite"])} if upstream else set()
    directory = tmp_path_factory.mktemp("conformance")
    with start_targets({t for t, _ in pairs}, conformance_toolchain, directory) as urls:
        board = run_all(conformance_toolchain, urls, pairs, SCENARIOS, directory)
        if "sessionlog" in urls:
            board.declared = declared(urls["sessionlog"])
    if os.environ.get(WRITE_RESULTS) == "1":
        verdicts = {
            (target, suite, scenario): applies(board, target, scenario)
            for target, suite in board.results
            for scenario in board.results[(target, suite)]
        }
        write_results(board, verdicts)
    yield board
