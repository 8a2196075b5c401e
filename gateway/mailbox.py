"""Mailbox: work items for one session, processed one at a time, in order.

A mailbox has no task of its own while it is empty: putting an item starts a
drain task, which ends when the box is empty again. So 10,000 idle sessions cost
10,000 empty deques, not 10,000 waiting tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Mailbox"]

logger = logging.getLogger("sessionlog.gateway")

T = TypeVar("T")


class Mailbox(Generic[T]):
    def __init__(self, name: str, process: Callable[[T], Awaitable[None]]) -> None:
        self.name = name
        self._process = process
        self._items: deque[T] = deque()
        self._drain: asyncio.Task[None] | None = None
        self._closed = False

    def put(self, item: T) -> None:
        if self._closed:
            return
        self._items.append(item)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_task(self._run())

    def __len__(self) -> int:
        return len(self._items)

    async def _run(self) -> None:
        while self._items:
            item = self._items.popleft()
            try:
                await self._process(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad item must not stop the session's others
                logger.exception("%s: processing an item failed", self.name)

    async def close(self) -> None:
        """Drop what is queued and stop; waits for the item in progress to be cancelled."""
        self._closed = True
        self._items.clear()
        drain = self._drain
        if drain is not None and not drain.done() and drain is not asyncio.current_task():
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
