"""``sessionlog verify``: walk archive and hot log as one chain and say whether it holds.

Prints the records checked and how fast, then ``ok`` (with ``--digest``, the digest
as one JSON line for an auditor to keep) or the first break in one line. Given a
digest kept before (``--expect``), it also proves the log up to that position is
the one the digest was taken of. Exit status: 0 ok, 1 broken, 2 bad input.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec

from eventlog import EventLogError
from eventlog.archive import ArchiveError, directory_archive
from eventlog.chain import Digest
from eventlog.verify import Verification, verify

from .replay import ReplayError, open_read_only, progress_bar

__all__ = ["parse_digest", "run"]

MAX_DIGEST_FILE = 4096  # bytes: a digest line is ~120


class BadInput(Exception):
    """A problem with what was asked: exit status 2."""


def parse_digest(text: str) -> Digest:
    """``--expect``: the JSON line ``--digest`` printed, or a file holding it."""
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise BadInput(f"--expect {text[:60]!r} is neither a digest's JSON nor a file")
        if path.stat().st_size > MAX_DIGEST_FILE:
            raise BadInput(f"--expect {text!r}: too large for a digest")
        text = path.read_text(errors="replace")
    try:
        digest = msgspec.json.decode(text.strip(), type=Digest)
    except msgspec.DecodeError as exc:
        raise BadInput(f"--expect: not a digest ({exc})") from None
    try:
        bytes.fromhex(digest.chain)
    except ValueError:
        raise BadInput("--expect: its chain is not hex") from None
    if digest.position < 1:
        raise BadInput("--expect: its position must be at least 1")
    return digest


def report(verification: Verification) -> list[str]:
    """The lines verify prints."""
    seconds = verification.seconds
    walked = verification.checked + verification.unchained
    rate = walked / seconds if seconds > 0 else 0.0
    lines = [
        f"checked {verification.checked} records ({verification.archived} archived, "
        f"{verification.unchained} written before chains) from position "
        f"{verification.first} in {seconds:.2f} s: {rate:,.0f} records/s"
    ]
    broken = verification.broken
    if broken is not None:
        lines.append(f"broken at position {broken.position} in {broken.where}: {broken.reason}")
    else:
        digest = verification.digest
        proved = (
            f"; the digest at {verification.expected.position} matches"
            if verification.expected is not None
            else ""
        )
        lines.append(f"ok up to position {digest.position}{proved}")
    return lines


async def _verify(args: Any) -> int:
    expect = parse_digest(args.expect) if args.expect is not None else None
    try:
        archive = directory_archive(args.archive, None) if args.archive is not None else None
        log = await open_read_only(args.log)
    except (EventLogError, ReplayError) as exc:
        raise BadInput(str(exc)) from exc
    try:
        head = await log.head()
        with progress_bar(head) as progress:
            verification = await verify(log, archive=archive, expect=expect, progress=progress)
    finally:
        await log.close()
    for line in report(verification):
        print(line)
    if args.digest and verification.ok:
        print(msgspec.json.encode(verification.digest).decode())
    return 0 if verification.ok else 1


def run(args: Any) -> int:
    """The ``verify`` subcommand."""
    try:
        return asyncio.run(_verify(args))
    except ArchiveError as exc:  # a segment that cannot be read: not a log that holds
        print(f"sessionlog verify: broken: {exc}", file=sys.stderr)
        return 1
    except (BadInput, EventLogError, OSError) as exc:  # or the log went away meanwhile
        print(f"sessionlog verify: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
