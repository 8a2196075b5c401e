"""Virtualenvs for software we measure or test against but do not depend on (the
reference registry, mcp-persist): each in a directory of its own, made on first use
and kept, so its pins never meet ours. This module owns making and reusing them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["VenvError", "cache_dir", "ensure_venv"]

PIP_TIMEOUT = 1800.0  # seconds for one pip install
FINISHED = "sessionlog-finished"  # a file in a virtualenv whose install completed


class VenvError(RuntimeError):
    """Making a virtualenv failed; the message says which step, and pip's output."""


def cache_dir() -> Path:
    """Where virtualenvs shared by the tests and the bench live, outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sessionlog-venvs"


def _pip_index_options() -> list[str]:
    """This interpreter's pip index options, passed on explicitly so the virtualenv's
    pip reads the same (local) indexes whatever configuration it finds."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    options: list[str] = []
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name not in ("index-url", "extra-index-url", "find-links"):
            continue
        for item in value.strip().strip("'\"").split():
            if item and f"--{name}={item}" not in options:
                options.append(f"--{name}={item}")
    return options


def _works(python: Path, probe: str) -> bool:
    if not (python.parent.parent / FINISHED).exists():
        return False
    result = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=300)
    return result.returncode == 0


def ensure_venv(
    directory: Path, requirements: list[str], probe: str, *, pip_args: tuple[str, ...] = ()
) -> Path:
    """The Python of a virtualenv in ``directory`` with ``requirements`` installed,
    made unless it was finished before and ``probe`` (Python code) runs there."""
    python = directory / "bin" / "python"
    if _works(python, probe):
        return python
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(directory)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--progress-bar=off",
            "--disable-pip-version-check",
            *pip_args,
            *_pip_index_options(),
            *requirements,
        ],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=PIP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise VenvError(f"no end in {PIP_TIMEOUT:.0f} s: {' '.join(step)}") from None
        if done.returncode != 0:
            raise VenvError(
                f"exit {done.returncode}: {' '.join(step)}\n{done.stdout[-4000:]}{done.stderr}"
            )
    # Written last, so an interrupted install is made again rather than trusted.
    (directory / FINISHED).write_text(" ".join(requirements) + "\n")
    if not _works(python, probe):
        raise VenvError(f"{directory} was made, but this fails there: {probe}")
    return python
