"""Snapshots of the registry projection: its state, msgpack-encoded, at a position.

``restore(snapshot)`` and then applying the records after ``snapshot.position``
gives the same state as folding the whole log, so a worker starts from the newest
snapshot instead of from position 1.
"""

from __future__ import annotations

import msgspec

from eventlog import EventLog

from .audit import pages
from .registry import RegistryProjection, RegistryState

__all__ = [
    "SNAPSHOT_EVERY",
    "SNAPSHOT_NAME",
    "catch_up",
    "decode_snapshot",
    "encode_snapshot",
    "load_latest",
    "restore",
]

# A new layout of RegistryState gets a new name, so old snapshots are ignored
# (and rebuilt from the log) instead of misread.
SNAPSHOT_NAME = "registry-v1"
SNAPSHOT_EVERY = 10_000  # records between snapshots

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RegistryState)


def encode_snapshot(projection: RegistryProjection) -> bytes:
    return _encoder.encode(projection.state)


def decode_snapshot(data: bytes) -> RegistryState:
    return _decoder.decode(data)


def restore(data: bytes) -> RegistryProjection:
    return RegistryProjection(decode_snapshot(data))


async def load_latest(log: EventLog) -> RegistryProjection:
    """The projection from the newest readable snapshot in ``log``, or an empty one."""
    stored = await log.load_snapshot(SNAPSHOT_NAME)
    if stored is not None:
        try:
            return restore(stored)
        except msgspec.DecodeError:
            pass  # unreadable: fold from the start, and the next save replaces it
    return RegistryProjection()


async def catch_up(log: EventLog, projection: RegistryProjection, until: int | None = None) -> int:
    """Apply every record after ``projection.position`` up to ``until`` (default: the head).

    Returns the number of records newly applied.
    """
    applied = 0
    apply = projection.apply
    async for page, reached in pages(log, projection.position, until):
        for record in page:
            applied += apply(record)
        projection.advance(reached)
    return applied
