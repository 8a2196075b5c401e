"""Where the gateway's time goes on the hot path: a CPU profile of one worker under
the tools/call load, written beside the results so a regression shows where.

Each case runs ``sessionlog serve`` (one worker, SQLite log) under cProfile, drives
it with one client calling ``echo`` back to back over Streamable HTTP for a few
seconds (the load generator of bench/gateway.py), stops it, and writes the top
frames by own time and by cumulative time to ``profile-<case>.txt``. A profiled
run is slower than a measured one: these files say where, not how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import pstats
import secrets
from collections.abc import Iterator
from pathlib import Path

from gateway.testing.sdk_server import sdk_server
from gateway.testing.serving import serve_process

from .gateway import drive

__all__ = ["CASES", "write_profiles"]

TOP = 30  # frames listed per ordering
CASES = {
    "built-in": "the built-in echo",
    "upstream": "echo on the SDK server behind --upstream",
}


@contextlib.contextmanager
def _upstream(case: str) -> Iterator[tuple[str, ...]]:
    if case != "upstream":
        yield ()
        return
    with sdk_server() as (_, url):
        yield ("--upstream", url)


def _summary(stats_file: Path, title: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(stats_file), stream=out)
    stats.strip_dirs()
    out.write(f"{title}\n\n-- by own time --\n")
    stats.sort_stats("tottime").print_stats(TOP)
    out.write("\n-- by cumulative time --\n")
    stats.sort_stats("cumulative").print_stats(TOP)
    return out.getvalue()


def write_profiles(workdir: Path, out: Path, seconds: float) -> list[Path]:
    """Profile every case; the summary files written."""
    written = []
    for case, what in CASES.items():
        stats_file = workdir / f"profile-{case}-{secrets.token_hex(4)}.prof"
        log = f"sqlite:///{workdir}/profile-{case}-{secrets.token_hex(4)}.db"
        with _upstream(case) as upstream:
            with serve_process(log, *upstream, profile=stats_file) as served:
                calls = asyncio.run(drive(f"{served.url}/mcp", "streamable-http", 1, seconds))
        title = (
            f"sessionlog serve, one worker, SQLite log; {what}; 1 client calling echo over "
            f"Streamable HTTP (SSE responses) for {seconds:.0f} s: {len(calls)} calls"
        )
        path = out / f"profile-{case}.txt"
        path.write_text(_summary(stats_file, title))
        written.append(path)
    return written
