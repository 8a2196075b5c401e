"""URL helpers shared by the backends."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from .errors import UnsupportedURL

__all__ = ["check_namespace", "redact"]

_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for errors and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_namespace(namespace: str) -> str:
    """Namespaces name tables and keys, so they must be plain identifiers."""
    if not _NAMESPACE.fullmatch(namespace):
        raise UnsupportedURL(
            f"namespace {namespace!r} must be a letter or underscore then up to 40 "
            "letters, digits or underscores"
        )
    return namespace
