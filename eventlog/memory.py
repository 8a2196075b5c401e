"""MemoryEventLog: the reference backend, in one process's memory.

It keeps events encoded, exactly as the durable backends do, so every reader goes
through the same decoding (and skipping) path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .base import Append, Claim, EventLog, LogRow, Operation, Release, StoredEvent

__all__ = ["MemoryEventLog"]


class MemoryEventLog(EventLog):
    def __init__(
        self,
        *,
        url: str = "memory://",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        super().__init__(url=url, clock=clock, read_only=read_only)
        self._rows: list[LogRow] = []  # row i holds position i + 1
        self._positions: dict[str, int] = {}  # event id -> position
        self._owners: dict[str, str] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}

    def _store(self, at: float, worker: str, event: StoredEvent) -> int:
        positions = self._positions
        position = positions.get(event.event_id)
        if position is None:
            rows = self._rows
            position = positions[event.event_id] = len(rows) + 1
            rows.append((position, at, worker, event.data))  # LogRow's shape, built faster
        return position

    async def _commit(self, operations: list[Operation]) -> list[object]:
        # No await in here: the whole batch is applied in one step of the event loop.
        at = self.clock()
        results: list[object] = []
        for operation in operations:
            if isinstance(operation, Append):
                store, worker = self._store, operation.worker
                results.append([store(at, worker, e) for e in operation.events])
            elif isinstance(operation, Claim):
                current = self._owners.get(operation.key)
                if current == operation.expected:
                    self._owners[operation.key] = operation.worker
                    self._store(at, operation.worker, operation.event)
                    current = operation.worker
                results.append(current)
            else:
                assert isinstance(operation, Release)
                owned = self._owners.get(operation.key) == operation.worker
                if owned:
                    del self._owners[operation.key]
                    self._store(at, operation.worker, operation.event)
                results.append(owned)
        return results

    async def _read_rows(self, after: int, limit: int) -> list[LogRow]:
        start = max(after, 0)
        return self._rows[start : start + limit]

    async def _head(self) -> int:
        return len(self._rows)

    async def _save_snapshot(self, name: str, position: int, data: bytes, replace: bool) -> None:
        if replace or position > self._snapshots.get(name, (-1, b""))[0]:
            self._snapshots[name] = (position, data)

    async def _load_snapshot(self, name: str) -> bytes | None:
        stored = self._snapshots.get(name)
        return None if stored is None else stored[1]

    async def _close(self) -> None:
        self._wakeup.notify()
