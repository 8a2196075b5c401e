"""The archive: records that left the hot log, in immutable compressed segments.

A segment holds consecutive records (position, at, worker, data, link), msgpack
encoded and zstd compressed, beside a manifest of its first and last position, time
range, the link before its first record and of its last, and the SHA-256 of its
bytes. A segment counts as archived only once the hot log's start position has
moved past it: the trim is the commit point of a move (copy, verify, then trim), so
a segment left behind by a move that was killed before its trim is ignored by
readers and replaced by the next move. Every record is thus in exactly one of hot
log and archive at every moment.

Destinations: a directory (:class:`DirectoryArchive`; the default beside a SQLite
log, and for Redis); PostgreSQL keeps its segments in a table of the same database
(see :mod:`eventlog.postgres_archive`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import msgspec
import zstandard

from .chain import ChainedRow
from .errors import EventLogError, LogUnavailable

__all__ = [
    "Archive",
    "ArchiveError",
    "DirectoryArchive",
    "Manifest",
    "decode_segment",
    "encode_segment",
]

SEGMENT_VERSION = 1
ZSTD_LEVEL = 3  # zstd's default: most of the ratio at a fraction of the higher levels' time


class ArchiveError(EventLogError):
    """A segment that cannot be read as written (missing, corrupt, or not ours)."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a segment holds, and the chain around it."""

    first: int
    last: int
    first_at: float
    last_at: float
    previous: str  # hex link of the record before ``first`` ("" before position 1)
    chain: str  # hex link of the record at ``last``
    hash: str  # the chain's algorithm
    count: int
    digest: str  # SHA-256 of the segment's bytes, hex
    version: int = SEGMENT_VERSION

    @property
    def name(self) -> str:
        return f"{self.first:020d}-{self.last:020d}"


_rows_encoder = msgspec.msgpack.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(list[tuple[int, float, str, bytes, bytes | None]])
_manifest_encoder = msgspec.json.Encoder()
_manifest_decoder = msgspec.json.Decoder(Manifest)


def encode_segment(
    rows: Sequence[ChainedRow], hash_name: str, previous: bytes
) -> tuple[Manifest, bytes]:
    """A segment's bytes and manifest, for consecutive ``rows`` chained from ``previous``."""
    if not rows:
        raise ValueError("a segment holds at least one record")
    blob = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(
        _rows_encoder.encode([tuple(row) for row in rows])
    )
    (first, first_at, *_), (last, last_at, _, _, chain) = rows[0], rows[-1]
    manifest = Manifest(
        first=first,
        last=last,
        first_at=first_at,
        last_at=last_at,
        previous=previous.hex(),
        chain=(chain or b"").hex(),
        hash=hash_name,
        count=len(rows),
        digest=hashlib.sha256(blob).hexdigest(),
    )
    return manifest, blob


def decode_segment(
    manifest: Manifest, blob: bytes, *, check_digest: bool = True
) -> list[ChainedRow]:
    """The rows of a segment. Raises ArchiveError if its bytes are not the ones the
    manifest describes (with ``check_digest``) or cannot be decoded."""
    if check_digest and hashlib.sha256(blob).hexdigest() != manifest.digest:
        raise ArchiveError(f"segment {manifest.name}: its bytes do not match its manifest")
    try:
        rows = _rows_decoder.decode(zstandard.ZstdDecompressor().decompress(blob))
    except (zstandard.ZstdError, msgspec.DecodeError) as exc:
        raise ArchiveError(f"segment {manifest.name} cannot be decoded: {exc}") from exc
    return rows  # tuples in ChainedRow's shape


def encode_manifest(manifest: Manifest) -> bytes:
    return _manifest_encoder.encode(manifest)


def decode_manifest(data: bytes) -> Manifest:
    try:
        return _manifest_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ArchiveError(f"a manifest cannot be decoded: {exc}") from exc


class Archive(ABC):
    """Where segments go. Implementations make :meth:`write` durable before it returns."""

    url: str

    @abstractmethod
    async def manifests(self) -> list[Manifest]:
        """Every complete segment's manifest, by first position (leftovers of killed
        moves included: readers keep to those below the hot log's start)."""

    @abstractmethod
    async def write(self, manifest: Manifest, blob: bytes) -> None:
        """Store a segment durably, replacing any segment that starts at the same
        position (a leftover of a move that was killed before its trim: leftovers
        always start at the start position, since a move trims for each segment
        before it writes the next)."""

    @abstractmethod
    async def read(self, manifest: Manifest) -> bytes:
        """A segment's bytes."""

    async def close(self) -> None:  # noqa: B027 - most archives hold nothing open
        """Release what the archive holds open."""


_SEGMENT_NAME = re.compile(r"^(\d{20})-(\d{20})\.manifest\.json$")


class DirectoryArchive(Archive):
    """Segments as files in a directory: ``<first>-<last>.zst`` and its
    ``<first>-<last>.manifest.json``, each written to a temporary name, synced and
    renamed, the segment before its manifest: a manifest names only a whole segment."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.url = f"file://{self.path.absolute()}"

    async def manifests(self) -> list[Manifest]:
        return await asyncio.to_thread(self._manifests)

    def _manifests(self) -> list[Manifest]:
        try:
            names = sorted(name for name in os.listdir(self.path) if _SEGMENT_NAME.match(name))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LogUnavailable(f"archive {self.url}: {exc}") from exc
        found = []
        for name in names:
            try:
                found.append(decode_manifest((self.path / name).read_bytes()))
            except FileNotFoundError:  # removed meanwhile
                continue
            except OSError as exc:
                raise LogUnavailable(f"archive {self.url}: {exc}") from exc
        return found

    async def write(self, manifest: Manifest, blob: bytes) -> None:
        await asyncio.to_thread(self._write, manifest, blob)

    def _write(self, manifest: Manifest, blob: bytes) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # A leftover with the same first position but another last: gone first.
            self._remove_starting_at(manifest.first)
            _write_durably(self.path / f"{manifest.name}.zst", blob)
            _write_durably(self.path / f"{manifest.name}.manifest.json", encode_manifest(manifest))
            _sync_directory(self.path)
        except OSError as exc:
            raise LogUnavailable(f"archive {self.url}: {exc}") from exc

    async def read(self, manifest: Manifest) -> bytes:
        try:
            return await asyncio.to_thread((self.path / f"{manifest.name}.zst").read_bytes)
        except FileNotFoundError as exc:
            raise ArchiveError(f"archive {self.url}: segment {manifest.name} is missing") from exc
        except OSError as exc:
            raise LogUnavailable(f"archive {self.url}: {exc}") from exc

    def _remove_starting_at(self, first: int) -> None:
        for name in os.listdir(self.path):
            match = _SEGMENT_NAME.match(name)
            if match and int(match[1]) == first:
                # The manifest first: a segment without one is not looked at.
                (self.path / name).unlink(missing_ok=True)
                (self.path / name.replace(".manifest.json", ".zst")).unlink(missing_ok=True)


def _write_durably(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def directory_archive(option: str | None, default: str | os.PathLike[str] | None) -> Archive | None:
    """The archive a log URL's ``archive=`` option names: a directory path or a
    ``file://`` URL; ``none`` for no archive; absent, ``default`` (None: none)."""
    if option is None:
        return None if default is None else DirectoryArchive(default)
    if option.lower() == "none":
        return None
    path = option.removeprefix("file://") if option.startswith("file://") else option
    if not path:
        raise EventLogError(f"archive={option!r} names no directory")
    return DirectoryArchive(path)
