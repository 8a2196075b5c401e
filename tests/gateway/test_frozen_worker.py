"""SIGSTOP the gateway process holding a client's stream: the client resumes on
another process, which takes the session over; when the frozen process is thawed it
lets go of the session and sends nothing twice. Every client message in the log is
answered exactly once. Real processes on every shared log backend."""

from __future__ import annotations

import os
import signal
from collections import Counter

import aiohttp
import orjson

from eventlog import ClientMessage, ServerMessage, open_log
from gateway.testing.serving import serve_process

from .test_takeover import FAST_HEARTBEATS, events, next_event, tool_call


async def test_a_frozen_worker_gives_the_session_up_when_thawed(shared_log_url: str) -> None:
    with (
        serve_process(shared_log_url, env=FAST_HEARTBEATS) as a,
        serve_process(shared_log_url, env=FAST_HEARTBEATS) as b,
    ):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{a.url}/sse") as frozen_stream:
                received = events(frozen_stream)
                endpoint = await next_event(received)
                post_to_b = f"{b.url}{endpoint.data}"
                ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
                async with http.post(post_to_b, json=ping) as posted:
                    assert posted.status == 202
                first = await next_event(received)
                assert orjson.loads(first.data)["id"] == 1
                os.kill(a.process.pid, signal.SIGSTOP)
                try:
                    # Accepted while the holder is frozen.
                    async with http.post(post_to_b, json=tool_call(2, "echo", text="frozen")) as p:
                        assert p.status == 202
                    # The client gives up on the silent stream and resumes on b.
                    frozen_stream.close()
                    resume = {"Last-Event-ID": first.id}
                    resumed_url = f"{b.url}{endpoint.data.replace('/messages/', '/sse')}"
                    async with http.get(resumed_url, headers=resume) as stream:
                        assert stream.status == 200
                        received = events(stream)
                        assert (await next_event(received)).event == "endpoint"
                        answered = await next_event(received)
                        assert orjson.loads(answered.data)["id"] == 2
                        os.kill(a.process.pid, signal.SIGCONT)
                        # Posted to the thawed worker: it records the message for the
                        # session's holder now, b; the answer comes on b's stream, once.
                        post_to_a = f"{a.url}{endpoint.data}"
                        async with http.post(
                            post_to_a, json=tool_call(3, "echo", text="thawed")
                        ) as p:
                            assert p.status == 202
                        after = await next_event(received)
                        assert orjson.loads(after.data)["id"] == 3
                finally:
                    os.kill(a.process.pid, signal.SIGCONT)
    async with await open_log(shared_log_url) as log:
        records = []
        position = 0
        while page := await log.read(position, 1000):
            records += page
            position = page[-1].position
    session_id = endpoint.data.split("session_id=")[-1]
    asked = [
        orjson.loads(r.event.payload)["id"]
        for r in records
        if isinstance(r.event, ClientMessage) and r.event.session_id == session_id
    ]
    answered_ids = Counter(
        orjson.loads(r.event.payload).get("id")
        for r in records
        if isinstance(r.event, ServerMessage) and r.event.session_id == session_id
    )
    assert sorted(asked) == [1, 2, 3]
    assert answered_ids == Counter({1: 1, 2: 1, 3: 1})  # each once, whoever answered
