"""Walking archive and hot log as one chain: ``sessionlog verify``.

The walk checks every archived segment against its manifest (its bytes' digest, the
link before it and its last link), every record's link, that positions follow one
another with none missing, and that the hot log's record of the link before its
start is the archive's last link. Given a digest an auditor kept, it also checks
that the walk reaches the same link at that position: a log rewritten with fresh
links from some record on (which no single check can catch) does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec

from .archive import Archive, ArchiveError, decode_segment
from .base import EventLog
from .chain import ChainBreak, Digest, Walk

__all__ = ["Verification", "verify"]

PAGE = 20_000  # hot-log rows read at a time


class Verification(msgspec.Struct, kw_only=True):
    """What a walk found."""

    checked: int  # records whose links were recomputed
    unchained: int  # records written before chains existed (counted, not checked)
    archived: int  # records read from archive segments
    first: int  # the first position walked (1 unless the archive was not walked)
    digest: Digest  # the link at the last position walked
    broken: ChainBreak | None = None
    expected: Digest | None = None  # the digest checked against, if any
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.broken is None


async def verify(
    log: EventLog,
    *,
    archive: Archive | None = None,
    expect: Digest | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verification:
    """Walk ``archive`` (the log's own unless given) and ``log``'s hot log as one
    chain; stop at the first break. ``progress`` is told of each position reached."""
    began = time.perf_counter()
    archive = archive if archive is not None else log.archive
    start, anchor = await log.start_anchor()
    walk = Walk(log.hash_name)
    archived = 0
    if expect is not None and expect.hash != log.hash_name:
        walk.broken = ChainBreak(
            position=expect.position,
            where="digest",
            reason=f"the digest is of a {expect.hash} chain; this log chains with {log.hash_name}",
        )
    if archive is None or start == 1:
        walk.expected, walk.previous = start, anchor  # nothing archived to walk (or no archive)
    else:
        for manifest in await archive.manifests():
            if manifest.first >= start or walk.broken is not None:
                continue  # leftovers of a move killed before its trim: not archived
            where = f"archive segment {manifest.name}"
            if not walk.anchor(manifest.first - 1, bytes.fromhex(manifest.previous), where):
                break
            blob = await archive.read(manifest)
            try:
                rows = decode_segment(manifest, blob)
            except ArchiveError:
                # Its bytes changed: still say which record, where they decode.
                try:
                    rows = decode_segment(manifest, blob, check_digest=False)
                except ArchiveError:
                    rows = []
                if _walk_to(walk, rows, where, expect) and walk.broken is None:
                    walk.broken = ChainBreak(
                        position=manifest.first,
                        where=where,
                        reason="changed: its bytes do not match its manifest's digest",
                    )
                break
            if not _walk_to(walk, rows, where, expect):
                break
            archived += len(rows)
            if not walk.anchor(manifest.last, bytes.fromhex(manifest.chain), where):
                break
            if progress is not None:
                progress(manifest.last)
        walk.anchor(start - 1, anchor, "hot log start")
    first = 1 if archive is not None else start
    after = start - 1
    # The next page is read while this one is walked: the server's work overlaps ours.
    reading = asyncio.ensure_future(log.read_chained(after, PAGE))
    try:
        while walk.broken is None:
            rows = await reading
            if not rows:
                break
            after = rows[-1][0]
            reading = asyncio.ensure_future(log.read_chained(after, PAGE))
            if not _walk_to(walk, rows, "hot log", expect):
                break
            if progress is not None:
                progress(after)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading
    if expect is not None and walk.broken is None and walk.expected - 1 < expect.position:
        walk.broken = ChainBreak(
            position=walk.expected,
            where="digest",
            reason=f"the log ends at {walk.expected - 1}, before the digest's position "
            f"{expect.position}: records were removed",
        )
    return Verification(
        checked=walk.checked,
        unchained=walk.unchained,
        archived=archived,
        first=first if start > 1 else 1,
        digest=walk.digest(),
        broken=walk.broken,
        expected=expect,
        seconds=time.perf_counter() - began,
    )


def _walk_to(walk: Walk, rows: list, where: str, expect: Digest | None) -> bool:
    """Feed ``rows``, checking the link at ``expect``'s position on the way past it."""
    if expect is not None and rows and rows[0][0] <= expect.position <= rows[-1][0]:
        cut = expect.position - rows[0][0] + 1
        if not walk.feed(rows[:cut], where):
            return False
        if walk.expected - 1 == expect.position and walk.previous.hex() != expect.chain:
            walk.broken = ChainBreak(
                position=expect.position,
                where=where,
                reason="the link here is not the digest's: the log up to here was rewritten",
            )
            return False
        rows = rows[cut:]
    return walk.feed(rows, where)
