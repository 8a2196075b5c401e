"""Work done in separate OS processes by the conformance suite (spawned, so importable)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from eventlog import WorkerHeartbeat, open_log


def claim(url: str, session_id: str, worker: str, barrier: Any, results: Any) -> None:
    async def run() -> None:
        log = await open_log(url)
        try:
            barrier.wait()
            results.put((worker, await log.claim(session_id, worker)))
        finally:
            await log.close()

    asyncio.run(run())


def append_many(url: str, worker: str, count: int, concurrency: int, barrier: Any) -> None:
    """Append ``count`` single events from ``concurrency`` tasks sharing one log."""

    async def appender(log: Any, n: int) -> None:
        for _ in range(n):
            await log.append([WorkerHeartbeat()], worker=worker)

    async def run() -> None:
        log = await open_log(url)
        try:
            barrier.wait()
            share = count // concurrency
            await asyncio.gather(*(appender(log, share) for _ in range(concurrency)))
        finally:
            await log.close()

    asyncio.run(run())


def tail(url: str, after: int, count: int, results: Any) -> None:
    """Tail until ``count`` records arrive, reporting each (position, arrival time) at once."""

    async def run() -> None:
        log = await open_log(url)
        try:
            received = 0
            async for record in log.tail(after=after):
                results.put((record.position, time.time()))
                received += 1
                if received == count:
                    break
        finally:
            await log.close()

    asyncio.run(run())


def tail_all(url: str, count: int, results: Any) -> None:
    """Tail from the start until ``count`` records arrive; report all positions at the end."""

    async def run() -> None:
        log = await open_log(url)
        try:
            positions = []
            async for record in log.tail(after=0):
                positions.append(record.position)
                if len(positions) == count:
                    break
            results.put(positions)
        finally:
            await log.close()

    asyncio.run(run())


def open_and_append(url: str, worker: str, barrier: Any, results: Any) -> None:
    """Open the log (creating its storage if need be) at the barrier, then append once."""

    async def run() -> None:
        barrier.wait()
        log = await open_log(url)
        try:
            results.put((worker, await log.append([WorkerHeartbeat()], worker=worker)))
        finally:
            await log.close()

    asyncio.run(run())


def append_until_killed(url: str, worker: str, acks: str, going: Any) -> None:
    """Append single events from four tasks until killed. Each acknowledged append is
    written to the file ``acks`` as a line "<event id> <position>" (one write each,
    so a kill leaves at most a partial last line); ``going`` is set after 100."""

    async def appender(log: Any, out: int) -> None:
        while True:
            event = WorkerHeartbeat()
            [position] = await log.append([event], worker=worker)
            os.write(out, f"{event.id} {position}\n".encode())
            acknowledged[0] += 1
            if acknowledged[0] == 100:
                going.set()

    async def run() -> None:
        log = await open_log(url)
        out = os.open(acks, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        await asyncio.gather(*(appender(log, out) for _ in range(4)))

    acknowledged = [0]
    asyncio.run(run())
