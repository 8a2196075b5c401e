"""Errors the gateway raises to its callers."""

from __future__ import annotations

__all__ = ["SessionNotFound", "WorkerStopping"]


class SessionNotFound(LookupError):
    """The session does not exist on any worker (never opened, or closed)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} does not exist")
        self.session_id = session_id


class WorkerStopping(RuntimeError):
    """The registry has been shut down: this worker takes no more work (another may)."""
