"""Encoding events to bytes and back, and the stored record envelope."""

from __future__ import annotations

import msgspec

from .errors import CodecError
from .events import Event

__all__ = ["Record", "decode_event", "encode_event"]


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
