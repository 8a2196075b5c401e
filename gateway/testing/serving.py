"""`sessionlog serve` in a separate process, on a free port, for HTTP tests and the
bench: this module owns starting it, waiting until it accepts, and stopping it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .servers import accepts, free_port, stop_process, wait_until

__all__ = ["Served", "free_port", "serve", "serve_process"]


@dataclass
class Served:
    url: str  # base URL, without a path
    process: subprocess.Popen[bytes]


@contextmanager
def serve_process(
    log_url: str,
    *args: str,
    env: dict[str, str] | None = None,
    output: Path | None = None,
    profile: Path | None = None,
) -> Iterator[Served]:
    """Run ``sessionlog serve --log log_url *args``, its output to ``output`` if given;
    stop it with SIGTERM at the end (if the test did not kill it). With ``profile``,
    it runs under cProfile, which writes its statistics there as it stops (one
    worker: a --workers supervisor's children are not profiled)."""
    port = free_port()
    sink = output.open("wb") if output is not None else subprocess.DEVNULL
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    serve = ["-m", "gateway", "serve", "--port", str(port), "--log", log_url]
    process = subprocess.Popen(
        [sys.executable, *profiler, *serve, *args],
        stdout=sink,
        stderr=sink,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    if output is not None:
        sink.close()  # type: ignore[union-attr]  # the child has its own copy
    try:
        wait_until(lambda: accepts(port), "sessionlog serve", process, output)
        yield Served(f"http://127.0.0.1:{port}", process)
    finally:
        stop_process(process)


@contextmanager
def serve(log_url: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Like :func:`serve_process`; yields the base URL."""
    with serve_process(log_url, *args, env=env) as served:
        yield served.url
