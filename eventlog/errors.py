"""Errors raised by event logs.

Every error an :class:`~eventlog.base.EventLog` raises is one of these; no driver
exception crosses the contract::

    EventLogError
    ├── LogUnavailable      (also a ConnectionError)
    ├── LogRolledBack
    ├── ChainBroken
    ├── CodecError          (also a ValueError)
    └── UnsupportedURL      (also a ValueError)
"""

from __future__ import annotations

__all__ = [
    "ChainBroken",
    "CodecError",
    "EventLogError",
    "LogRolledBack",
    "LogUnavailable",
    "UnsupportedURL",
]


class EventLogError(Exception):
    """Base class of every error an event log raises."""


class LogUnavailable(EventLogError, ConnectionError):
    """Raised when the log's backend cannot be reached or refuses work for now.

    The same log object works again once the backend is back; nothing needs to be
    reopened. The message names the backend by its URL with credentials removed.
    """


class LogRolledBack(EventLogError):
    """Raised by a tail that finds the record it last read replaced: the log was
    rolled back behind it (a restore, a failover to a replica that was behind) and
    written again. What the reader folded is not this log any more."""


class ChainBroken(EventLogError):
    """Raised when records' links do not hold: the log was changed after it was
    written. ``args[0]`` is the :class:`~eventlog.chain.ChainBreak` found."""

    def __str__(self) -> str:
        broken = self.args[0]
        return f"{broken.where}: position {broken.position}: {broken.reason}"


class CodecError(EventLogError, ValueError):
    """Raised when bytes cannot be decoded into an event, or an event cannot be encoded."""


class UnsupportedURL(EventLogError, ValueError):
    """Raised when :func:`~eventlog.factory.open_log` is given a URL it cannot open."""
