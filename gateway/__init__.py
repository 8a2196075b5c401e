"""gateway: the SessionRegistry on the log, the worker runtime, the MCP server and CLI."""

from .answering import HandlerContext, MessageHandler
from .errors import SessionNotFound
from .held_streams import Transport
from .registry import SessionRegistry
from .runtime import WorkerRuntime

__all__ = [
    "HandlerContext",
    "MessageHandler",
    "SessionNotFound",
    "SessionRegistry",
    "Transport",
    "WorkerRuntime",
]
