"""Encoding events to bytes and back, and the stored record envelope."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from .errors import CodecError
from .events import Event

__all__ = ["Record", "decode_event", "decode_records", "encode_event"]


class Record(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event as stored: its place in the log, when and by whom it was appended."""

    position: int  # strictly increasing from 1, gapless
    at: float  # wall time of the append, seconds since the epoch
    worker: str  # the worker that appended it
    event: Event


# Built once and reused (msgspec perf tips): encoders and decoders carry type state.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    try:
        return _encoder.encode(event)
    except (msgspec.EncodeError, TypeError) as exc:
        raise CodecError(f"cannot encode {type(event).__name__}: {exc}") from exc


def decode_event(data: bytes) -> Event:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CodecError(str(exc)) from exc


def decode_records(
    rows: Iterable[tuple[int, float, str, bytes]], skip: Callable[[int, CodecError], None]
) -> list[Record]:
    """Records from rows of (position, at, worker, data), in their order; a row whose
    data cannot be decoded is left out and passed to ``skip`` with the error.

    The loop a replay spends its decoding in: the decoder is called directly, not
    through :func:`decode_event`.
    """
    records: list[Record] = []
    append, decode = records.append, _decoder.decode
    for position, at, worker, data in rows:
        try:
            event = decode(data)
        except msgspec.DecodeError as exc:
            skip(position, CodecError(str(exc)))
            continue
        append(Record(position=position, at=at, worker=worker, event=event))
    return records
