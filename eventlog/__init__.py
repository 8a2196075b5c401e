"""eventlog: one ordered, durable log of msgspec-encoded session events."""

from ._urls import redact as redact_url
from .base import EventLog, LogStats
from .codec import Record, decode_event, encode_event
from .errors import CodecError, EventLogError, LogRolledBack, LogUnavailable, UnsupportedURL
from .events import (
    BaseEvent,
    CapabilitiesRecorded,
    ChangePublished,
    ClientMessage,
    CloseReason,
    Event,
    MessageHandled,
    OwnerClaimed,
    OwnerReleased,
    Role,
    ServerMessage,
    SessionClosed,
    SessionOpened,
    StatelessAnswer,
    StatelessRequest,
    UpstreamSessionOpened,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
    derived_event_id,
    new_event_id,
)
from .factory import open_log
from .memory import MemoryEventLog
from .postgres import PostgresEventLog
from .redis_streams import RedisEventLog
from .sqlite import SQLiteEventLog

__all__ = [
    "BaseEvent",
    "CapabilitiesRecorded",
    "ChangePublished",
    "ClientMessage",
    "CloseReason",
    "CodecError",
    "Event",
    "EventLog",
    "EventLogError",
    "LogRolledBack",
    "LogStats",
    "LogUnavailable",
    "MemoryEventLog",
    "MessageHandled",
    "OwnerClaimed",
    "OwnerReleased",
    "PostgresEventLog",
    "Record",
    "RedisEventLog",
    "Role",
    "SQLiteEventLog",
    "ServerMessage",
    "SessionClosed",
    "SessionOpened",
    "StatelessAnswer",
    "StatelessRequest",
    "UnsupportedURL",
    "UpstreamSessionOpened",
    "WorkerHeartbeat",
    "WorkerStarted",
    "WorkerStopped",
    "decode_event",
    "derived_event_id",
    "encode_event",
    "new_event_id",
    "open_log",
    "redact_url",
]
