"""`sessionlog serve` in trouble: a crash loop (restarts with backoff), a supervisor
killed (its workers do not outlive it), SIGTERM under load, writes that fail."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from eventlog import WorkerStopped, open_log
from gateway.supervisor import RestartBackoff
from gateway.testing.servers import accepts, free_port, wait_until
from gateway.testing.serving import serve_process

HANG_GUARD = 60.0
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "load", "version": "1"},
    },
}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def test_restart_delays_double_in_a_crash_loop_and_reset_after_a_settled_run() -> None:
    backoff = RestartBackoff(0.5, longest=4.0, settled=10.0)
    assert [backoff.delay(ran_for=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(ran_for=10.0) == 0.0  # a settled run: restart at once
    assert backoff.delay(ran_for=0.1) == 0.5  # and a new crash loop starts over


def test_a_crash_loop_is_restarted_after_doubling_delays(tmp_path: Path) -> None:
    unreachable = "postgresql://u:secret@127.0.0.1:1/sessionlog"
    command = [sys.executable, "-m", "gateway", "serve", "--workers", "2"]
    options = ["--port", str(free_port()), "--log", unreachable, "--restart-delay", "0.01"]
    supervisor = subprocess.Popen(
        [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    delays: list[float] = []
    output = []
    try:
        assert supervisor.stdout is not None
        while len(delays) < 6:
            line = supervisor.stdout.readline().decode()
            assert line, "the supervisor ended"
            output.append(line)
            if found := re.search(r"starting another in ([0-9.]+) s", line):
                delays.append(float(found[1]))
        supervisor.send_signal(signal.SIGTERM)  # stops while it waits to restart
        assert supervisor.wait(timeout=HANG_GUARD) == 0
    finally:
        supervisor.kill()
    # Two workers, each restarted after 0.01, 0.02 and 0.04 s.
    assert sorted(delays) == [0.01, 0.01, 0.02, 0.02, 0.04, 0.04]
    assert "secret" not in "".join(output)


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with serve_process(url, "--workers", "2", output=tmp_path / "serve.log") as served:
        workers = _workers(served.process, 2)
        port = int(served.url.rsplit(":", 1)[1])
        os.kill(served.process.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(workers, timeout=HANG_GUARD)
        assert not alive
        assert not accepts(port)
    async with await open_log(url) as log:
        records = await log.read(0, 10_000)
    stopped = {r.worker for r in records if isinstance(r.event, WorkerStopped)}
    assert len(stopped) == 2


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_under_load_stops_cleanly(tmp_path: Path, workers: str) -> None:
    url, output = f"sqlite:///{tmp_path}/log.db", tmp_path / "serve.log"
    with serve_process(url, "--workers", workers, output=output) as served:
        if workers == "2":
            _workers(served.process, 2)
        async with aiohttp.ClientSession() as http:
            calls = asyncio.Event()
            load = [asyncio.create_task(_hold_sse(http, served.url)) for _ in range(10)]
            load += [asyncio.create_task(_call(http, served.url, calls)) for _ in range(10)]
            await asyncio.wait_for(calls.wait(), HANG_GUARD)
            served.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(served.process.wait, HANG_GUARD) == 0
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
    assert b"Traceback" not in output.read_bytes()


def _workers(supervisor: subprocess.Popen[bytes], count: int) -> list[psutil.Process]:
    """The ``count`` worker processes of a supervisor, once they all listen."""

    def listening() -> bool:
        children = psutil.Process(supervisor.pid).children()
        return len(children) == count and all(
            any(c.status == psutil.CONN_LISTEN for c in child.net_connections())
            for child in children
        )

    wait_until(listening, "the workers", supervisor, None)
    return psutil.Process(supervisor.pid).children()


async def _hold_sse(http: aiohttp.ClientSession, base: str) -> None:
    async with http.get(f"{base}/sse") as stream:
        async for _ in stream.content:
            pass


async def _call(http: aiohttp.ClientSession, base: str, calls: asyncio.Event) -> None:
    """Open a Streamable HTTP session with a stream, then call a tool until stopped."""
    async with http.post(f"{base}/mcp", data=orjson.dumps(INITIALIZE), headers=HEADERS) as opened:
        session = {**HEADERS, "Mcp-Session-Id": opened.headers["Mcp-Session-Id"]}
        await opened.read()
    session["MCP-Protocol-Version"] = "2025-06-18"
    stream = asyncio.create_task(_drain(http.get(f"{base}/mcp", headers=session)))
    try:
        for n in range(1, 1_000_000):
            call = {"jsonrpc": "2.0", "id": n, "method": "tools/call"}
            call["params"] = {"name": "echo", "arguments": {"text": "hi"}}
            async with http.post(f"{base}/mcp", data=orjson.dumps(call), headers=session) as r:
                await r.read()
            calls.set()
    except aiohttp.ClientError:
        pass  # the server stopped
    finally:
        stream.cancel()


async def _drain(request: aiohttp.client._RequestContextManager) -> None:
    async with request as response:
        async for _ in response.content:
            pass


async def test_readyz_is_503_while_writes_fail(tmp_path: Path) -> None:
    """A worker whose writes fail (here: its file size limit, as a full or read-only
    disk would) leaves the load balancer's pool until a heartbeat is written again."""
    url, output = f"sqlite:///{tmp_path}/log.db", tmp_path / "serve.log"
    with serve_process(url, "--heartbeat-interval", "0.1", output=output) as served:
        worker = psutil.Process(served.process.pid)
        _, hard = worker.rlimit(psutil.RLIMIT_FSIZE)
        async with aiohttp.ClientSession() as http:
            worker.rlimit(psutil.RLIMIT_FSIZE, (1, hard))
            body = await _ready_when(http, served.url, False)
            assert "writes fail" in body["problems"]["writes"]
            async with http.post(
                f"{served.url}/mcp", data=orjson.dumps(INITIALIZE), headers=HEADERS
            ) as refused:
                assert refused.status == 503
                assert refused.headers["Retry-After"]
                assert (await refused.json())["error"]["code"] == -32603
            worker.rlimit(psutil.RLIMIT_FSIZE, (hard, hard))
            await _ready_when(http, served.url, True)
    assert b"Traceback" not in output.read_bytes()


async def _ready_when(http: aiohttp.ClientSession, base: str, ready: bool) -> dict[str, Any]:
    """/readyz's body once it says ``ready``."""
    async with asyncio.timeout(HANG_GUARD):
        while True:
            async with http.get(f"{base}/readyz") as answer:
                body = await answer.json()
                if body["ready"] is ready:
                    assert answer.status == (200 if ready else 503)
                    return body
