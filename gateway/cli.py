"""The ``sessionlog`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Collection
from typing import Any

from aiohttp import web

from eventlog import EventLogError, redact_url

from . import export, replay, verifying
from .app import build_app
from .compaction import compact_by_hand, describe
from .connections import ACCEPT_BACKLOG, GatewayRunner
from .operations import JsonLogFormatter
from .replay import ReplayError
from .settings import DEFAULT_LOG, Option, Settings, options
from .supervisor import SUPERVISOR_FD, supervise, watch_supervisor

__all__ = ["main"]

# The settings a compaction by hand takes (the rest are serve's).
COMPACT_OPTIONS = frozenset(
    {"log_url", "retain", "retain_size", "archive_segment_records", "heartbeat_interval"}
)


def _parser_of(option: Option) -> Any:
    """The option's parse, its ValueError as argparse's one-line usage error."""
    parse = option.parse or str

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parsed.__name__ = option.flag  # what argparse names in its errors
    return parsed


def _add_options(parser: argparse.ArgumentParser, names: Collection[str] | None = None) -> None:
    """One option per setting (those ``names``, if given), its default from
    SESSIONLOG_<NAME> or the struct."""
    groups: dict[str, Any] = {"": parser}
    for option in options():
        if names is not None and option.name not in names:
            continue
        group = groups.get(option.group) or groups.setdefault(
            option.group, parser.add_argument_group(option.group)
        )
        parse = _parser_of(option)
        configured = os.environ.get(option.env)
        try:
            default = option.default if not configured else parse(configured)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{option.env}: {exc}")
        if option.default is False:  # a switch
            group.add_argument(option.flag, action="store_true", default=default, help=option.help)
        else:
            group.add_argument(
                option.flag,
                dest=option.name,
                type=parse,
                default=default,
                choices=option.choices,
                help=option.help,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionlog", description="An event-sourced session registry and gateway for MCP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the MCP gateway",
        description="Serve MCP over Streamable HTTP (/mcp) and HTTP+SSE (/sse). Every "
        "option can also be set as SESSIONLOG_<OPTION> (e.g. SESSIONLOG_LOG).",
    )
    _add_options(serve)
    audit = commands.add_parser(
        "replay", help="a session's timeline, or the registry's state at a point"
    )
    audit.add_argument("--log", default=DEFAULT_LOG, help=f"event log URL (default {DEFAULT_LOG})")
    audit.add_argument("--session", help="show this session's timeline")
    audit.add_argument(
        "--user", help="show what this identity did: its sessions and stateless requests"
    )
    audit.add_argument("--at", help="a log position, or an ISO 8601 time (UTC unless given)")
    audit.add_argument("--format", choices=["table", "jsonl"], default="table")
    audit.add_argument("--follow", action="store_true", help="keep printing new records")
    compact = commands.add_parser(
        "compact",
        help="move what the retention settings let go from the hot log to the archive, now",
        description="One compaction run, as serve makes every --compact-interval: exit 0 "
        "when it ran, 1 when another worker is compacting or it failed, 2 on bad input.",
    )
    _add_options(compact, COMPACT_OPTIONS)
    verify = commands.add_parser(
        "verify",
        help="check the hash chain over archive and hot log; print a digest to keep",
        description="Walk the archive and the hot log as one chain: exit 0 when it holds, "
        "1 at the first break (printed), 2 on bad input.",
    )
    verify.add_argument("--log", default=DEFAULT_LOG, help=f"event log URL (default {DEFAULT_LOG})")
    verify.add_argument(
        "--archive", help="the archive's directory (default: the log URL's archive= option)"
    )
    verify.add_argument(
        "--digest", action="store_true", help="print the digest reached as one JSON line"
    )
    verify.add_argument(
        "--expect",
        help="a digest printed by --digest before (the JSON line, or a file holding it): "
        "the log up to its position must be unchanged",
    )
    export = commands.add_parser(
        "export", help="records as JSON lines: a time range, sessions, or all of them"
    )
    export.add_argument("--log", default=DEFAULT_LOG, help=f"event log URL (default {DEFAULT_LOG})")
    export.add_argument(
        "--since", help="from this ISO 8601 time (UTC unless given) or log position, included"
    )
    export.add_argument("--until", help="up to this time or position, included")
    export.add_argument(
        "--session", action="append", default=[], help="only this session's records (repeat)"
    )
    export.add_argument("--output", help="write to this file (default: standard output)")
    return parser


def compact(args: argparse.Namespace) -> int:
    """The ``compact`` subcommand."""
    settings = Settings(**{name: getattr(args, name) for name in COMPACT_OPTIONS})
    try:
        done = asyncio.run(compact_by_hand(settings))
    except (ValueError, ReplayError) as exc:
        print(f"sessionlog compact: {exc}", file=sys.stderr)
        return 2
    except EventLogError as exc:
        print(f"sessionlog compact: {exc}", file=sys.stderr)
        return 1
    if done is None:
        print("sessionlog compact: another worker is compacting this log", file=sys.stderr)
        return 1
    print(f"sessionlog compact: {describe(done)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return replay.run(args)
    if args.command == "verify":
        return verifying.run(args)
    if args.command == "export":
        return export.run(args)
    if args.command == "compact":
        return compact(args)
    settings = Settings(**{option.name: getattr(args, option.name) for option in options()})
    if settings.workers < 1:
        print("sessionlog serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if settings.workers > 1:
        _configure_logging(settings.log_format)
        return supervise(settings, sys.argv[1:] if argv is None else argv)
    supervisor = os.environ.get(SUPERVISOR_FD)
    return serve(settings, supervisor=None if supervisor is None else int(supervisor))


def _configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def serve(settings: Settings, *, supervisor: int | None = None) -> int:
    """Run one gateway worker until SIGINT or SIGTERM; stopping records WorkerStopped.

    A worker of a supervisor (``supervisor``: its end of the supervisor's pipe) shares
    the port with its siblings, and stops when the supervisor is gone.
    """
    _configure_logging(settings.log_format)
    try:
        app = build_app(settings)
    except (ValueError, EventLogError) as exc:
        print(f"sessionlog serve: {exc}", file=sys.stderr)
        return 1
    reuse_port = supervisor is not None
    if supervisor is not None:

        async def watch(app: web.Application) -> None:
            watch_supervisor(supervisor)

        app.on_startup.append(watch)

    async def run() -> None:
        access_log = logging.getLogger("aiohttp.access") if settings.access_log else None
        runner = GatewayRunner(app, settings, access_log)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await runner.setup()
            site = web.TCPSite(
                runner,
                settings.host,
                settings.port,
                backlog=ACCEPT_BACKLOG,
                reuse_port=reuse_port,
            )
            await site.start()
            if not reuse_port:
                # Said once the log is open and the port bound, never before a failure.
                base = f"http://{settings.host}:{settings.port}"
                print(f"sessionlog: MCP at {base}/mcp (Streamable HTTP) and {base}/sse (HTTP+SSE)")
                print(f"sessionlog: log {redact_url(settings.log_url)}", flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except (EventLogError, OSError) as exc:  # the log or the port, at start-up: one line
        print(f"sessionlog serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
