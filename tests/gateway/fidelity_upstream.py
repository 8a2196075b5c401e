"""An MCP server on the official SDK (``MCPServer``) that asks its client things, for
the upstream fidelity tests: requests on its standalone (GET) stream and on a tool
call's own stream, and SSE polling (it closes a call's stream and expects the client
to resume with Last-Event-ID). Resumable through a small in-memory event store (the
SDK ships none)."""

from __future__ import annotations

import subprocess

from gateway.testing.sdk_server import start_sdk_server

__all__ = ["INSTRUCTIONS", "SERVER_NAME", "start_fidelity_server"]

SERVER_NAME = "fidelity-upstream"
INSTRUCTIONS = "Ask me anything; I may ask you back."
RETRY_MS = 10  # the `retry:` its priming events carry

# argv: port, then (ignored) the response mode and transport start_sdk_server passes.
FIDELITY_SERVER = f'''
import itertools
import sys
import warnings

warnings.simplefilter("ignore")  # sampling, roots and logging are deprecated for 2026

from pydantic import BaseModel

from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventMessage, EventStore


class MemoryEventStore(EventStore):
    """Every event of every stream, ids in one sequence."""

    def __init__(self):
        self.events = []  # (event id, stream id, message or None for a priming event)
        self.ids = itertools.count(1)

    async def store_event(self, stream_id, message):
        event_id = str(next(self.ids))
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        ids = [event[0] for event in self.events]
        if last_event_id not in ids:
            return None
        at = ids.index(last_event_id)
        stream = self.events[at][1]
        for event_id, stream_id, message in self.events[at + 1 :]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


server = MCPServer({SERVER_NAME!r}, instructions={INSTRUCTIONS!r}, log_level="WARNING")


def question(text):
    return [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))]


@server.tool()
async def ask_roots(ctx: Context) -> str:
    """roots/list on the session's standalone stream; the root URIs it got."""
    result = await ctx.session.list_roots()
    return ",".join(str(root.uri) for root in result.roots)


@server.tool()
async def ask_sampling(text: str, ctx: Context) -> str:
    """sampling/createMessage on the session's standalone stream."""
    result = await ctx.session.create_message(question(text), max_tokens=10)
    return result.content.text


@server.tool()
async def ask_sampling_here(text: str, ctx: Context) -> str:
    """sampling/createMessage on this call's own stream."""
    result = await ctx.session.create_message(
        question(text), max_tokens=10, related_request_id=ctx.request_id
    )
    return result.content.text


class Name(BaseModel):
    name: str


@server.tool()
async def ask_name(ctx: Context) -> str:
    """elicitation/create on this call's own stream."""
    result = await ctx.elicit("Your name?", Name)
    return f"{{result.action}}:{{result.data.name if result.data else ''}}"


@server.tool()
async def poll(text: str, ctx: Context) -> str:
    """Closes this call's stream (its client resumes after `retry`), then reports
    progress and answers, both stored for the resume."""
    await ctx.close_sse_stream()
    await ctx.report_progress(1, 1, "after the close")
    return text


@server.tool()
async def touch_tools(ctx: Context) -> str:
    """tools/list_changed on the session's standalone stream."""
    await ctx.session.send_tool_list_changed()
    return "sent"


server.run(
    transport="streamable-http",
    host="127.0.0.1",
    port=int(sys.argv[1]),
    event_store=MemoryEventStore(),
    retry_interval={RETRY_MS},
)
'''


def start_fidelity_server() -> tuple[subprocess.Popen[bytes], str]:
    """Start it in its own process; (the process, its /mcp URL). Stop it with
    :func:`gateway.testing.sdk_server.stop_sdk_server`."""
    return start_sdk_server(json_response=False, script=FIDELITY_SERVER)
