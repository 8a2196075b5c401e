"""PostgresArchive: a PostgreSQL log's archive segments, in a table of its database.

Why a table beside the events table (``<namespace>_archive``: first position, last
position, manifest, segment bytes), rather than files or detached partitions:

- The archive is then covered by whatever already keeps the log: the database's
  backups, its replication and failover, its permissions and monitoring. A
  directory would need its own, and every machine running a gateway on the same
  database would need the same shared filesystem mounted.
- A segment is written in one transaction: after a crash it is there whole or not
  at all, and once the statement returns it is as durable as a commit of the log.
- Detached partitions were considered: they would need a partitioned events table
  (a migration of every existing log, and partition maintenance as the log grows),
  and would keep records as they are in the hot log, uncompressed and unchained per
  segment. A segment here is the same zstd blob, manifest and digest as in a
  directory archive, so :mod:`eventlog.verify` and the readers treat both alike.

Segments are compressed already: the segment column is stored EXTERNAL, so
PostgreSQL moves it out of line without trying to compress it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .archive import Archive, ArchiveError, Manifest, decode_manifest, encode_manifest

__all__ = ["PostgresArchive"]

# How the archive reaches the database: the log's call on one pooled connection,
# which retries a connection lost on the way and translates errors.
Run = Callable[[Callable[[asyncpg.Connection], Awaitable[Any]]], Awaitable[Any]]


class PostgresArchive(Archive):
    def __init__(self, run: Run, table: str, url: str) -> None:
        """``table``: the archive table's name, quoted; ``run``: the log's runner."""
        self.table = table
        self.url = f"{url} (table {table})"
        self._run = run
        # Statements that create the table, run by the log when it opens.
        self.create_sql = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "first bigint PRIMARY KEY, last bigint NOT NULL, "
            "manifest jsonb NOT NULL, segment bytea NOT NULL);\n"
            f"ALTER TABLE {table} ALTER COLUMN segment SET STORAGE EXTERNAL"
        )
        self._manifests_sql = f"SELECT manifest::text FROM {table} ORDER BY first"
        # A leftover of a killed move starts at the same position: replaced in place.
        self._write_sql = (
            f"INSERT INTO {table} (first, last, manifest, segment) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (first) DO UPDATE SET last = excluded.last, "
            "manifest = excluded.manifest, segment = excluded.segment"
        )
        self._read_sql = f"SELECT segment FROM {table} WHERE first = $1 AND last = $2"

    async def manifests(self) -> list[Manifest]:
        async def fetch(conn: asyncpg.Connection) -> list[Any]:
            try:
                return await conn.fetch(self._manifests_sql)
            except asyncpg.UndefinedTableError:
                # A read-only open of a log that never had an archive: nothing archived.
                return []

        return [decode_manifest(text.encode()) for (text,) in await self._run(fetch)]

    async def write(self, manifest: Manifest, blob: bytes) -> None:
        text = encode_manifest(manifest).decode()
        write = self._write_sql
        await self._run(lambda conn: conn.execute(write, manifest.first, manifest.last, text, blob))

    async def read(self, manifest: Manifest) -> bytes:
        read = self._read_sql
        blob = await self._run(lambda conn: conn.fetchval(read, manifest.first, manifest.last))
        if blob is None:
            raise ArchiveError(f"archive {self.url}: segment {manifest.name} is missing")
        return blob  # type: ignore[no-any-return]
