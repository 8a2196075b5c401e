"""Gateway workers run in separate OS processes by the multi-process tests (spawned)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import SessionRegistry

# Guards against hangs only.
HANG_GUARD = 60.0


class QueueTransport:
    """Reports what the session is sent, and its disconnection, to the test process."""

    kind = "sse"

    def __init__(self, session_id: str, events: Any) -> None:
        self.session_id = session_id
        self.events = events
        self.connected = asyncio.Event()
        self.connected.set()

    async def send_message(self, message: dict[str, Any]) -> None:
        self.events.put(("sent", self.session_id, message))

    async def disconnect(self) -> None:
        self.connected.clear()
        self.events.put(("disconnected", self.session_id, None))

    async def is_connected(self) -> bool:
        return self.connected.is_set()


def hold(url: str, worker_id: str, events: Any) -> None:
    """Open s1 and s2, remove s2, answer s1 until it is closed from elsewhere."""

    async def run() -> None:
        registry = SessionRegistry(log_url=url, worker_id=worker_id)
        await registry.initialize()
        try:
            transport = QueueTransport("s1", events)
            await registry.add_session("s1", transport)
            await registry.add_session("s2", QueueTransport("s2", events))
            await registry.remove_session("s2")
            events.put(("ready", None, None))
            await asyncio.wait_for(registry.respond(None, {}, "s1"), HANG_GUARD)
        finally:
            await registry.shutdown()

    asyncio.run(run())


def claim_owner(url: str, session_id: str, email: str, barrier: Any, results: Any) -> None:
    async def run() -> None:
        registry = SessionRegistry(log_url=url)
        await registry.initialize(housekeeping=False)
        try:
            barrier.wait()
            results.put((email, await registry.claim_session_owner(session_id, email)))
        finally:
            await registry.shutdown()

    asyncio.run(run())
