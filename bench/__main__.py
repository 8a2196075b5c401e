"""Every benchmark, side by side with its baselines, in one run.

    python -m bench [--quick] [--only NAME ...] [--out DIR]

Starts a PostgreSQL and a Redis-protocol server (the same wheels as the tests) on
loopback, runs each scenario, and writes ``DIR/<scenario>.json`` (raw numbers,
machine, versions, parameters), ``DIR/summary.json`` (one tidy row per number) and
plots. A full run into the default directory also rewrites the README's tables.
``--quick`` runs every scenario of ours at small sizes (baselines skipped) as a
smoke test; it writes into a temporary directory unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from . import (
    eventlog,
    faults,
    gateway,
    memory,
    plots,
    profiles,
    proxy,
    readme,
    registry,
    retention,
    verify,
)
from .harness import Row, ScenarioResult, backends, report

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Context:
    quick: bool
    workdir: Path
    urls: dict[str, str]  # backend -> log URL, with NS to replace by a namespace
    out: Path  # where results go


def _contextforge(ctx: Context) -> ScenarioResult:
    from . import contextforge  # its own virtualenv; only when asked for

    redis = ctx.urls["redis"].split("?", 1)[0]
    return contextforge.run(ctx.quick, {"redis": redis}, ctx.workdir)


def _tools_call(ctx: Context) -> ScenarioResult:
    result = gateway.scenario(ctx.quick, ctx.workdir)
    written = profiles.write_profiles(ctx.workdir, ctx.out, 1.0 if ctx.quick else 5.0)
    result.raw["profiles"] = [path.name for path in written]
    return result


SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    "eventlog": lambda ctx: eventlog.scenario(ctx.quick, ctx.urls),
    "delivery": lambda ctx: registry.delivery_scenario(ctx.quick, ctx.urls),
    "idle": lambda ctx: registry.idle_scenario(ctx.quick, ctx.urls),
    "sustained": lambda ctx: registry.sustained_scenario(ctx.quick, ctx.urls),
    "replay": lambda ctx: registry.replay_scenario(ctx.quick, ctx.workdir),
    "tools-call": _tools_call,
    "proxy": lambda ctx: proxy.scenario(ctx.quick, ctx.urls, ctx.workdir),
    "memory": lambda ctx: memory.scenario(ctx.quick, ctx.workdir),
    "faults": lambda ctx: faults.scenario(ctx.quick, ctx.workdir),
    "verify": lambda ctx: verify.scenario(ctx.quick, ctx.urls, ctx.workdir),
    "retention": lambda ctx: retention.scenario(ctx.quick, ctx.urls, ctx.workdir, ctx.out),
    "contextforge": _contextforge,
}
# Baselines that take minutes to set up: not part of --quick.
SLOW_BASELINES = {"contextforge"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, baselines skipped")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only these: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--out", type=Path, help=f"results directory (default {RESULTS})")
    return parser.parse_args(argv)


def _summary(out: Path) -> list[Row]:
    """Every row of the newest results file of each scenario in ``out``."""
    rows: list[Row] = []
    for name in SCENARIOS:
        path = out / f"{name}.json"
        if path.exists():
            rows += msgspec.json.decode(path.read_bytes(), type=_Rows).rows
    return rows


class _Rows(msgspec.Struct):
    rows: list[Row]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or [n for n in SCENARIOS if not (args.quick and n in SLOW_BASELINES)]
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as directory, backends(Path(directory)) as urls:
        ctx = Context(args.quick, Path(directory), urls, out)
        for name in names:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                result = SCENARIOS[name](ctx)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            seconds = time.monotonic() - started
            print(f"bench: {name} done in {seconds:.0f} s", file=sys.stderr, flush=True)
            path = out / f"{name}.json"
            report(path, args.quick, run_seconds=seconds, rows=result.rows, **result.raw)
    rows = _summary(out)
    (out / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(rows)))
    plots.draw(rows, out)
    if out == RESULTS and not args.quick:
        readme.write(rows)
    print(readme.render(rows))
    print(f"bench: results in {out}", file=sys.stderr)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
