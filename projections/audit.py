"""Which records an audit shows, as a fold over the log in order."""

from __future__ import annotations

from eventlog import Record, SessionOpened, StatelessAnswer, StatelessRequest

__all__ = ["Selection"]


class Selection:
    """Which records an audit shows: one session's, or everything one identity did
    (the sessions it opened, with all that happened in them, and its stateless
    requests with their answers). A fold: it learns the identity's sessions and
    requests as it goes, so it must see the records in log order."""

    def __init__(self, *, session_id: str | None = None, user: str | None = None) -> None:
        if (session_id is None) == (user is None):
            raise ValueError("select by a session or by a user")
        self.user = user
        self._sessions = {session_id} if session_id is not None else set()
        self._requests: set[str] = set()

    def __call__(self, record: Record) -> bool:
        event = record.event
        if self.user is not None:
            if isinstance(event, SessionOpened) and event.user == self.user:
                self._sessions.add(event.session_id)
            elif isinstance(event, StatelessRequest) and event.user == self.user:
                self._requests.add(event.id)
                return True
            elif isinstance(event, StatelessAnswer):
                return event.request in self._requests
        return getattr(event, "session_id", None) in self._sessions
