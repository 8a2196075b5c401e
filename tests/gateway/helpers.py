"""Test doubles that are not backends: a recording transport and a clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from eventlog import EventLog, Record

# Guards against hangs only; nothing asserts how fast anything is.
HANG_GUARD = 30.0


class RecordingTransport:
    """A transport that keeps what it is sent and wakes waiters."""

    kind = "sse"

    def __init__(self, session_id: str = "") -> None:
        self.session_id = session_id
        self.sent: list[dict[str, Any]] = []
        self.connected = True
        self._changed = asyncio.Event()

    async def send_message(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self._changed.set()

    async def disconnect(self) -> None:
        self.connected = False
        self._changed.set()

    async def is_connected(self) -> bool:
        return self.connected

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` messages have arrived."""

        async def wait() -> None:
            while len(self.sent) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), HANG_GUARD)
        return self.sent

    async def wait_disconnected(self) -> None:
        async def wait() -> None:
            while self.connected:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), HANG_GUARD)


class FakeClock:
    """Wall time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(request_id: int, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


async def wait_for_record(log: EventLog, matches: Callable[[Record], bool]) -> Record:
    """The first record in ``log`` that ``matches``, waiting on its tail for it."""

    async def find() -> Record:
        async for record in log.tail():
            if matches(record):
                return record
        raise AssertionError("the log closed first")

    return await asyncio.wait_for(find(), HANG_GUARD)
