"""gateway: the SessionRegistry, worker runtime, MCP transports and the CLI."""

__all__: list[str] = []
