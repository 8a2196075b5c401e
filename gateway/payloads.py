"""The bytes of the messages this worker answers and sends, by log position: kept as
they are folded, within byte budgets, and read back from the log for the rest.

The projection every worker folds keeps where each pending client message and each
sent server message is, and its size, never its bytes. Only the worker holding a
session's stream needs them: to answer its client messages, and to resend what a
resuming client missed. It keeps what it folds for those sessions here, up to a
budget per session and one for the worker, the oldest dropped first, and reads
anything else from the log, a page covering many positions at a time, in batches
of at most a session's budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from eventlog import ClientMessage, EventLog, ServerMessage
from projections import SERVER_HISTORY, RegistryProjection, SentMessage, SentRef

__all__ = ["Payloads"]

# Limits
READ_SPAN = 1000  # positions one read covers (read_page's own page size)


class Located(Protocol):
    """A message the projection knows by position and size (pending or sent)."""

    @property
    def position(self) -> int: ...

    @property
    def size(self) -> int: ...


L = TypeVar("L", bound=Located)


class Payloads:
    def __init__(
        self,
        log: Callable[[], EventLog],
        projection: Callable[[], RegistryProjection],
        *,
        per_session: int,
        per_worker: int,
    ) -> None:
        # Looked up at each use: the runtime may replace its projection (a restart
        # from a snapshot).
        self._log = log
        self._projection = projection
        self.per_session = per_session
        self.per_worker = per_worker
        self._sessions: dict[str, OrderedDict[int, bytes]] = {}
        self._session_bytes: dict[str, int] = {}
        self._order: OrderedDict[int, str] = OrderedDict()  # every kept position, oldest first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._order)

    # -- the cache -------------------------------------------------------------------

    def keep(self, session_id: str, position: int, payload: bytes) -> None:
        """Keep a message's bytes, dropping the oldest kept past the budgets."""
        size = len(payload)
        if size > self.per_session or position in self._order:
            return
        kept = self._sessions.setdefault(session_id, OrderedDict())
        kept[position] = payload
        self._order[position] = session_id
        self._session_bytes[session_id] = self._session_bytes.get(session_id, 0) + size
        self.bytes += size
        while self._session_bytes[session_id] > self.per_session:
            self._drop(session_id, next(iter(kept)))
        while self.bytes > self.per_worker:
            oldest, owner = next(iter(self._order.items()))
            self._drop(owner, oldest)

    def get(self, session_id: str, position: int) -> bytes | None:
        kept = self._sessions.get(session_id)
        return kept.get(position) if kept is not None else None

    def forget(self, session_id: str) -> None:
        """Drop everything kept for a session (its stream left this worker)."""
        kept = self._sessions.pop(session_id, None)
        if kept is None:
            return
        for position in kept:
            del self._order[position]
        self.bytes -= self._session_bytes.pop(session_id)

    def _drop(self, session_id: str, position: int) -> None:
        kept = self._sessions[session_id]
        size = len(kept.pop(position))
        del self._order[position]
        self.bytes -= size
        if kept:
            self._session_bytes[session_id] -= size
        else:
            del self._sessions[session_id], self._session_bytes[session_id]

    # -- reading back ----------------------------------------------------------------

    async def read(self, session_id: str, positions: Sequence[int]) -> dict[int, bytes]:
        """The bytes of the session's messages at ``positions``: kept ones from here,
        the rest from the log, one read per run of nearby positions."""
        found: dict[int, bytes] = {}
        missing: list[int] = []
        for position in positions:
            payload = self.get(session_id, position)
            if payload is None:
                missing.append(position)
            else:
                found[position] = payload
        missing.sort()
        wanted = set(missing)
        log = self._log()
        start = 0
        while start < len(missing):
            first = missing[start]
            end = start
            while end + 1 < len(missing) and missing[end + 1] - first < READ_SPAN:
                end += 1
            last = missing[end]
            after = first - 1
            while after < last:
                records, reached = await log.read_page(after, last - after)
                if reached == after:
                    break  # the log ends before ``last`` (it should not)
                after = reached
                for record in records:
                    event = record.event
                    if record.position in wanted and isinstance(
                        event, (ClientMessage, ServerMessage)
                    ):
                        found[record.position] = event.payload
            start = end + 1
        return found

    async def sent_after(
        self,
        session_id: str,
        after: int,
        upto: int,
        carries: Callable[[SentRef], bool] | None = None,
    ) -> AsyncIterator[SentMessage]:
        """The session's server messages with positions in (after, upto] that
        ``carries`` (default: all), in order, read a batch of at most a session's
        budget at a time: from the projection's index when it reaches back far
        enough, else by scanning the log."""
        session = self._projection().session(session_id)
        refs = session.sent if session is not None else []
        if len(refs) < SERVER_HISTORY or refs[0].position <= after + 1:
            wanted = [
                ref
                for ref in refs
                if after < ref.position <= upto and (carries is None or carries(ref))
            ]
            for batch in self.batches(wanted):
                payloads = await self.read(session_id, [ref.position for ref in batch])
                for ref in batch:
                    payload = payloads.get(ref.position)
                    if payload is not None:
                        yield SentMessage(ref.position, payload, ref.reply_to)
            return
        log = self._log()
        position = after
        while position < upto:
            records, reached = await log.read_page(position, min(READ_SPAN, upto - position))
            if reached == position:
                break  # the log ends before ``upto`` (it should not)
            position = reached
            for record in records:
                event = record.event
                if isinstance(event, ServerMessage) and event.session_id == session_id:
                    ref = SentRef(record.position, len(event.payload), event.reply_to)
                    if carries is None or carries(ref):
                        yield SentMessage(record.position, event.payload, event.reply_to)

    def batches(self, items: Iterable[L]) -> Iterable[list[L]]:
        """``items`` in runs of at most a session's budget in bytes (at least one each):
        how many to read back at once."""
        batch: list[L] = []
        size = 0
        for item in items:
            if batch and size + item.size > self.per_session:
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += item.size
        if batch:
            yield batch
