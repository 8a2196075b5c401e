"""`sessionlog serve` as an operator runs it: graceful SIGTERM, JSON logs, limits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import orjson
from aiohttp.test_utils import TestClient, TestServer

from eventlog import OwnerReleased, SessionOpened, WorkerStopped, open_log
from gateway.app import build_app
from gateway.settings import Settings
from gateway.testing.serving import serve_process

HANG_GUARD = 30.0


async def test_sigterm_ends_streams_with_a_recorded_reason_and_json_logs(tmp_path: Path) -> None:
    url, output = f"sqlite:///{tmp_path}/log.db", tmp_path / "serve.log"
    json_logs = {"SESSIONLOG_LOG_FORMAT": "json"}
    with serve_process(url, env=json_logs, output=output) as served:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{served.url}/sse") as stream:
                line = await asyncio.wait_for(stream.content.readline(), HANG_GUARD)
                assert line.startswith(b"event: endpoint")
                served.process.send_signal(signal.SIGTERM)
                # The stream ends: the server closes it, not the client.
                await asyncio.wait_for(stream.content.read(), HANG_GUARD)
        assert served.process.wait(timeout=HANG_GUARD) == 0
    async with await open_log(url) as log:
        records = await log.read(0, 1000)
    [opened] = [r.event for r in records if isinstance(r.event, SessionOpened)]
    [released] = [r.event for r in records if isinstance(r.event, OwnerReleased)]
    assert (released.session_id, released.reason) == (opened.session_id, "worker_stopped")
    assert isinstance(records[-1].event, WorkerStopped)
    lines = [
        orjson.loads(line)
        for line in (tmp_path / "serve.log").read_bytes().splitlines()
        if line.startswith(b"{")
    ]
    assert any(line.get("session_id") == opened.session_id for line in lines)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


async def test_streams_per_identity_are_capped(tmp_path: Path) -> None:
    settings = Settings(log_url=f"sqlite:///{tmp_path}/log.db", max_streams_per_identity=1)
    async with TestClient(TestServer(build_app(settings), host="127.0.0.1")) as client:
        async with client.get("/sse") as first:
            assert first.status == 200
            await asyncio.wait_for(first.content.readline(), HANG_GUARD)
            async with client.get("/sse") as second:
                assert second.status == 429
                assert second.headers["Retry-After"]
                body = await second.json()
                assert body["error"]["message"].startswith("too many open streams")


async def test_open_sessions_are_capped(tmp_path: Path) -> None:
    settings = Settings(log_url=f"sqlite:///{tmp_path}/log.db", max_sessions=1)
    async with TestClient(TestServer(build_app(settings), host="127.0.0.1")) as client:
        async with client.get("/sse") as first:
            await asyncio.wait_for(first.content.readline(), HANG_GUARD)
            async with client.get("/sse") as second:
                assert second.status == 503
                assert (await second.json())["error"]["code"] == -32603


async def test_a_log_that_cannot_be_reached_is_one_line_with_no_password(tmp_path: Path) -> None:
    """Nothing says it is serving, the URL's password is not printed, the exit is 1."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--log",
        f"postgresql://ana:s3cret@127.0.0.1:{port}/db",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), HANG_GUARD)
    assert process.returncode == 1
    assert stdout == b""
    [line] = stderr.decode().splitlines()
    assert line.startswith(f"sessionlog serve: postgresql://ana:***@127.0.0.1:{port}/db is unavail")
    assert "s3cret" not in line
