"""MCP protocol revisions and the two eras they fall into.

Handshake era (2024-11-05 .. 2025-11-25): a session opens with ``initialize`` and
every later message carries its ``Mcp-Session-Id``. Modern era (2026-07-28): each
request stands alone, carrying its version, client info and capabilities in a
``params._meta`` envelope, and ``initialize``/sessions are gone.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ALL_VERSIONS",
    "ASSUMED_VERSION",
    "HANDSHAKE_VERSIONS",
    "LATEST_HANDSHAKE_VERSION",
    "MODERN_VERSIONS",
    "PRIMING_SINCE",
    "Era",
    "negotiate_version",
]

Era = Literal["handshake", "modern"]

# Newest first: a client asking for a version we do not know is offered the newest.
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_HANDSHAKE_VERSION = HANDSHAKE_VERSIONS[0]
MODERN_VERSIONS = ("2026-07-28",)
ALL_VERSIONS = MODERN_VERSIONS + HANDSHAKE_VERSIONS
# What a handshake-era request without MCP-Protocol-Version speaks (the specification's rule).
ASSUMED_VERSION = "2025-03-26"
# From this version on, each SSE response starts with a "priming" event (an id and no
# data), so a client can resume a stream that broke before its first message.
PRIMING_SINCE = "2025-11-25"


def negotiate_version(requested: str, supported: tuple[str, ...] = HANDSHAKE_VERSIONS) -> str:
    """The version to answer an initialize with: the client's if it is supported,
    else the newest supported (the client then decides whether it can go on)."""
    return requested if requested in supported else supported[0]
