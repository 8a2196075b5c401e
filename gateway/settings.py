"""Gateway settings: one frozen struct, the one place each value and its default live.

``sessionlog serve`` makes one option per field (``--<name>``, or the field's
``flag``), each also read from ``SESSIONLOG_<NAME>``; the app, the registry and the
worker runtime read the struct. Nothing else holds a default of its own.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_LOG",
    "LOOPBACK_HOSTS",
    "Option",
    "Settings",
    "options",
    "parse_duration",
    "parse_retention",
    "parse_size",
]

DEFAULT_LOG = "sqlite:///sessionlog.db"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _yes(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_BYTES = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_AMOUNT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")


def _amount(value: str, units: dict[str, int], what: str, examples: str) -> float:
    matched = _AMOUNT.fullmatch(value.lower())
    if matched is None or matched[2] not in units:
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise ValueError(f"{shown!r} is not {what} (e.g. {examples})")
    return float(matched[1]) * units[matched[2]]


def parse_duration(value: str) -> float:
    """Seconds from ``90s``, ``15m``, ``12h``, ``7d`` or plain seconds."""
    seconds = _amount(value, {"": 1, **_SECONDS}, "a duration", "90s, 15m, 12h, 7d, 300")
    if seconds <= 0:
        raise ValueError(f"{value!r}: a duration must be above zero")
    return seconds


def parse_retention(value: str) -> float | None:
    """A duration, or ``off`` (None: kept however old)."""
    return None if value.strip().lower() == "off" else parse_duration(value)


def parse_size(value: str) -> int | None:
    """Bytes from ``500MB``, ``2GiB``, plain bytes, or ``off`` (None: no budget)."""
    if value.strip().lower() == "off":
        return None
    size = int(_amount(value, _BYTES, "a size", "500MB, 2GiB, 1048576, off"))
    if size <= 0:
        raise ValueError(f"{value!r}: a size must be above zero")
    return size


def _setting(
    default: Any,
    help: str,
    *,
    group: str = "",
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A field of :class:`Settings` with what its command-line option needs."""
    metadata = {"help": help, "group": group, "flag": flag, "parse": parse, "choices": choices}
    return field(default=default, metadata=metadata)


_AUTH = "auth (default: none)"
_GUARD = "DNS-rebinding guard"
_LIMITS = "limits and timeouts"
_RETENTION = "retention (records leave the hot log for the log's archive)"


@dataclass(frozen=True)
class Settings:
    log_url: str = _setting(DEFAULT_LOG, "event log URL", flag="--log")
    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8000, "port to listen on", parse=int)
    workers: int = _setting(1, "processes sharing the port", parse=int)
    upstream: str | None = _setting(
        None, "Streamable HTTP URL of an MCP server to forward to (default: built-in tools)"
    )
    # Auth: a static bearer token, or JWTs checked with a secret (HS256) or a public
    # key (RS256/ES256); none of them: no auth.
    auth_token: str | None = _setting(None, "a static bearer token", group=_AUTH)
    jwt_secret: str | None = _setting(None, "HS256 secret for JWTs", group=_AUTH)
    jwt_public_key: str | None = _setting(None, "RS256/ES256 PEM key or its path", group=_AUTH)
    jwt_audience: str | None = _setting(None, "the audience JWTs must name", group=_AUTH)
    jwt_issuer: str | None = _setting(None, "the issuer JWTs must name", group=_AUTH)
    # Empty: loopback only when serving on a loopback address, anything otherwise.
    allowed_origins: tuple[str, ...] = _setting(
        (),
        "comma-separated Origins, or * (default: loopback origins on a loopback host)",
        group=_GUARD,
        parse=_names,
    )
    allowed_hosts: tuple[str, ...] = _setting(
        (),
        "comma-separated Host names, or * (default: loopback names on a loopback host)",
        group=_GUARD,
        parse=_names,
    )
    # Limits
    max_streams_per_identity: int = _setting(
        100, "open streams of one identity on one worker", group=_LIMITS, parse=int
    )
    max_sessions: int = _setting(
        10_000, "open sessions a worker creates new ones up to", group=_LIMITS, parse=int
    )
    max_sessions_per_identity: int = _setting(
        1_000,
        "open sessions of one authenticated identity (anonymous ones: only max-sessions)",
        group=_LIMITS,
        parse=int,
    )
    pending_bytes_per_session: int = _setting(
        16 * 2**20,
        "bytes of client messages a session may have waiting for their answers; "
        "more are refused (429) until some are answered",
        group=_LIMITS,
        parse=int,
    )
    payload_cache_per_session: int = _setting(
        8 * 2**20,
        "bytes of message payloads kept for one session held here (the rest is read "
        "back from the log)",
        group=_LIMITS,
        parse=int,
    )
    payload_cache_per_worker: int = _setting(
        64 * 2**20, "bytes of message payloads kept on one worker", group=_LIMITS, parse=int
    )
    max_connections: int = _setting(
        0,
        "open connections of one worker; past it, one waiting longest for its client's "
        "request is dropped, or the new one refused (0: the file descriptor limit less 320)",
        group=_LIMITS,
        parse=int,
    )
    # Timeouts, in seconds
    header_timeout: float = _setting(
        5.0, "seconds a client may take to send a request's headers", group=_LIMITS, parse=float
    )
    body_timeout: float = _setting(
        10.0, "seconds a client may take to send a request's body", group=_LIMITS, parse=float
    )
    session_ttl: float = _setting(
        3600.0, "seconds an unheld session may idle before it expires", group=_LIMITS, parse=float
    )
    message_ttl: float = _setting(
        600.0, "seconds a client message may wait for its answer", group=_LIMITS, parse=float
    )
    heartbeat_interval: float = _setting(
        5.0,
        "seconds between heartbeats; a worker is dead after three missed",
        group=_LIMITS,
        parse=float,
    )
    sweep_interval: float = _setting(
        30.0, "seconds between looks for what has expired", group=_LIMITS, parse=float
    )
    restart_delay: float = _setting(
        0.5,
        "seconds before restarting a crashed worker (--workers); doubles in a crash loop, to 30",
        group=_LIMITS,
        parse=float,
    )
    snapshot_every: int = _setting(
        10_000, "records between snapshots of the registry", group=_LIMITS, parse=int
    )
    closed_retention: float = _setting(
        86_400.0,
        "seconds (of the log's record times) the registry remembers a closed session "
        "or a silent worker; the log keeps its history",
        group=_LIMITS,
        parse=float,
    )
    # Retention: the hot log keeps what workers need, plus this window and within this
    # size; the rest moves to the archive (see gateway.compaction).
    retain: float | None = _setting(
        7 * 86_400.0,
        "how long records stay in the hot log after they are appended: 90s, 15m, 12h, "
        "7d, seconds, or off (default 7d)",
        group=_RETENTION,
        parse=parse_retention,
    )
    retain_size: int | None = _setting(
        None,
        "the hot log's size budget: 500MB, 2GiB, bytes, or off (default off)",
        group=_RETENTION,
        parse=parse_size,
    )
    archive_segment_records: int = _setting(
        20_000,
        "records in one archive segment, at the most",
        group=_RETENTION,
        parse=int,
    )
    compact_interval: float = _setting(
        300.0,
        "time between compactions: 90s, 5m, ... (default 5m)",
        group=_RETENTION,
        parse=parse_duration,
    )
    log_format: str = _setting("text", "json: one JSON object per line", choices=("text", "json"))
    access_log: bool = _setting(
        False, "log every HTTP request (it costs ~0.2 ms a request)", parse=_yes
    )

    @property
    def worker_ttl(self) -> float:
        """How long a worker that stopped beating counts as alive: three beats."""
        return 3 * self.heartbeat_interval


@dataclass(frozen=True)
class Option:
    """The command-line option of one setting."""

    name: str  # the field's
    flag: str
    env: str
    default: Any
    help: str
    group: str
    parse: Callable[[str], Any] | None
    choices: tuple[str, ...] | None


def options() -> list[Option]:
    """One option per setting, in the struct's order."""
    found = []
    for each in dataclasses.fields(Settings):
        flag = each.metadata["flag"] or "--" + each.name.replace("_", "-")
        found.append(
            Option(
                name=each.name,
                flag=flag,
                env="SESSIONLOG_" + flag[2:].upper().replace("-", "_"),
                default=each.default,
                help=each.metadata["help"],
                group=each.metadata["group"],
                parse=each.metadata["parse"],
                choices=each.metadata["choices"],
            )
        )
    return found
