"""A log's storage put back to an earlier copy, as a restore from a backup or a
failover to a replica that was behind would do it: for the lineage tests and the
faults bench."""

from __future__ import annotations

import sqlite3
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import redis.asyncio as aioredis

__all__ = ["Rollback"]


class Rollback:
    """A copy of a log's storage, put back later as a restore from a backup or a
    failover to a replica that was behind would: the head moves backwards, and
    everything else (owners, snapshots) goes back with it."""

    def __init__(self, url: str) -> None:
        self.url = url
        base, _, query = url.partition("?")
        self.base = base
        self.namespace = dict(parse_qsl(query)).get("namespace", "sessionlog")
        self.scheme = urlsplit(url).scheme
        self._saved: dict[str, bytes] = {}

    async def save(self) -> None:
        if self.scheme == "sqlite":
            path = urlsplit(self.base).path[1:]
            with sqlite3.connect(path) as live, sqlite3.connect(path + ".copy") as copy:
                live.backup(copy)
        elif self.scheme == "postgresql":
            conn = await asyncpg.connect(self.base)
            try:
                for table in self._tables():
                    await conn.execute(f"CREATE TABLE {table}_copy AS SELECT * FROM {table}")
            finally:
                await conn.close()
        else:
            client = aioredis.from_url(self.base)
            try:
                async for key in client.scan_iter(match=f"{{{self.namespace}}}:*"):
                    self._saved[key] = await client.dump(key)
            finally:
                await client.aclose()

    async def restore(self) -> None:
        if self.scheme == "sqlite":
            path = urlsplit(self.base).path[1:]
            with sqlite3.connect(path + ".copy") as copy, sqlite3.connect(path) as live:
                copy.backup(live)
        elif self.scheme == "postgresql":
            conn = await asyncpg.connect(self.base)
            try:
                async with conn.transaction():
                    for table in self._tables():
                        await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
                    for table in self._tables():
                        await conn.execute(f"DELETE FROM {table}")
                        await conn.execute(f"INSERT INTO {table} SELECT * FROM {table}_copy")
            finally:
                await conn.close()
        else:
            client = aioredis.from_url(self.base)
            try:
                keys = [key async for key in client.scan_iter(match=f"{{{self.namespace}}}:*")]
                async with client.pipeline(transaction=True) as pipe:
                    if keys:
                        pipe.delete(*keys)
                    for key, dumped in self._saved.items():
                        pipe.restore(key, 0, dumped, replace=True)
                    await pipe.execute()
            finally:
                await client.aclose()

    def _tables(self) -> list[str]:
        return [f"{self.namespace}_{name}" for name in ("events", "owners", "snapshots")]
