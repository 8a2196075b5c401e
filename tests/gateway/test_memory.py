"""Memory bounded by bytes across real worker processes: big messages on one session,
and messages to a session nobody answers.

RSS is read from /proc once the work is done: a measurement of the processes, not
a timing. The budget is generous on purpose (each worker starts at ~80 MiB; before
payloads left the projection, 60 calls of 3 MiB took the holder to 310-400 MiB and a
worker that only folds them to 280-310 MiB)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from eventlog import Event, EventLog, ServerMessage, SessionOpened, open_log
from gateway import SessionRegistry
from gateway.payloads import Payloads
from gateway.reading import catch_up, timeline
from gateway.settings import Settings
from gateway.testing.workloads import (
    EventReader,
    call_big,
    open_sse,
    post_big,
    rss_mib,
    unanswered,
    worker,
)
from projections import RegistryProjection
from tests.gateway.helpers import FakeClock, RecordingTransport

# Each worker's, after 60 tools/call of 3 MiB on one session: measured 110-171 MiB
# (glibc keeps some freed 3 MiB buffers), against 306-320 MiB before.
RSS_BUDGET_MIB = 240
MESSAGE = 3 * 2**20
CALLS = 60
HANG_GUARD = 120.0  # moving 360 MiB through two processes on a shared machine


async def test_big_calls_across_two_workers_stay_under_the_memory_budget(tmp_path: Path) -> None:
    """The holder of the session's stream answers; the other worker records the calls
    and folds the answers. Neither keeps the session's messages: every worker's
    projection holds positions and sizes, the holder a few MiB of payloads."""
    url = f"sqlite:///{tmp_path}/log.db"
    with worker(url) as holder, worker(url) as poster:
        async with aiohttp.ClientSession() as http:
            async with open_sse(http, holder.url) as (session_id, stream):
                async with asyncio.timeout(HANG_GUARD):
                    calls = await call_big(
                        http, stream, poster.url, session_id, count=CALLS, size=MESSAGE
                    )
                assert calls.answered == set(range(1, CALLS + 1))
                for process in (holder.process, poster.process):
                    assert rss_mib(process) < RSS_BUDGET_MIB
    asked, missing = await unanswered(url)
    assert asked == calls.statuses[202] and missing == []


async def test_a_session_nobody_answers_takes_messages_up_to_its_budget_then_429(
    shared_log_url: str,
) -> None:
    """Its holder killed, the session's messages wait in the log: the survivor accepts
    them up to the byte budget (16 MiB: five of 3 MiB) and refuses the rest with 429
    and a JSON-RPC body. A client resuming the stream there gets every accepted one
    answered, the survivor reading their payloads back from the log. On every
    backend that workers can share."""
    url = shared_log_url
    with worker(url) as holder, worker(url) as survivor:
        async with aiohttp.ClientSession() as http:
            async with open_sse(http, holder.url) as (session_id, _):
                holder.process.send_signal(signal.SIGKILL)
                holder.process.wait()
            statuses, refusals = [], []
            for request_id in range(1, 9):
                status, body = await post_big(http, survivor.url, session_id, request_id, MESSAGE)
                statuses.append(status)
                if body is not None:
                    refusals.append(body)
            assert statuses == [202] * 5 + [429] * 3
            assert all(body["error"]["code"] == -32600 for body in refusals)
            assert rss_mib(survivor.process) < RSS_BUDGET_MIB
            resume = {"Last-Event-ID": "0"}
            url_resume = f"{survivor.url}/sse?session_id={session_id}"
            async with http.get(url_resume, headers=resume) as response:
                assert response.status == 200
                stream = EventReader(response)
                answered: set[int] = set()
                async with asyncio.timeout(HANG_GUARD):
                    while len(answered) < 5:
                        event = await stream.next()
                        if event.get("event") == "message":
                            answered.add(orjson.loads(event["data"])["id"])
                assert answered == {1, 2, 3, 4, 5}
    asked, missing = await unanswered(url)
    assert asked == 5 and missing == []


# -- the payloads a holder keeps -------------------------------------------------------


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EventLog]:
    async with await open_log(f"sqlite:///{tmp_path}/log.db") as log:
        yield log


def payloads_of(log: EventLog, projection: RegistryProjection, **budgets: int) -> Payloads:
    return Payloads(lambda: log, lambda: projection, **budgets)


async def test_kept_payloads_stay_within_the_session_and_worker_budgets(log: EventLog) -> None:
    payloads = payloads_of(log, RegistryProjection(), per_session=250, per_worker=350)
    for position in range(1, 4):  # over the session's budget: its oldest goes
        payloads.keep("a", position, b"a" * 100)
    assert [payloads.get("a", p) is not None for p in (1, 2, 3)] == [False, True, True]
    payloads.keep("b", 4, b"b" * 100)
    payloads.keep("b", 5, b"b" * 100)  # over the worker's budget: the oldest of all goes
    assert payloads.get("a", 2) is None and payloads.get("a", 3) is not None
    assert payloads.bytes == 300
    payloads.keep("c", 7, b"c" * 300)  # more than a session may keep: not kept at all
    assert payloads.get("c", 7) is None and payloads.bytes == 300
    payloads.forget("b")
    assert payloads.bytes == 100 and len(payloads) == 1


async def test_payloads_not_kept_are_read_back_from_the_log_in_one_page(log: EventLog) -> None:
    """The other sessions' records in between are read too: one page, not one round
    trip per message."""
    events: list[Event] = [SessionOpened(session_id="s", transport="sse")]
    for number in range(10):
        session_id = "s" if number % 2 == 0 else "other"
        events.append(ServerMessage(session_id=session_id, payload=b"%d" % number))
    await log.append(events, worker="w")
    projection = RegistryProjection()
    await catch_up(log, projection)
    payloads = payloads_of(log, projection, per_session=2**20, per_worker=2**20)
    payloads.keep("s", 2, b"0")
    queries = log.stats.queries
    sent = [m async for m in payloads.sent_after("s", 0, 11)]
    assert [(m.position, m.payload) for m in sent] == [
        (p, b"%d" % (p - 2)) for p in (2, 4, 6, 8, 10)
    ]
    assert log.stats.queries == queries + 1
    only_after = [m.position async for m in payloads.sent_after("s", 4, 8)]
    assert only_after == [6, 8]


async def test_a_worker_forgets_closed_sessions_after_the_retention_window(
    tmp_path: Path,
) -> None:
    """The window is the setting's, measured by the records' times (the injected
    clock stamps them): the log still has every session's history."""
    clock = FakeClock()
    url = f"sqlite:///{tmp_path}/log.db"
    registry = SessionRegistry(
        log_url=url, clock=clock, settings=Settings(closed_retention=60.0), worker_id="w"
    )
    await registry.initialize(housekeeping=False)
    try:
        runtime = registry.runtime
        for number in range(3):
            await registry.add_session(f"s{number}", RecordingTransport())
            await registry.remove_session(f"s{number}")
        assert list(runtime.projection.state.closed) == ["s0", "s1", "s2"]
        clock.advance(61.0)
        await runtime.housekeeping.heartbeat()
        await runtime.sync()
        assert runtime.projection.state.closed == {}
        assert await registry.session_exists("s0") is False
        assert [type(r.event).__name__ for r in await timeline(runtime.log, "s0")][-1] == (
            "SessionClosed"
        )
    finally:
        await registry.shutdown()
