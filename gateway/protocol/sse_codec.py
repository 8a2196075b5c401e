"""The ``text/event-stream`` parser, sans I/O: one for every stream the gateway reads
(the upstream's, and the tests' view of its own). The gateway's own events are
written by aiohttp-sse.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["MAX_EVENT", "SSEError", "SSEEvent", "SSEParser"]

# Bytes of one event, or of one unterminated line: past it the stream is refused.
MAX_EVENT = 16 * 2**20


class SSEError(ValueError):
    """The stream is not one this parser accepts (an event or a line over the limit)."""


_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event of a ``text/event-stream``."""

    event: str
    data: str
    id: str | None  # the last event id as of this event (ids persist across events)


class SSEParser:
    """Incremental WHATWG ``text/event-stream`` parser: feed bytes, get events.

    Lines end in CRLF, LF or CR (even split across chunks); ``data:`` lines join with
    "\\n"; ``:`` starts a comment; a blank line dispatches, unless the data is empty
    (the SDK's "priming" events carry only an id). :attr:`last_event_id` keeps the
    latest ``id:`` even from undispatched events: it is what a reconnect resumes from.
    """

    def __init__(self, max_size: int = MAX_EVENT) -> None:
        self.last_event_id: str | None = None
        self.retry: float | None = None  # seconds, from the last valid `retry:` field
        self._max_size = max_size
        self.new_stream()

    def new_stream(self) -> None:
        """Forget a previous stream's partial event; the last id and retry stay."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # an unterminated line
        self._started = False  # a leading BOM has been dealt with
        self._after_cr = False  # the last chunk ended in CR: a leading LF completes it
        self._event = ""
        self._data: list[str] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        # Not str.splitlines: it also splits on U+2028 and others, which JSON may hold.
        lines = _LINE_END.split(self._pending + text)
        self._pending = lines.pop()
        if len(self._pending) > self._max_size:
            raise SSEError(f"an SSE line is longer than {self._max_size} bytes")
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max_size:
                raise SSEError(f"an SSE event is larger than {self._max_size} bytes")
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value) / 1000
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = "\n".join(self._data), self._event or "message"
        self._event, self._data, self._size = "", [], 0
        if not data:
            return None
        return SSEEvent(event, data, self.last_event_id)
