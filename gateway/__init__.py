"""gateway: the SessionRegistry on the log, the worker runtime, the MCP server and CLI."""

from .errors import SessionNotFound
from .registry import SessionRegistry
from .worker import HandlerContext, MessageHandler, Transport, WorkerRuntime

__all__ = [
    "HandlerContext",
    "MessageHandler",
    "SessionNotFound",
    "SessionRegistry",
    "Transport",
    "WorkerRuntime",
]
