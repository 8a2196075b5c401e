"""The ``sessionlog`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from eventlog import EventLogError

from . import replay
from .app import build_app

__all__ = ["main"]

DEFAULT_LOG = "sqlite:///sessionlog.db"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionlog", description="An event-sourced session registry and gateway for MCP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the MCP gateway")
    serve.add_argument(
        "--log", default=os.environ.get("SESSIONLOG_LOG", DEFAULT_LOG), help="event log URL"
    )
    serve.add_argument("--host", default=os.environ.get("SESSIONLOG_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("SESSIONLOG_PORT", "8000")))
    audit = commands.add_parser(
        "replay", help="a session's timeline, or the registry's state at a point"
    )
    audit.add_argument("--log", default=DEFAULT_LOG, help=f"event log URL (default {DEFAULT_LOG})")
    audit.add_argument("--session", help="show this session's timeline")
    audit.add_argument("--at", help="a log position, or an ISO 8601 time (UTC unless given)")
    audit.add_argument("--format", choices=["table", "jsonl"], default="table")
    audit.add_argument("--follow", action="store_true", help="keep printing new records")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return replay.run(args)
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Run the gateway until SIGINT or SIGTERM; shutting down records WorkerStopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        app = build_app(args.log)
    except (ValueError, EventLogError) as exc:
        print(f"sessionlog serve: {exc}", file=sys.stderr)
        return 1
    print(f"sessionlog: MCP over HTTP+SSE at http://{args.host}:{args.port}/sse, log {args.log}")
    # handler_cancellation: a client that goes away ends its stream's handler at once.
    web.run_app(app, host=args.host, port=args.port, print=None, handler_cancellation=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
