"""The official MCP Python SDK client against `sessionlog serve`, over HTTP+SSE."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from gateway.testing.serving import serve


async def test_sdk_client_initializes_lists_and_calls_echo(tmp_path: Path) -> None:
    with serve(f"sqlite:///{tmp_path}/log.db") as base:
        async with sse_client(f"{base}/sse") as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=10) as s:
                init = await s.initialize()
                assert init.server_info.name == "sessionlog"
                tools = await s.list_tools()
                assert [tool.name for tool in tools.tools] == ["echo"]
                result = await s.call_tool("echo", {"text": "hi"})
                assert (result.content[0].text, result.is_error) == ("hi", False)
                # An unknown tool is a protocol error (-32602), as the specification says.
                with pytest.raises(MCPError) as unknown:
                    await s.call_tool("nope", {})
                assert unknown.value.error.code == -32602
