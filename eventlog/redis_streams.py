"""RedisEventLog: Redis Streams through redis-py asyncio (hiredis).

The stream's entry ids are ``0-<position>``, so a position is the entry id's
sequence part and ``XREAD BLOCK`` after ``0-<p>`` is a tail after ``p``. Appends,
claims and releases are Lua scripts: each is atomic on the server, deduplicates
event ids in a hash and assigns positions from a counter. A group commit sends
every pending script in one pipeline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_exc
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._urls import check_namespace, redact
from .base import Append, Claim, EventLog, Operation, Row
from .errors import EventLogError, LogUnavailable

__all__ = ["RedisEventLog"]

# Shared by the scripts: store ARGV[i..i+2] (event id, at, data) unless the id is known.
_STORE = """
local function store(worker, id, at, data)
  local position = redis.call('HGET', KEYS[3], id)
  if not position then
    position = redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[1], '0-' .. position, 't', at, 'w', worker, 'd', data)
    redis.call('HSET', KEYS[3], id, position)
  end
  return tonumber(position)
end
"""

# ARGV: worker, at, then (event id, data) pairs.
_APPEND = (
    _STORE
    + """
local positions = {}
for i = 3, #ARGV, 2 do
  positions[#positions + 1] = store(ARGV[1], ARGV[i], ARGV[2], ARGV[i + 1])
end
return positions
"""
)

# ARGV: session, worker, expected ('' = none), at, event id, data. Returns the owner after.
_CLAIM = (
    _STORE
    + """
local current = redis.call('HGET', KEYS[4], ARGV[1]) or ''
if current == ARGV[3] then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
  store(ARGV[2], ARGV[5], ARGV[4], ARGV[6])
  return ARGV[2]
end
return current
"""
)

# ARGV: session, worker, at, event id, data. Returns 1 if released.
_RELEASE = (
    _STORE
    + """
if redis.call('HGET', KEYS[4], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[4], ARGV[1])
  store(ARGV[2], ARGV[4], ARGV[3], ARGV[5])
  return 1
end
return 0
"""
)


def _position(entry_id: bytes) -> int:
    return int(entry_id[entry_id.index(b"-") + 1 :])


def _rows(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Row]:
    return [
        Row(_position(entry_id), float(fields[b"t"]), fields[b"w"].decode(), fields[b"d"])
        for entry_id, fields in entries
    ]


class RedisEventLog(EventLog):
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sessionlog",
        clock: Callable[[], float] = time.time,
        # Timeouts
        block: float = 5.0,
        connect_timeout: float = 5.0,
        # Limits
        max_connections: int = 8,
    ) -> None:
        super().__init__(url=redact(url), clock=clock)
        check_namespace(namespace)
        # One hash tag, so every key of a namespace lands on one cluster slot.
        self._keys = [f"{{{namespace}}}:{name}" for name in ("events", "head", "ids", "owners")]
        self._stream = self._keys[0]
        # How long one XREAD BLOCK waits before the tail asks again.
        self._block_ms = int(block * 1000)
        self._redis = aioredis.from_url(
            url,
            max_connections=max_connections,
            socket_connect_timeout=connect_timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=2),
        )
        self._append_script = self._redis.register_script(_APPEND)
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)

    async def _open(self) -> None:
        with self._translate_errors():
            await self._redis.ping()

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError) as exc:
            raise LogUnavailable(f"{self.url} is unavailable: {exc}") from exc
        except redis_exc.RedisError as exc:
            raise EventLogError(f"{self.url}: {exc}") from exc

    async def _commit(self, operations: list[Operation]) -> list[object]:
        at = repr(self.clock())
        calls: list[tuple[Any, list[Any]]] = []
        for operation in operations:
            if isinstance(operation, Append):
                args: list[Any] = [operation.worker, at]
                for event in operation.events:
                    args += [event.event_id, event.data]
                calls.append((self._append_script, args))
            elif isinstance(operation, Claim):
                event = operation.event
                expected = operation.expected or ""
                args = [operation.session_id, operation.worker, expected, at]
                calls.append((self._claim_script, [*args, event.event_id, event.data]))
            else:
                event = operation.event
                args = [operation.session_id, operation.worker, at]
                calls.append((self._release_script, [*args, event.event_id, event.data]))
        with self._translate_errors():
            if len(calls) == 1:  # one round trip, no pipeline bookkeeping
                script, args = calls[0]
                replies = [await script(self._keys, args)]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for script, args in calls:
                    await script(self._keys, args, client=pipe)
                replies = await pipe.execute()
        results: list[object] = []
        for operation, reply in zip(operations, replies, strict=True):
            if isinstance(operation, Append):
                results.append(list(reply))
            elif isinstance(operation, Claim):
                results.append(reply.decode() if reply else None)
            else:
                results.append(bool(reply))
        return results

    async def _read_rows(self, after: int, limit: int) -> list[Row]:
        with self._translate_errors():
            entries = await self._redis.xrange(self._stream, f"(0-{after}", "+", count=limit)
        return _rows(entries)

    async def _tail_rows(self, after: int, limit: int) -> list[Row]:
        while True:
            with self._translate_errors():
                reply = await self._redis.xread(
                    {self._stream: f"0-{after}"}, count=limit, block=self._block_ms
                )
            if reply:
                return _rows(reply[0][1])

    async def _head(self) -> int:
        with self._translate_errors():
            head = await self._redis.get(self._keys[1])
        return int(head or 0)

    async def _close(self) -> None:
        with contextlib.suppress(redis_exc.RedisError, OSError):
            await self._redis.aclose()
