"""SessionRegistry across separate OS processes sharing one log, on every shared backend."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

from gateway import SessionRegistry
from tests.gateway import _processes
from tests.gateway.helpers import HANG_GUARD, request

SPAWN = multiprocessing.get_context("spawn")


async def next_event(events: Any) -> tuple[str, str | None, Any]:
    return await asyncio.to_thread(events.get, timeout=HANG_GUARD)


async def test_two_processes_behave_as_one_registry(shared_log_url: str) -> None:
    events = SPAWN.Queue()
    holder = SPAWN.Process(target=_processes.hold, args=(shared_log_url, "A", events))
    holder.start()
    other = SessionRegistry(log_url=shared_log_url, worker_id="B")
    await other.initialize()
    try:
        assert await next_event(events) == ("disconnected", "s2", None)  # A removed it
        assert await next_event(events) == ("ready", None, None)
        # What A did is visible in B as soon as A's calls returned.
        assert await other.session_exists("s1") is True
        assert await other.session_exists("s2") is False
        assert other.runtime.projection.state.closed["s2"].reason == "removed"
        assert other.runtime.projection.session("s1").holder == "A"  # type: ignore[union-attr]
        # Broadcasts from B reach A's transport, answered by A, in order.
        await other.broadcast("s1", request(1, "ping"))
        await other.broadcast("s1", request(2, "ping"))
        replies = [await next_event(events), await next_event(events)]
        assert [(kind, sid, msg["id"]) for kind, sid, msg in replies] == [
            ("sent", "s1", 1),
            ("sent", "s1", 2),
        ]
        # A removal in B disconnects A's transport.
        await other.remove_session("s1")
        assert await next_event(events) == ("disconnected", "s1", None)
        await asyncio.to_thread(holder.join, HANG_GUARD)
        assert holder.exitcode == 0
        assert await other.session_exists("s1") is False
    finally:
        await other.shutdown()
        if holder.is_alive():
            holder.kill()


async def test_owner_claims_race_across_processes(shared_log_url: str) -> None:
    barrier, results = SPAWN.Barrier(4), SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_processes.claim_owner,
            args=(shared_log_url, "s", f"user{i}@example.com", barrier, results),
        )
        for i in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [await asyncio.to_thread(results.get, timeout=HANG_GUARD) for _ in processes]
    for process in processes:
        await asyncio.to_thread(process.join, HANG_GUARD)
    owners = {owner for _, owner in outcomes}
    assert len(owners) == 1 and owners.pop() in {email for email, _ in outcomes}
