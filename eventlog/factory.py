"""open_log(url): the URL's scheme picks the backend."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ._urls import redact
from .base import EventLog
from .errors import UnsupportedURL
from .memory import MemoryEventLog
from .postgres import PostgresEventLog
from .redis_streams import RedisEventLog
from .sqlite import SQLiteEventLog

__all__ = ["open_log"]

SCHEMES = "memory://, sqlite:///path, postgresql://... or redis://..."

# Options that may ride in the URL's query string (``?namespace=t1&durability=full``),
# with how to read them; the rest of the query goes to the driver untouched.
_URL_OPTIONS = {
    "namespace": str,
    "durability": str,
    "poll_interval": float,
    "notify_fallback": float,
    "block": float,
    "timeout": float,
    "dedupe_window": float,
    "wait_replicas": int,
    "wait_timeout": float,
    "archive": str,
}


async def open_log(url: str, **options: Any) -> EventLog:
    """Open the log at ``url``, creating its storage if needed.

    ``memory://`` (this process only), ``sqlite:///relative.db`` or
    ``sqlite:////absolute.db`` (the embedded default), ``postgresql://user@host/db``,
    ``redis://host:6379/0``. Keyword options (``namespace``, ``clock``, timeouts) may
    also be given in the URL's query string.

    Raises:
        UnsupportedURL: the scheme or an option is not one we know.
        LogUnavailable: the backend cannot be reached.
    """
    scheme = urlsplit(url).scheme.lower()
    driver_url, url_options = _split_options(url)
    options = {**url_options, **options}
    log: SQLiteEventLog | PostgresEventLog | RedisEventLog
    try:
        if scheme == "memory":
            return MemoryEventLog(url=url, **options)
        if scheme in ("sqlite", "sqlite+aiosqlite"):
            if not urlsplit(url).path.lstrip("/"):
                raise UnsupportedURL(f"{redact(url)}: a SQLite URL needs a file path")
            log = SQLiteEventLog(driver_url, **options)
        elif scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
            log = PostgresEventLog(driver_url, **options)
        elif scheme in ("redis", "rediss", "unix"):
            log = RedisEventLog(driver_url, **options)
        else:
            raise UnsupportedURL(f"cannot open {redact(url)!r}: expected {SCHEMES}")
    except TypeError as exc:  # an option this backend does not take
        raise UnsupportedURL(f"{redact(url)}: {exc}") from exc
    try:
        await log._open()
    except BaseException:
        await log.close()
        raise
    return log


def _split_options(url: str) -> tuple[str, dict[str, Any]]:
    # Split by hand: urlunsplit would turn sqlite:////abs/path into sqlite://abs/path.
    base, _, query = url.partition("?")
    options: dict[str, Any] = {}
    rest = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _URL_OPTIONS:
            try:
                options[key] = _URL_OPTIONS[key](value)
            except ValueError as exc:
                raise UnsupportedURL(f"{redact(url)}: bad {key}={value!r}") from exc
        else:
            rest.append(f"{key}={value}")
    return (f"{base}?{'&'.join(rest)}" if rest else base), options
