"""The hash chain every record carries: tamper evidence for the log.

Each record's link is a hash of the previous record's link and of the record
itself, computed inside the serialized append (the transaction, PL/pgSQL function
or Lua script that assigns positions), so the log's order is what is chained::

    link(p) = H( hex(link(p - 1)) || be64(position) || be_double(at)
                 || be32(len(worker)) || worker || data )

with ``link(0)`` the empty string. The previous link enters as lowercase hex ASCII
because Redis's Lua scripts get hashes as hex only (``redis.sha1hex``), and
converting there per record would cost more than the hash. ``H`` is SHA-256 on
SQLite, PostgreSQL and memory logs; Redis scripts have no SHA-256, so a Redis log
chains with SHA-1 (its algorithm travels with every manifest and digest). Changing a
byte, deleting or reordering records breaks the chain at the first record touched;
rewriting every later link instead is caught by a digest kept elsewhere: the
Certificate Transparency model, where an auditor keeps a signed tree head.

A record written before chains existed has no link (``None``); the chain starts
again from the empty link after it, and :func:`verify_rows` reports the gap.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

import msgspec

__all__ = [
    "GENESIS",
    "ChainBreak",
    "ChainedRow",
    "Digest",
    "HashName",
    "Walk",
    "link",
    "linker",
]

HashName = Literal["sha256", "sha1"]
GENESIS = b""  # the link before position 1

_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
}
_HEAD = struct.Struct(">qdI")


class ChainedRow(NamedTuple):
    """A record as stored, with its link (None: written before chains existed). A
    backend may return plain tuples of this shape (read by index or unpacked): a
    verify walks millions, and building an object a row costs as much as the walk."""

    position: int
    at: float
    worker: str
    data: bytes
    chain: bytes | None


def linker(hash_name: str) -> Callable[[bytes, int, float, str, bytes], bytes]:
    """The link function of ``hash_name``: (previous, position, at, worker, data) -> link."""
    try:
        new = _HASHES[hash_name]
    except KeyError:
        raise ValueError(f"unknown chain hash {hash_name!r}") from None
    pack, join = _HEAD.pack, b"".join

    def link_with(previous: bytes, position: int, at: float, worker: str, data: bytes) -> bytes:
        name = worker.encode()
        return new(
            join((previous.hex().encode(), pack(position, at, len(name)), name, data))
        ).digest()

    return link_with


def link(
    hash_name: str, previous: bytes, position: int, at: float, worker: str, data: bytes
) -> bytes:
    return linker(hash_name)(previous, position, at, worker, data)


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    """What an auditor keeps: the link at a position. A later verify that reaches the
    same link at that position proves every record up to it unchanged."""

    position: int
    chain: str  # hex
    hash: str  # the algorithm, as the log chains


class ChainBreak(msgspec.Struct, frozen=True, kw_only=True):
    """The first place a walk found the log not as it was written."""

    position: int  # the record at which the break shows
    where: str  # "hot log", "archive segment 1-5000", ...
    reason: str  # e.g. "changed: its link does not match", "missing", "out of order"


class Walk:
    """Walks rows in order, recomputing links; remembers the first break.

    Feed it pages with :meth:`feed`; it expects position ``expected`` next, chained
    from ``previous``. Rows written before chains (link None) are counted, not
    checked, and restart the chain after them.
    """

    def __init__(self, hash_name: str, *, expected: int = 1, previous: bytes = GENESIS) -> None:
        self.hash_name = hash_name
        self.expected = expected  # the position the next row must have
        self.previous = previous  # the link of the row before it
        self.checked = 0
        self.unchained = 0
        self.broken: ChainBreak | None = None
        self._link = linker(hash_name)

    def feed(self, rows: Iterable[ChainedRow | tuple], where: str) -> bool:
        """Check ``rows``; False once broken (the rest is not looked at)."""
        if self.broken is not None:
            return False
        link_with = self._link
        expected, previous = self.expected, self.previous
        checked = 0
        for position, at, worker, data, chain in rows:
            if position != expected:
                if position > expected:
                    reason = f"missing: expected {expected}, found {position}"
                    at_position = expected
                else:
                    reason = f"out of order: {position} after {expected - 1}"
                    at_position = position
                self.broken = ChainBreak(position=at_position, where=where, reason=reason)
                break
            if chain is None:
                self.unchained += 1
                previous = GENESIS
            else:
                computed = link_with(previous, position, at, worker, data)
                if computed != chain:
                    self.broken = ChainBreak(
                        position=position,
                        where=where,
                        reason="changed: its link does not match its contents and the "
                        "link before it",
                    )
                    break
                previous = chain
                checked += 1
            expected += 1
        self.expected, self.previous = expected, previous
        self.checked += checked
        return self.broken is None

    def anchor(self, position: int, chain: bytes, where: str) -> bool:
        """Check that the walk reached ``position`` with link ``chain`` (a manifest's
        or the hot log's record of the link before its first record)."""
        if self.broken is None and (self.expected - 1 != position or self.previous != chain):
            self.broken = ChainBreak(
                position=position + 1,
                where=where,
                reason=f"the link recorded before position {position + 1} is not the "
                "link of the records before it",
            )
        return self.broken is None

    def digest(self) -> Digest:
        return Digest(position=self.expected - 1, chain=self.previous.hex(), hash=self.hash_name)
