"""projections: pure folds of the log into state, and snapshots of that state."""

from .audit import Selection
from .registry import (
    SERVER_HISTORY,
    PendingMessage,
    RegistryProjection,
    RegistryState,
    SentMessage,
    SessionState,
    WorkerState,
)
from .snapshot import SNAPSHOT_NAME, decode_snapshot, encode_snapshot, restore

__all__ = [
    "SERVER_HISTORY",
    "SNAPSHOT_NAME",
    "PendingMessage",
    "RegistryProjection",
    "RegistryState",
    "Selection",
    "SentMessage",
    "SessionState",
    "WorkerState",
    "decode_snapshot",
    "encode_snapshot",
    "restore",
]
