"""RedisEventLog: Redis Streams through redis-py asyncio (hiredis).

The stream's entry ids are ``0-<position>``, so a position is the entry id's
sequence part and ``XREAD BLOCK`` after ``0-<p>`` is a tail after ``p``. A group
commit (appends, claims and releases together) is one Lua script call: atomic on
the server, it deduplicates event ids in a hash and assigns positions from a
counter.

Event ids are remembered for deduplication for a window (``dedupe_window``, an
hour by default), not forever: in one hash per window-long bucket of the commit's
time, which expires two windows after its last write. A commit looks an id up in
its own bucket and the two beside it (clocks of workers may differ by less than a
window), so an id appended again within a window of its first append, by the log's
clock, is found: far longer than any retry or second answerer waits.

Every entry carries its link of the hash chain (``eventlog.chain``; SHA-1, the one
hash Lua scripts have) in its field ``h``, as hex: the commit script computes it
from the link of the head entry, which it keeps with the head's position beside the
head counter and reads from the entry itself when that position is not the head (an
entry appended some other way). An entry from before chains has no ``h``; the chain
starts again after it. The log start position and the link before it are kept
in ``{ns}:start``; a trim below it (``XTRIM MINID``) is one script with the compare
and the update of the start.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import functools
import time
from binascii import unhexlify
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_exc
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ._urls import check_namespace, redact
from .archive import Archive, directory_archive
from .base import Append, Claim, EventLog, LogRow, Operation
from .chain import GENESIS, ChainedRow
from .errors import EventLogError, LogUnavailable

__all__ = ["RedisEventLog"]

# Limits
HOT_SIZE_SAMPLES = 100  # stream nodes MEMORY USAGE looks at, the rest estimated from them

# Timeouts
CLOSE_GRACE = 2.0  # seconds close() waits for connections to close cleanly
DEFAULT_DEDUPE_WINDOW = 3600.0  # seconds an appended event id is remembered, at the least
DEFAULT_TIMEOUT = 3.0  # seconds any call may wait for the server (an XREAD: beyond its BLOCK)

# One group commit, applied atomically on the server. KEYS: events stream, head
# counter, owners hash, the head's link, then the id -> position hashes of the
# buckets before, of and after the commit's time. Each new entry gets its link of the
# chain (eventlog.chain) in field 'h', chained from the head entry's. ARGV: the time,
# the milliseconds its bucket is kept after a write, then the operations:
#   'a', worker, n, then n (event id, data) pairs   -> the positions
#   'c', session, worker, expected ('' = none), event id, data   -> the owner after
#   'r', session, worker, event id, data   -> 1 if released, else 0
# A claim or release whose event id is stored already is this very commit, sent again
# after its connection broke: it is answered as it was then.
_COMMIT = """
local at, keep, stream, owners, ids = ARGV[1], ARGV[2], KEYS[1], KEYS[3], KEYS[6]
local call, sha1hex, pack = redis.call, redis.sha1hex, struct.pack
local head = tonumber(call('GET', KEYS[2]) or '0')
-- The chain goes on from the head entry's link, kept as '<head>:<link>' beside the
-- head counter (so a copy of the head's entry, payload and all, is not read back per
-- commit); read from the entry when that is not the head's (an entry appended some
-- other way); GENESIS ('') after an entry without one (written before chains).
-- A link hashes hex(previous) || be64 position || be double at || be32 #worker ||
-- worker || data (eventlog.chain; # counts bytes, as Lua strings are): the parts
-- after the position are packed once per commit and worker, not per record.
local previous, stamp, packed_workers = '', pack('>d', tonumber(at)), {}
local kept = call('GET', KEYS[4]) or ''
local sep = string.find(kept, ':', 1, true)
if sep and tonumber(string.sub(kept, 1, sep - 1)) == head then
  previous = string.sub(kept, sep + 1)
elseif head > 0 then
  local entry = call('XRANGE', stream, '0-' .. head, '0-' .. head)[1]
  if entry and entry[2][7] == 'h' then
    previous = entry[2][8]
  end
end
-- The positions of the batch's event ids already stored, looked up in one HMGET per
-- bucket and thousand ids (Lua's unpack has a bounded stack), not one HGET per event.
local batch, count = {}, 0
local i = 3
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'a' then
    local last = i + 1 + 2 * tonumber(ARGV[i + 2])
    for j = i + 3, last, 2 do
      count = count + 1
      batch[count] = ARGV[j]
    end
    i = last + 2
  elseif kind == 'c' then
    count = count + 1
    batch[count] = ARGV[i + 4]
    i = i + 6
  else
    count = count + 1
    batch[count] = ARGV[i + 3]
    i = i + 5
  end
end
local known = {}
for bucket = 5, 7 do
  if call('EXISTS', KEYS[bucket]) == 1 then
    for first = 1, count, 1000 do
      local last = math.min(first + 999, count)
      local found = call('HMGET', KEYS[bucket], unpack(batch, first, last))
      for j = 1, last - first + 1 do
        if found[j] then
          known[batch[first + j - 1]] = tonumber(found[j])
        end
      end
    end
  end
end
-- New ids with their positions, as HSET's field-value pairs.
local new, paired = {}, 0
local function store(worker, id, data)
  local position = known[id]
  if not position then
    head = head + 1
    position = head
    local packed = packed_workers[worker]
    if not packed then
      packed = pack('>I4', #worker) .. worker
      packed_workers[worker] = packed
    end
    previous = sha1hex(previous .. pack('>i8', position) .. stamp .. packed .. data)
    call('XADD', stream, '0-' .. position, 't', at, 'w', worker, 'd', data, 'h', previous)
    known[id] = position
    new[paired + 1] = id
    new[paired + 2] = position
    paired = paired + 2
  end
  return position
end
local results = {}
i = 3
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'a' then
    local worker, n, positions = ARGV[i + 1], tonumber(ARGV[i + 2]), {}
    i = i + 3
    for k = 1, n do
      positions[k] = store(worker, ARGV[i], ARGV[i + 1])
      i = i + 2
    end
    results[#results + 1] = positions
  elseif kind == 'c' then
    local session, worker, expected = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local current = call('HGET', owners, session) or ''
    if known[ARGV[i + 4]] then
      current = worker
    elseif current == expected then
      call('HSET', owners, session, worker)
      store(worker, ARGV[i + 4], ARGV[i + 5])
      current = worker
    end
    results[#results + 1] = current
    i = i + 6
  else
    local session, worker = ARGV[i + 1], ARGV[i + 2]
    local released = 0
    if known[ARGV[i + 3]] then
      released = 1
    elseif call('HGET', owners, session) == worker then
      call('HDEL', owners, session)
      store(worker, ARGV[i + 3], ARGV[i + 4])
      released = 1
    end
    results[#results + 1] = released
    i = i + 5
  end
end
if paired > 0 then
  call('SET', KEYS[2], head)
  call('SET', KEYS[4], head .. ':' .. previous)
  for first = 1, paired, 1000 do
    call('HSET', ids, unpack(new, first, math.min(first + 999, paired)))
  end
  call('PEXPIRE', ids, keep)
end
return results
"""

# KEYS: the start hash, the events stream. ARGV: the new start, the link (hex) of
# the entry before it, the start expected. Returns the start after the call.
_TRIM = """
local start = tonumber(redis.call('HGET', KEYS[1], 'position') or '1')
local before = tonumber(ARGV[1])
if start == tonumber(ARGV[3]) and before > start then
  redis.call('HSET', KEYS[1], 'position', before, 'chain', ARGV[2])
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. before)
  start = before
end
return start
"""

# KEYS: the snapshot hash. ARGV: position, data, replace ('1': whatever is stored).
# Keeps the newest only, unless told to replace.
_SAVE_SNAPSHOT = """
local current = redis.call('HGET', KEYS[1], 'position')
if ARGV[3] == '1' or not current or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'position', ARGV[1], 'data', ARGV[2])
end
"""


def _rows(entries: list[list[Any]]) -> list[LogRow]:
    # Raw entries: [b"0-<position>", [b"t", at, b"w", worker, b"d", data, b"h", link]],
    # as written (no link in an entry from before chains).
    return [
        LogRow(int(entry_id[2:]), float(fields[1]), fields[3].decode(), fields[5])
        for entry_id, fields in entries
    ]


def _chained_rows(entries: list[list[Any]]) -> list[ChainedRow]:
    # As _rows, with the link from its hex, if the entry has one.
    return [
        ChainedRow(
            int(entry_id[2:]),
            float(fields[1]),
            fields[3].decode(),
            fields[5],
            _link(fields[7]) if len(fields) > 7 else None,
        )
        for entry_id, fields in entries
    ]


def _link(stored: bytes) -> bytes:
    try:
        return unhexlify(stored)
    except binascii.Error:  # not hex: changed behind the log's back, and no link of a walk
        return stored


def _raw(response: Any, **_options: Any) -> Any:
    return response


try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # hiredis before 2.1, or none: redis-py packs in Python
    _hiredis_pack = None


@functools.cache
def _packing_in_c(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class``, packing commands with hiredis (in C) as redis-py's
    synchronous client does; its asyncio client packs in Python, which for a group
    commit of thousands of arguments costs more than the rest of the call."""
    if _hiredis_pack is None:
        return connection_class

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        # A command name may carry its subcommand ("CLIENT SETINFO"): split, as redis-py does.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [_hiredis_pack(args)]
        except TypeError as exc:  # what redis-py's own encoder raises for such an argument
            raise redis_exc.DataError(str(exc)) from exc

    return type(connection_class.__name__, (connection_class,), {"pack_command": pack_command})


class RedisEventLog(EventLog):
    hash_name = "sha1"  # Lua scripts have no other hash
    # A batch is packed and sent while the one before it runs on the server: each
    # script call is atomic and assigns its own positions, so they may overlap.
    commits_in_flight = 2

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sessionlog",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        # Timeouts
        block: float = 5.0,
        timeout: float = DEFAULT_TIMEOUT,
        wait_timeout: float = 1.0,
        # s an appended event id is remembered, at the least, to store it once
        dedupe_window: float = DEFAULT_DEDUPE_WINDOW,
        # Limits
        max_connections: int = 8,
        # Durability: a commit is acknowledged only once this many replicas have it
        # (WAIT), so a failover to one of them loses nothing acknowledged.
        wait_replicas: int = 0,
        # An Archive, or a URL's ``archive=`` option (a directory; none by default: the
        # server's clients need not share a filesystem).
        archive: Archive | str | None = None,
    ) -> None:
        if not isinstance(archive, Archive):
            archive = directory_archive(archive, None)
        super().__init__(url=redact(url), clock=clock, read_only=read_only, archive=archive)
        check_namespace(namespace)
        # One hash tag, so every key of a namespace lands on one cluster slot.
        self._keys = [
            f"{{{namespace}}}:{name}" for name in ("events", "head", "owners", "head_link")
        ]
        self._stream = self._keys[0]
        self._start_key = f"{{{namespace}}}:start"
        self._ids_prefix = f"{{{namespace}}}:ids:"
        if not dedupe_window > 0:
            raise EventLogError(f"dedupe_window must be positive seconds, not {dedupe_window!r}")
        self._dedupe_window = dedupe_window
        self._snapshot_prefix = f"{{{namespace}}}:snapshot:"
        # How long one XREAD BLOCK waits before the tail asks again.
        self._block_ms = int(block * 1000)
        self._timeout = timeout
        connection_options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_connect_timeout": timeout,
        }
        # A connection that fails (a server restarted since it was pooled) is retried
        # once on a fresh one: every command sent here may be sent twice (reads are
        # reads; the commit script answers a repeated commit as it answered the first).
        # Not a timeout: that has spent the call's time.
        once_more = Retry(
            ExponentialBackoff(cap=0.2, base=0.01),
            retries=1,
            supported_errors=(redis_exc.ConnectionError,),
        )
        self._redis = aioredis.from_url(
            url, socket_timeout=timeout, retry=once_more, **connection_options
        )
        # The tail's own connections: its XREAD BLOCK waits as told, and only what
        # goes beyond that counts against the timeout. Not retried here: the tail
        # retries a failed read itself, after looking whether the server that came
        # back still holds the log it folded (a restart from an older file).
        self._tail_redis = aioredis.from_url(
            url, socket_timeout=block + timeout, **connection_options
        )
        pool = self._redis.connection_pool
        pool.connection_class = _packing_in_c(pool.connection_class)
        self._commit_script = self._redis.register_script(_COMMIT)
        # Entries as the server sends them: redis-py would build a dict per entry, which
        # costs more than the rest of a read. _rows reads the fields by place.
        for client in (self._redis, self._tail_redis):
            for command in ("XRANGE", "XREAD"):
                client.set_response_callback(command, _raw)
        self._save_snapshot_script = self._redis.register_script(_SAVE_SNAPSHOT)
        self._trim_script = self._redis.register_script(_TRIM)
        self._wait_replicas, self._wait_timeout = wait_replicas, wait_timeout

    async def _open(self) -> None:
        with self._translate_errors():
            await self._redis.ping()

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except (redis_exc.TimeoutError, TimeoutError) as exc:
            raise LogUnavailable(
                f"{self.url} is unavailable: no answer within {self._timeout} s"
            ) from exc
        except (redis_exc.ConnectionError, OSError) as exc:
            raise LogUnavailable(f"{self.url} is unavailable: {exc}") from exc
        except redis_exc.RedisError as exc:
            raise EventLogError(f"{self.url}: {exc}") from exc

    async def _commit(self, operations: list[Operation]) -> list[object]:
        at = self.clock()
        # The bucket's hash is kept two windows after its last write: while it is
        # the one before that of any commit within a window of it.
        args: list[Any] = [repr(at), int(2_000 * self._dedupe_window)]
        for operation in operations:
            if isinstance(operation, Append):
                args += ["a", operation.worker, len(operation.events)]
                for event in operation.events:
                    args += [event.event_id, event.data]
            elif isinstance(operation, Claim):
                args += ["c", operation.key, operation.worker, operation.expected or ""]
                args += [operation.event.event_id, operation.event.data]
            else:
                args += ["r", operation.key, operation.worker]
                args += [operation.event.event_id, operation.event.data]
        with self._translate_errors():
            keys = self._keys + self._id_buckets(at)
            if self._wait_replicas:
                replies = await self._commit_replicated(keys, args)
            else:
                replies = await self._commit_script(keys, args)
        results: list[object] = []
        for operation, reply in zip(operations, replies, strict=True):
            if isinstance(operation, Append):
                results.append(list(reply))
            elif isinstance(operation, Claim):
                results.append(reply.decode() if reply else None)
            else:
                results.append(bool(reply))
        return results

    async def _commit_replicated(self, keys: list[str], args: list[Any]) -> Any:
        """The commit, then WAIT on the same connection: WAIT counts the replicas
        that have that connection's writes."""
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._commit_script(keys, args, client=pipe)
            pipe.execute_command("WAIT", self._wait_replicas, int(self._wait_timeout * 1000))
            replies, replicas = await pipe.execute()
        if replicas < self._wait_replicas:
            # Written here, maybe lost by a failover: not acknowledged (a retry with
            # the same event ids stores nothing twice).
            raise LogUnavailable(
                f"{self.url}: {replicas} of {self._wait_replicas} replicas had the commit "
                f"after {self._wait_timeout} s"
            )
        return replies

    def _id_buckets(self, at: float) -> list[str]:
        """The id hashes of the buckets before, of and after time ``at``."""
        bucket = int(at // self._dedupe_window)
        return [f"{self._ids_prefix}{n}" for n in (bucket - 1, bucket, bucket + 1)]

    async def _entries(self, after: int, limit: int) -> list[list[Any]]:
        with self._translate_errors():
            return await self._redis.xrange(self._stream, f"(0-{after}", "+", count=limit)

    async def _read_rows(self, after: int, limit: int) -> list[LogRow]:
        return _rows(await self._entries(after, limit))

    async def _read_chained(self, after: int, limit: int) -> list[ChainedRow]:
        return _chained_rows(await self._entries(after, limit))

    async def _start(self) -> tuple[int, bytes]:
        with self._translate_errors():
            position, chain = await self._redis.hmget(self._start_key, ["position", "chain"])
        if position is None:
            return 1, GENESIS
        return int(position), bytes.fromhex(chain.decode())

    async def _trim(self, before: int, anchor: bytes, expected_start: int) -> int:
        with self._translate_errors():
            start = await self._trim_script(
                [self._start_key, self._stream], [before, anchor.hex(), expected_start]
            )
        return int(start)

    async def _hot_size(self) -> int:
        """The stream's bytes in server memory, as ``MEMORY USAGE`` estimates them from
        its oldest nodes (of up to a hundred entries or 4 KiB each). Not every node:
        ``SAMPLES 0`` walks them all, and blocks the server 0.8-1.5 s for a million
        entries here. Not the id hashes: they are bounded by the dedupe window and
        expire on their own, and no trim of the hot log changes them."""
        with self._translate_errors():
            return await self._redis.memory_usage(self._stream, samples=HOT_SIZE_SAMPLES) or 0

    async def _tail_rows(self, after: int, limit: int) -> list[LogRow]:
        while True:
            self.stats.queries += 1
            with self._translate_errors():
                # The entry at ``after`` read once the new ones came, in one round trip.
                async with self._tail_redis.pipeline(transaction=False) as pipe:
                    pipe.xread({self._stream: f"0-{after}"}, count=limit, block=self._block_ms)
                    if after:
                        pipe.xrange(self._stream, f"0-{after}", f"0-{after}")
                    reply, *read_before = await pipe.execute()
            if reply:
                # One stream asked for: RESP3 answers a map, RESP2 a list of pairs.
                (_, entries) = next(iter(reply.items())) if isinstance(reply, dict) else reply[0]
                return _rows(read_before[0] if read_before else []) + _rows(entries)

    async def _head(self) -> int:
        with self._translate_errors():
            head = await self._redis.get(self._keys[1])
        return int(head or 0)

    async def _save_snapshot(self, name: str, position: int, data: bytes, replace: bool) -> None:
        keys, args = [self._snapshot_prefix + name], [position, data, int(replace)]
        with self._translate_errors():
            await self._save_snapshot_script(keys, args)

    async def _load_snapshot(self, name: str) -> bytes | None:
        with self._translate_errors():
            return await self._redis.hget(self._snapshot_prefix + name, "data")

    async def _close(self) -> None:
        for client in (self._redis, self._tail_redis):
            with contextlib.suppress(redis_exc.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE):
                    await client.aclose()
            # What aclose() could not close in time (a connection stuck in a read).
            await client.connection_pool.disconnect(inuse_connections=True)
