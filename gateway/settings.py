"""Gateway settings: what ``sessionlog serve`` takes as flags or SESSIONLOG_* variables."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LOG", "LOOPBACK_HOSTS", "Settings"]

DEFAULT_LOG = "sqlite:///sessionlog.db"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Settings:
    log_url: str = DEFAULT_LOG
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # Streamable HTTP URL of the MCP server requests are forwarded to; None: built-ins.
    upstream: str | None = None
    # Auth: a static bearer token, or JWTs checked with a secret (HS256) or a public
    # key (RS256/ES256); none of them: no auth.
    auth_token: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # DNS-rebinding guard: Origin and Host headers accepted. Empty: loopback only when
    # serving on a loopback address, anything otherwise; "*" accepts anything.
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Limits
    max_streams_per_identity: int = 100  # open streams of one identity on one worker
    max_sessions: int = 10_000  # open sessions a worker creates new ones up to
    # Timeouts
    heartbeat_interval: float = 5.0  # s; a worker is dead after three missed beats
    session_ttl: float = 1800.0  # s an unheld session may idle before it expires
    log_format: str = "text"  # or "json": one JSON object per line
    access_log: bool = False  # one line per HTTP request
