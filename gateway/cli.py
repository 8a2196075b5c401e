"""The ``sessionlog`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionlog", description="An event-sourced session registry and gateway for MCP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the MCP gateway")
    serve.add_argument("--log", default="sqlite:///sessionlog.db", help="event log URL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        # The HTTP gateway is the gateway issue's work; until it lands, say so plainly.
        print("sessionlog serve: the gateway is not yet implemented", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
