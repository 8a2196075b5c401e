"""The ``sessionlog`` command line."""

from __future__ import annotations

import argparse
import sys

from . import replay

__all__ = ["main"]

DEFAULT_LOG = "sqlite:///sessionlog.db"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionlog", description="An event-sourced session registry and gateway for MCP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the MCP gateway")
    serve.add_argument("--log", default=DEFAULT_LOG, help="event log URL")
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
    # The HTTP gateway is the gateway issue's work; until it lands, say so plainly.
    print("sessionlog serve: the gateway is not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
