"""projections: pure folds of the log into state, snapshots of that state, audit queries."""

from .audit import Selection, records, select, state_at, timeline
from .registry import (
    SERVER_HISTORY,
    PendingMessage,
    RegistryProjection,
    RegistryState,
    SentMessage,
    SessionState,
    WorkerState,
)
from .snapshot import (
    SNAPSHOT_EVERY,
    SNAPSHOT_NAME,
    catch_up,
    decode_snapshot,
    encode_snapshot,
    load_latest,
    restore,
)

__all__ = [
    "SERVER_HISTORY",
    "SNAPSHOT_EVERY",
    "SNAPSHOT_NAME",
    "PendingMessage",
    "RegistryProjection",
    "RegistryState",
    "Selection",
    "SentMessage",
    "SessionState",
    "WorkerState",
    "catch_up",
    "decode_snapshot",
    "encode_snapshot",
    "load_latest",
    "records",
    "restore",
    "select",
    "state_at",
    "timeline",
]
