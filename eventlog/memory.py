"""MemoryEventLog: the reference backend, in one process's memory.

It keeps events encoded, exactly as the durable backends do, so every reader goes
through the same decoding (and skipping) path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .archive import Archive, directory_archive
from .base import Append, Claim, EventLog, LogRow, Operation, Release, StoredEvent
from .chain import GENESIS, ChainedRow, linker

__all__ = ["MemoryEventLog"]


class MemoryEventLog(EventLog):
    def __init__(
        self,
        *,
        url: str = "memory://",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        # An Archive, or a URL's ``archive=`` option (a directory; none by default).
        archive: Archive | str | None = None,
    ) -> None:
        if not isinstance(archive, Archive):
            archive = directory_archive(archive, None)
        super().__init__(url=url, clock=clock, read_only=read_only, archive=archive)
        self._rows: list[LogRow] = []  # row i holds position self._first + i
        self._links: list[bytes] = []  # the link of each row
        self._first, self._anchor = 1, GENESIS  # the start position, the link before it
        self._link = linker(self.hash_name)
        self._positions: dict[str, int] = {}  # event id -> position
        self._owners: dict[str, str] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}

    def _store(self, at: float, worker: str, event: StoredEvent) -> int:
        positions = self._positions
        position = positions.get(event.event_id)
        if position is None:
            rows, links = self._rows, self._links
            position = positions[event.event_id] = self._first + len(rows)
            rows.append((position, at, worker, event.data))  # LogRow's shape, built faster
            previous = links[-1] if links else self._anchor
            links.append(self._link(previous, position, at, worker, event.data))
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
        start = max(after + 1 - self._first, 0)
        return self._rows[start : start + limit]

    async def _read_chained(self, after: int, limit: int) -> list[ChainedRow]:
        start = max(after + 1 - self._first, 0)
        return [
            ChainedRow(*row, link)
            for row, link in zip(
                self._rows[start : start + limit], self._links[start : start + limit], strict=True
            )
        ]

    async def _head(self) -> int:
        return self._first + len(self._rows) - 1

    async def _start(self) -> tuple[int, bytes]:
        return self._first, self._anchor

    async def _trim(self, before: int, anchor: bytes, expected_start: int) -> int:
        if self._first == expected_start and before > self._first:
            cut = before - self._first
            del self._rows[:cut], self._links[:cut]
            self._first, self._anchor = before, anchor
        return self._first

    async def _hot_size(self) -> int:
        return sum(len(row[3]) for row in self._rows)

    async def _save_snapshot(self, name: str, position: int, data: bytes, replace: bool) -> None:
        if replace or position > self._snapshots.get(name, (-1, b""))[0]:
            self._snapshots[name] = (position, data)

    async def _load_snapshot(self, name: str) -> bytes | None:
        stored = self._snapshots.get(name)
        return None if stored is None else stored[1]

    async def _close(self) -> None:
        self._wakeup.notify()
