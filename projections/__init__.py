"""projections: pure folds of the log into state, and snapshots of that state."""

from .audit import Selection
from .registry import (
    CLOSED_RETENTION,
    SERVER_HISTORY,
    ClosedSession,
    PendingMessage,
    RegistryProjection,
    RegistryState,
    SentMessage,
    SentRef,
    SessionState,
    WorkerState,
)
from .snapshot import SNAPSHOT_NAME, decode_snapshot, encode_snapshot, restore

__all__ = [
    "CLOSED_RETENTION",
    "SERVER_HISTORY",
    "SNAPSHOT_NAME",
    "ClosedSession",
    "PendingMessage",
    "RegistryProjection",
    "RegistryState",
    "Selection",
    "SentMessage",
    "SentRef",
    "SessionState",
    "WorkerState",
    "decode_snapshot",
    "encode_snapshot",
    "restore",
]
