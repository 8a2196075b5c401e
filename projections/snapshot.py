"""Snapshots of the registry projection: its state, msgpack-encoded, at a position.

``restore(snapshot)`` and then applying the records after ``snapshot.position``
gives the same state as folding the whole log, so a worker starts from the newest
snapshot instead of from position 1.
"""

from __future__ import annotations

import msgspec

from .registry import RegistryProjection, RegistryState

__all__ = [
    "SNAPSHOT_NAME",
    "decode_snapshot",
    "encode_snapshot",
    "restore",
]

# A new layout of RegistryState gets a new name, so old snapshots are ignored
# (and rebuilt from the log) instead of misread.
SNAPSHOT_NAME = "registry-v3"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RegistryState)


def encode_snapshot(projection: RegistryProjection) -> bytes:
    return _encoder.encode(projection.state)


def decode_snapshot(data: bytes) -> RegistryState:
    return _decoder.decode(data)


def restore(data: bytes, **options: float) -> RegistryProjection:
    """The projection a snapshot holds; ``options`` are the projection's own (its
    retention window), which a snapshot does not carry."""
    return RegistryProjection(decode_snapshot(data), **options)
