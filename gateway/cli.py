"""The ``sessionlog`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from eventlog import EventLogError

from . import replay
from .app import build_app
from .operations import JsonLogFormatter
from .settings import DEFAULT_LOG, Settings

__all__ = ["main"]

logger = logging.getLogger("sessionlog.gateway")

# Timeouts
WORKER_STOP_GRACE = 30.0  # s the supervisor waits for workers after SIGTERM


def _env(name: str, default: Any = None, kind: Callable[[str], Any] = str) -> Any:
    value = os.environ.get(f"SESSIONLOG_{name}")
    return default if value is None or value == "" else kind(value)


def _names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


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
    serve.add_argument("--log", default=_env("LOG", DEFAULT_LOG), help="event log URL")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=_env("PORT", 8000, int))
    serve.add_argument(
        "--workers", type=int, default=_env("WORKERS", 1, int), help="processes sharing the port"
    )
    serve.add_argument(
        "--upstream", default=_env("UPSTREAM"), help="Streamable HTTP URL of an MCP server"
    )
    auth = serve.add_argument_group("auth (default: none)")
    auth.add_argument("--auth-token", default=_env("AUTH_TOKEN"), help="a static bearer token")
    auth.add_argument("--jwt-secret", default=_env("JWT_SECRET"), help="HS256 secret for JWTs")
    auth.add_argument(
        "--jwt-public-key", default=_env("JWT_PUBLIC_KEY"), help="RS256/ES256 PEM key or its path"
    )
    auth.add_argument("--jwt-audience", default=_env("JWT_AUDIENCE"))
    auth.add_argument("--jwt-issuer", default=_env("JWT_ISSUER"))
    guard = serve.add_argument_group("DNS-rebinding guard")
    guard.add_argument(
        "--allowed-origins",
        type=_names,
        default=_env("ALLOWED_ORIGINS", (), _names),
        help="comma-separated Origins, or * (default: loopback origins on a loopback host)",
    )
    guard.add_argument(
        "--allowed-hosts",
        type=_names,
        default=_env("ALLOWED_HOSTS", (), _names),
        help="comma-separated Host names, or * (default: loopback names on a loopback host)",
    )
    limits = serve.add_argument_group("limits and timeouts")
    limits.add_argument(
        "--max-streams-per-identity", type=int, default=_env("MAX_STREAMS_PER_IDENTITY", 100, int)
    )
    limits.add_argument("--max-sessions", type=int, default=_env("MAX_SESSIONS", 10_000, int))
    limits.add_argument(
        "--session-ttl",
        type=float,
        default=_env("SESSION_TTL", 1800.0, float),
        help="seconds an unheld session may idle",
    )
    limits.add_argument(
        "--heartbeat-interval",
        type=float,
        default=_env("HEARTBEAT_INTERVAL", 5.0, float),
        help="seconds between heartbeats; a worker is dead after three missed",
    )
    serve.add_argument("--log-format", choices=["text", "json"], default=_env("LOG_FORMAT", "text"))
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=_env("ACCESS_LOG", False, lambda v: v.lower() in ("1", "true", "yes")),
        help="log every HTTP request (off by default: it costs ~0.2 ms a request)",
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return replay.run(args)
    settings = Settings(
        log_url=args.log,
        host=args.host,
        port=args.port,
        workers=args.workers,
        upstream=args.upstream,
        auth_token=args.auth_token,
        jwt_secret=args.jwt_secret,
        jwt_public_key=args.jwt_public_key,
        jwt_audience=args.jwt_audience,
        jwt_issuer=args.jwt_issuer,
        allowed_origins=args.allowed_origins,
        allowed_hosts=args.allowed_hosts,
        max_streams_per_identity=args.max_streams_per_identity,
        max_sessions=args.max_sessions,
        session_ttl=args.session_ttl,
        heartbeat_interval=args.heartbeat_interval,
        log_format=args.log_format,
        access_log=args.access_log,
    )
    if settings.workers < 1:
        print("sessionlog serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return supervise(settings, sys.argv[1:] if argv is None else argv)
    return serve(settings, reuse_port=os.environ.get("SESSIONLOG_WORKER_OF") is not None)


def _configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run one gateway worker until SIGINT or SIGTERM; stopping records WorkerStopped."""
    _configure_logging(settings.log_format)
    try:
        app = build_app(settings)
    except (ValueError, EventLogError) as exc:
        print(f"sessionlog serve: {exc}", file=sys.stderr)
        return 1
    if not reuse_port:
        base = f"http://{settings.host}:{settings.port}"
        print(f"sessionlog: MCP at {base}/mcp (Streamable HTTP) and {base}/sse (HTTP+SSE)")
        print(f"sessionlog: log {settings.log_url}")
    # handler_cancellation: a client that goes away ends its stream's handler at once.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        handler_cancellation=True,
        reuse_port=reuse_port,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
    )
    return 0


def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``settings.workers`` worker processes on one port (SO_REUSEPORT: the
    kernel spreads connections), restart any that dies, stop them all on SIGTERM."""
    command = [sys.executable, "-m", "gateway", *argv, "--workers", "1"]
    env = {**os.environ, "SESSIONLOG_WORKER_OF": str(os.getpid())}
    base = f"http://{settings.host}:{settings.port}"
    print(f"sessionlog: {settings.workers} workers; MCP at {base}/mcp and {base}/sse")
    print(f"sessionlog: log {settings.log_url}")
    sys.stdout.flush()
    workers = [subprocess.Popen(command, env=env) for _ in range(settings.workers)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        pid, status = os.wait()
        for index, worker in enumerate(workers):
            if worker.pid == pid and not stopping:
                worker.returncode = os.waitstatus_to_exitcode(status)
                logging.getLogger("sessionlog.gateway").warning(
                    "worker %d exited (%s); starting another", pid, worker.returncode
                )
                workers[index] = subprocess.Popen(command, env=env)
    for worker in workers:
        try:
            worker.wait(timeout=WORKER_STOP_GRACE)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
