"""An MCP server built with the official SDK (``MCPServer``), in its own process:
the upstream the gateway forwards to in tests, and a baseline in benchmarks. This
module owns its script and starting and stopping it; the script needs the ``mcp``
package, imported only in that process."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .servers import accepts, free_port, stop_process, wait_until

__all__ = ["SDK_SERVER", "sdk_server", "start_sdk_server", "stop_sdk_server"]

# An MCP server on the official SDK, over Streamable HTTP on 127.0.0.1.
# argv: port; "json" for JSON responses or "sse" for SSE ones; the transport,
# "streamable-http" or "sse" (HTTP+SSE).
SDK_SERVER = '''
import asyncio
import sys
import warnings

warnings.simplefilter("ignore")  # ctx.info is deprecated for the 2026 protocol

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("upstream-test", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Returns the text it is given."""
    return text


@server.tool()
async def chatty_echo(text: str, ctx: Context) -> str:
    """Logs and reports progress on its request's stream, then returns the text."""
    await ctx.info(f"echoing {text}")
    await ctx.report_progress(1, 1, "done")
    return text


@server.tool()
async def touch_tools(ctx: Context) -> str:
    """Announces a tools list change: on the session's standalone (GET) stream, and
    to subscriptions/listen streams (2026-07-28)."""
    await ctx.session.send_tool_list_changed()
    await ctx.notify_tools_changed()
    return "sent"


_gates: dict[str, asyncio.Event] = {}


@server.tool()
async def gate(key: str, ctx: Context) -> str:
    """The first call with a key logs "gated <key>" and waits for the second, which
    opens it: a request in flight for as long as a test needs (to kill its gateway,
    or drop its client)."""
    if key not in _gates:
        opened = _gates[key] = asyncio.Event()
        await ctx.info(f"gated {key}")
        await opened.wait()
        return f"opened {key}"
    _gates[key].set()
    return f"released {key}"


if sys.argv[3] == "sse":
    server.run(transport="sse", host="127.0.0.1", port=int(sys.argv[1]))
else:
    server.run(
        transport="streamable-http",
        host="127.0.0.1",
        port=int(sys.argv[1]),
        json_response=sys.argv[2] == "json",
    )
'''


def start_sdk_server(
    json_response: bool, transport: str = "streamable-http", *, script: str = SDK_SERVER
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the SDK server (or another ``script`` taking the same argv) in its own
    process; (the process, its MCP endpoint URL: ``/mcp`` for Streamable HTTP, ``/sse``
    for HTTP+SSE).

    Returns once it accepts connections. Stop it with :func:`stop_sdk_server`.
    """
    port = free_port()
    mode = "json" if json_response else "sse"
    with tempfile.NamedTemporaryFile(prefix="sdk-server-", suffix=".log", delete=False) as sink:
        output = Path(sink.name)
        process = subprocess.Popen(
            [sys.executable, "-c", script, str(port), mode, transport],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: accepts(port), "the SDK server", process, output)
    except RuntimeError:
        stop_sdk_server(process)
        raise
    finally:
        output.unlink()
    path = "/sse" if transport == "sse" else "/mcp"
    return process, f"http://127.0.0.1:{port}{path}"


def stop_sdk_server(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, timeout=10)


@contextmanager
def sdk_server(
    json_response: bool = False, transport: str = "streamable-http"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """:func:`start_sdk_server` for the length of a ``with``: (the process, its URL)."""
    process, url = start_sdk_server(json_response, transport)
    try:
        yield process, url
    finally:
        stop_sdk_server(process)
