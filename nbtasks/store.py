"""Every Redis key name and every Redis call. The only module that imports redis.

All keys of one job share the hash tag ``{job}``, so a job lives in one slot of a Redis
Cluster and the Lua scripts below may touch several of its keys.

    nbtasks:jobs                 set    names of every job (so status needs no KEYS)
    nbtasks:{job}:meta           hash   format, size, total, list, ready, func label and digests
    nbtasks:{job}:func           string the pickled function, stored again at every run
    nbtasks:{job}:inputs         hash   index -> pickled input (each distinct input once)
    nbtasks:{job}:index:<n>      hash   digest of an input's value -> its index, in buckets (see lua.ADD)
    nbtasks:{job}:views          hash   digest of a call's list -> the index of each of its items
    nbtasks:{job}:complete       set    digests of lists whose every item has a result
    nbtasks:{job}:queue          list   indices waiting for a worker
    nbtasks:{job}:claims:<wid>   hash   index -> when a worker took it (not yet recorded)
    nbtasks:{job}:alive:<wid>    string set while a worker on another machine lives; expires
    nbtasks:{job}:workers        set    worker ids of the current run
    nbtasks:{job}:done           bitmap bit i set once item i has a recorded result
    nbtasks:{job}:results        hash   index -> pickled result
    nbtasks:{job}:failures       hash   index -> pickled final failure (cleared at each run)
    nbtasks:{job}:attempts       hash   index -> failed attempts in this run
    nbtasks:{job}:history        hash   index -> one line per failed attempt in this run
    nbtasks:{job}:delayed        zset   indices waiting to be retried, by due time (ms)
    nbtasks:{job}:deaths         hash   index -> times a worker died while running it
    nbtasks:{job}:rate           string the rate limit's next free turn (ms)
    nbtasks:{job}:counts         hash   done, failed, running (claimed, not recorded)
    nbtasks:{job}:owner          string token of the caller running the job; expires
                                        when the caller stops refreshing it
    nbtasks:{job}:cancel         string set to ask whoever runs the job to stop
    nbtasks:{job}:fatal          string why a worker could not start
    nbtasks:{job}:refused        hash   host and Python -> why a worker there refused the job
    nbtasks:{job}:finished       list   pushed when the last item settles: wakes the caller
    nbtasks:{job}:output         stream what tasks printed and logged: item, stream, text, worker
"""

from __future__ import annotations

import ipaddress
import random
import re
import sys
import time
import uuid
import warnings
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from . import lua
from .errors import ConfigError, PayloadRejected, RedisUnavailable, SecurityWarning
from .output import KEEP, Output, OutputLine
from .trust import FAILURE, FUNCTION, INDEX, INPUT, RESULT, VIEW, Signer

RedisError = redis.RedisError  # for callers that must not import redis themselves
# Errors that pass when the server is back (a restart, a failover), and refusals to write.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
REFUSED = (redis.OutOfMemoryError, redis.ReadOnlyError)

FORMAT = "2"  # 1: one job per list of inputs; 2: a job's inputs are distinct, and lists are views
REGISTRY = "nbtasks:jobs"
BATCH = 10_000  # items per pipelined round trip when storing or gathering
BATCH_BYTES = 16 << 20  # bytes of inputs per round trip when storing
RATE_WINDOW_MS = 50  # a rate limit grants the turns that fall within this much time


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt of one item gave: kind "1" a result, "r" a failure that may be
    retried, "0" a final failure; `line` is the failure in one line, for the history."""

    index: int
    kind: str
    payload: bytes
    line: str = ""


@dataclass(frozen=True)
class Counts:
    """A snapshot of a job's counters."""

    total: int
    done: int
    failed: int
    running: int = 0
    owner: str = "us"  # who runs the job: "us", "other" (another caller), "none", "cancel"
    retrying: int = 0  # failed attempts waiting for their retry
    epoch: str | None = None  # which incarnation of the job the server holds

    @property
    def settled(self) -> int:
        return self.done + self.failed


PARTS = (
    "meta", "func", "inputs", "views", "complete", "queue", "workers", "done", "results", "failures",
    "attempts", "history", "delayed", "deaths", "rate", "counts", "owner", "cancel", "fatal", "finished", "refused",
    "output",
)  # fmt: skip
RUN_STATE = ("queue", "failures", "attempts", "history", "delayed", "deaths", "fatal", "cancel", "finished", "refused")


class JobKeys:
    """The key names of one job: ``keys.meta``, ``keys.queue``... (see PARTS)."""

    def __init__(self, job: str) -> None:
        # Braces would end the hash tag early; escape them (and '%', the escape itself).
        tag = job.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        self.prefix = f"nbtasks:{{{tag}}}:"
        for part in PARTS:
            setattr(self, part, self.prefix + part)

    meta: str
    func: str
    inputs: str
    views: str
    complete: str
    queue: str
    workers: str
    done: str
    results: str
    failures: str
    attempts: str
    history: str
    delayed: str
    deaths: str
    rate: str
    counts: str
    owner: str
    cancel: str
    fatal: str
    finished: str
    refused: str
    output: str

    def claims(self, wid: str) -> str:
        return f"{self.prefix}claims:{wid}"

    def alive(self, wid: str) -> str:
        return f"{self.prefix}alive:{wid}"

    @property
    def index(self) -> str:
        """The prefix of the index's buckets: ``index:0``, ``index:1``..."""
        return f"{self.prefix}index:"

    def all(self, wids: Iterable[bytes], buckets: int = 0) -> list[str]:
        """Every key of the job, given the ids of its workers and its index's buckets."""
        per_worker = [key for w in wids for key in (self.claims(w.decode()), self.alive(w.decode()))]
        index = [f"{self.index}{b}" for b in range(buckets)]
        return [self.prefix + part for part in PARTS] + per_worker + index


def pending_indices(bitmap: bytes, total: int) -> Iterator[int]:
    """Indices below `total` whose bit is clear (Redis numbers bits from the high end)."""
    for byte_no in range(0, (total + 7) // 8):
        byte = bitmap[byte_no] if byte_no < len(bitmap) else 0
        if byte == 0xFF:
            continue
        base = byte_no * 8
        for bit in range(8):
            if not byte & (0x80 >> bit) and base + bit < total:
                yield base + bit


def count_bits(bitmap: bytes, start: int, stop: int) -> int:
    """How many bits of `bitmap` are set in [start, stop)."""
    if stop <= start:
        return 0
    first, last = start >> 3, (stop + 7) >> 3
    value = int.from_bytes(bitmap[first:last].ljust(last - first, b"\0"), "big")
    value >>= (-stop) & 7  # the bits past `stop` in the last byte
    return (value & ((1 << (stop - start)) - 1)).bit_count()  # and those before `start`


def done_bits(bitmap: bytes, indices: Iterable[int]) -> list[bool]:
    """Per index, whether its bit is set in `bitmap`."""
    size = len(bitmap)
    return [(i >> 3) < size and bool(bitmap[i >> 3] & (0x80 >> (i & 7))) for i in indices]


def done_and_pending(bitmap: bytes, indices: Sequence[int]) -> tuple[int, Iterator[int]]:
    """How many of `indices` have their bit set in `bitmap`, and the others, lazily. A
    range (a new job's list, a script's job) is counted without a look at each index."""
    if isinstance(indices, range):
        pending = (i for i in pending_indices(bitmap, indices.stop) if i >= indices.start)
        return count_bits(bitmap, indices.start, indices.stop), pending
    bits = done_bits(bitmap, indices)
    return sum(bits), (i for i, done in zip(indices, bits, strict=True) if not done)


def pack(indices: Iterable[int]) -> bytes:
    """Indices as 4-byte little-endian integers (a list of a million: 4 MB)."""
    packed = array("I", indices)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack(data: bytes) -> array[int]:
    packed = array("I")
    packed.frombytes(data)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed


def _batches(items: Iterable[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    """(offset, up to `size` items) from any iterable, without holding more."""
    batch: list[Any] = []
    offset = 0
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield offset, batch
            offset, batch = offset + size, []
    if batch:
        yield offset, batch


def _by_bucket(digests: list[bytes], level: int, split: int) -> dict[int, list[int]]:
    """The positions of `digests` by the index bucket each lives in (as lua.ADD places them)."""
    buckets: dict[int, list[int]] = {}
    for i, digest in enumerate(digests):
        h = int.from_bytes(digest[:4], "big")
        at = h % (1 << level)
        buckets.setdefault(h % (2 << level) if at < split else at, []).append(i)
    return buckets


def _byte_batches(count: int, payload: Callable[[int], bytes]) -> Iterator[tuple[int, list[bytes]]]:
    """(first position, payloads) of the `count` payloads, made as they are needed, in
    batches of at most BATCH and about BATCH_BYTES."""
    batch: list[bytes] = []
    size = start = 0
    for i in range(count):
        data = payload(i)
        if batch and (len(batch) == BATCH or size + len(data) > BATCH_BYTES):
            yield start, batch
            batch, size, start = [], 0, i
        batch.append(data)
        size += len(data)
    if batch:
        yield start, batch


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    """A connection to the Redis that holds the jobs."""

    def __init__(self, client: redis.Redis | RedisCluster, url: str) -> None:
        # Typed loosely: redis-py's annotations cannot know decode_responses=False.
        self.client: Any = client
        self.url = url
        self.revive: Callable[[], object] | None = None  # restarts the server, if it is ours
        self.signer = Signer.from_environment()
        self._claim = client.register_script(lua.CLAIM)
        self._record = client.register_script(lua.RECORD)
        self._poll = client.register_script(lua.POLL)
        self._requeue = client.register_script(lua.REQUEUE)
        self._unclaim = client.register_script(lua.UNCLAIM)
        self._bury = client.register_script(lua.BURY)
        self._take = client.register_script(lua.TAKE)
        self._release = client.register_script(lua.RELEASE)
        self._grow = client.register_script(lua.GROW)
        self._add = client.register_script(lua.ADD)
        self._read_buckets = client.register_script(lua.READ_BUCKETS)
        self._set_counts = client.register_script(lua.SET_COUNTS)

    @classmethod
    def connect(cls, target: str | redis.Redis | RedisCluster) -> Store:
        """Connect to a URL or adopt a redis-py client, and check that it answers."""
        client: redis.Redis | RedisCluster
        if isinstance(target, redis.Redis):
            client, url = target, client_url(target)
        elif isinstance(target, RedisCluster):
            client, url = target, _cluster_url(target)
        elif isinstance(target, str):
            client, url = _client_for(target), target
        else:
            raise ConfigError(
                "redis= takes a URL, a redis.Redis or a redis.cluster.RedisCluster client, "
                f"not {type(target).__name__}."
            )
        store = cls(client, url)
        store.check()
        if not store.signer.enabled and _reachable_from_other_hosts(url) and url not in _warned:
            _warned.add(url)
            warnings.warn(
                f"nbtasks: Redis at {safe_url(url)} can be reached from other hosts and no secret is set: anyone "
                "who can write to it can run code in your workers and in this process. Set the same "
                "NBTASKS_SECRET (or a key file, see the README) wherever nbtasks runs.",
                SecurityWarning,
                stacklevel=3,
            )
        return store

    def check(self, loading_wait: float = 60.0, restart_wait: float = 3.0) -> None:
        """Raise RedisUnavailable, saying what to do, unless the server answers. A server
        still loading its data is waited for up to `loading_wait` s, and one that refuses
        connections up to `restart_wait` s (it may be restarting)."""
        started = time.monotonic()
        try:
            while True:
                try:
                    self.client.ping()
                    return
                except redis.BusyLoadingError:
                    if time.monotonic() - started > loading_wait:
                        raise
                except redis.ConnectionError:
                    if time.monotonic() - started > restart_wait:
                        raise
                time.sleep(0.05)
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"Cannot reach Redis at {safe_url(self.url)} ({exc}). Start that server, or point "
                "nbtasks at another with pmap(..., redis=URL) or NBTASKS_REDIS_URL."
            ) from None

    @cached_property
    def keys(self) -> _KeyCache:
        return _KeyCache()

    # -- the job's definition --------------------------------------------------

    def meta(self, job: str) -> dict[str, str]:
        raw = self.client.hgetall(self.keys[job].meta)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def lookup(self, job: str, digests: list[bytes]) -> list[int | None]:
        """The index of each input (by the digest of its value) the job holds, else None."""
        if not digests:
            return []
        k = self.keys[job]
        level, split, count = self.client.hmget(k.meta, "ix_level", "ix_split", "ix_count")
        if not count:
            return [None] * len(digests)  # a job with no inputs yet
        # Each digest's bucket, as lua.ADD places it. Should a bucket split meanwhile, a
        # digest is not found here and ADD finds it: never two indices for one input.
        buckets = _by_bucket(digests, int(level or 0), int(split or 0))
        args: list[str | bytes | int] = [k.index]
        for at, positions in buckets.items():
            args += (at, len(positions), *(digests[i] for i in positions))
        entries: list[bytes | None] = [None] * len(digests)
        found = iter(self._read_buckets(keys=[k.meta], args=args))
        for positions in buckets.values():
            for i in positions:
                entries[i] = next(found)
        return [self._index_of(job, d, e) if e is not None else None for d, e in zip(digests, entries, strict=True)]

    def add_inputs(self, job: str, digests: list[bytes], payload: Callable[[int], bytes]) -> list[int]:
        """Store new inputs, given their digests and how to serialize the i-th (called as
        they are stored, so that they are never all in memory); the index of each. One
        that another caller stored meanwhile keeps the index it got there."""
        if not digests:
            return []
        k, sign = self.keys[job], self.signer.sign
        out: list[int] = []
        for start, batch in _byte_batches(len(digests), payload):
            first = int(self.client.hincrby(k.meta, "size", len(batch))) - len(batch)
            args: list[bytes | int] = []
            for offset, data in enumerate(batch):
                index, digest = first + offset, digests[start + offset]
                args += (digest, index, self._index_entry(job, digest, index), sign(job, index, INPUT, data))
            held = self._add(keys=[k.meta, k.inputs], args=[k.index, *args])
            mine = digests[start : start + len(batch)]
            out += [self._index_of(job, d, e) for d, e in zip(mine, held, strict=True)]
        return out

    def holds_inputs(self, job: str) -> bool:
        """Whether the job's index holds any input yet."""
        return bool(self.client.hexists(self.keys[job].meta, "ix_count"))

    def _index_entry(self, job: str, digest: bytes, index: int) -> bytes:
        """What the index holds for an input: its index, and with a secret a signature
        that binds it to the input's digest (so that no one can point an input at
        another's result)."""
        if not self.signer.enabled:
            return b"%d" % index
        return b"%d:" % index + self.signer.sign(job, index, INDEX, digest)

    def _index_of(self, job: str, digest: bytes, entry: bytes) -> int:
        number, _, signed = entry.partition(b":")
        index = int(number)
        if (signed or self.signer.enabled) and self.signer.open(job, index, INDEX, signed) != digest:
            raise PayloadRejected(job, index, "its index entry was made for another input")
        return index

    def index_inputs(self, job: str, entries: dict[bytes, int]) -> None:
        """Note the digests of inputs stored by an earlier nbtasks (see job.upgrade)."""
        k = self.keys[job]
        args: list[bytes | int] = []
        for digest, index in entries.items():
            args += (digest, index, self._index_entry(job, digest, index), b"")
        for start in range(0, len(args), 4 * BATCH):
            self._add(keys=[k.meta, k.inputs], args=[k.index, *args[start : start + 4 * BATCH]])

    def upgraded(self, job: str, size: int) -> None:
        self.client.hset(self.keys[job].meta, mapping={"size": size, "format": FORMAT})

    def view(self, job: str, list_digest: str) -> tuple[array[int], int, bool] | None:
        """The indices of a list of inputs stored before, how many are distinct, and
        whether each had a result when last looked."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys[job].views, list_digest)
        pipe.sismember(self.keys[job].complete, list_digest)
        blob, complete = pipe.execute()
        if blob is None:
            return None
        packed = self.signer.open(job, -2, VIEW, blob)
        start = len(list_digest)
        if packed[:start] != list_digest.encode():
            raise PayloadRejected(job, -2, "a list's view was stored under another list")
        distinct = int.from_bytes(packed[start : start + 4], "little")
        return unpack(packed[start + 4 :]), distinct, bool(complete)

    def save_view(self, job: str, list_digest: str, indices: array[int], distinct: int) -> None:
        # The list's digest inside the signed bytes too: no view can be moved to another list.
        data = list_digest.encode() + distinct.to_bytes(4, "little") + pack(indices)
        self.client.hset(self.keys[job].views, list_digest, self.signer.sign(job, -2, VIEW, data))

    def mark_complete(self, job: str, list_digest: str, complete: bool = True) -> None:
        """Note that every item of the list has a result, so that the same call again
        reads them at once (or, with False, that the store lost some)."""
        if complete:
            self.client.sadd(self.keys[job].complete, list_digest)
        else:
            self.client.srem(self.keys[job].complete, list_digest)

    def use_view(self, job: str, list_digest: str, distinct: int, finished: bool) -> None:
        """Make the list the job's current one: what status, Job(name) and gathering show
        (a finished one's counters say so at once: no run will set them)."""
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(k.meta, mapping={"list": list_digest, "total": distinct, "ready": "1"})
        if finished:
            pipe.hset(k.counts, mapping={"done": distinct, "failed": 0, "running": 0})
        pipe.execute()

    def done_among(self, job: str, indices: Sequence[int]) -> int:
        """How many of `indices` have a recorded result."""
        return done_and_pending(self.client.get(self.keys[job].done) or b"", indices)[0]

    def _signed_inputs(self, job: str, start: int, payloads: list[bytes]) -> dict[int, bytes]:
        sign = self.signer.sign
        return {start + i: sign(job, start + i, INPUT, p) for i, p in enumerate(payloads)}

    def reserve_inputs(self, job: str, count: int) -> int:
        """Reserve `count` indices after those already appended; the first of them."""
        return int(self.client.hincrby(self.keys[job].meta, "reserved", count)) - count

    def append_inputs(self, job: str, start: int, payloads: list[bytes]) -> int:
        """Store inputs at the indices reserved from `start`; the job's new total."""
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=False)
        for offset, chunk in _batches(payloads, BATCH):
            pipe.hset(k.inputs, mapping=self._signed_inputs(job, start + offset, chunk))
            pipe.execute()
        return int(self._grow(keys=[k.meta], args=[start + len(payloads)]))

    def define(self, job: str, meta: dict[str, Any], func: bytes | None) -> None:
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(k.meta, mapping={"format": FORMAT, **meta})
        pipe.hsetnx(k.meta, "created", time.time())
        pipe.hsetnx(k.meta, "epoch", uuid.uuid4().hex)  # tells this job from one stored again
        if func is not None:
            pipe.set(k.func, self.signer.sign(job, -1, FUNCTION, func))
        pipe.execute()
        self.client.sadd(REGISTRY, job)  # another slot on a Cluster: not in the transaction

    def note(self, job: str, **fields: str) -> None:
        """Set fields of the job's meta (e.g. the caller's logging, for its workers)."""
        self.client.hset(self.keys[job].meta, mapping=fields)

    def done_count(self, job: str) -> int:
        return int(self.client.bitcount(self.keys[job].done))

    def held(self, job: str) -> tuple[int, int]:
        """What deleting the job deletes: its inputs and its results, for every list."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.keys[job].inputs)
        pipe.bitcount(self.keys[job].done)
        inputs, results = pipe.execute()
        return int(inputs), int(results)

    def function(self, job: str) -> bytes | None:
        """The job's pickled function (PayloadRejected if its signature fails)."""
        blob: bytes | None = self.client.get(self.keys[job].func)
        return self.signer.open(job, -1, FUNCTION, blob) if blob is not None else None

    def delete(self, job: str) -> None:
        k = self.keys[job]
        level, split = self.client.hmget(k.meta, "ix_level", "ix_split")
        buckets = 2 ** int(level or 0) + int(split or 0)
        self.client.delete(*k.all(self.client.smembers(k.workers), buckets))
        self.client.srem(REGISTRY, job)

    # -- one run ---------------------------------------------------------------

    def begin_run(self, job: str, token: str, indices: Sequence[int], ttl: float, resume: bool = False) -> Counts:
        """Take the job over and queue every item of `indices` (distinct) without a
        result, failed ones included; the job's counters count those items.

        Workers of an earlier run see the new owner token and stop claiming; anything
        they still record is idempotent. With `resume` (the same run, after an outage or
        a lapsed heartbeat) failures, retries and attempts are kept, and only the
        claims are taken back: items without a result, a failure or a pending retry go
        back to the queue.
        """
        k = self.keys[job]
        self.client.set(k.owner, token, px=int(ttl * 1000))
        pipe = self.client.pipeline(transaction=True)
        pipe.get(k.done)
        pipe.hkeys(k.failures)
        pipe.zrange(k.delayed, 0, -1)
        pipe.smembers(k.workers)
        bitmap, failed, delayed, wids = pipe.execute()
        total, bitmap = len(indices), bitmap or b""
        waiting = {int(i) for i in [*failed, *delayed]} if resume else set()
        known, without = done_and_pending(bitmap, indices)
        pending = [i for i in without if i not in waiting]  # (the one list of them: a million ints, 36 MB)
        claims = [k.claims(w.decode()) for w in wids]
        if resume:
            pipe.delete(k.queue, *claims)
        else:
            pipe.delete(k.workers, *(getattr(k, part) for part in RUN_STATE), *claims)
            pipe.hset(k.meta, mapping={"started": time.time(), "done_at_start": known, "workers": 0})
            pipe.hdel(k.meta, "ended")
        pipe.hset(k.meta, "total", total)  # what the last item's record compares with
        pipe.execute()
        for chunk in _chunks(pending, BATCH):
            pipe.rpush(k.queue, *chunk)
            pipe.execute()
        # Bits set since the bitmap was read are items recorded meanwhile: counted too.
        seen = int.from_bytes(bitmap, "big").bit_count()
        done, failed_count = self._set_counts(keys=[k.counts, k.failures, k.done], args=[known, seen])
        return Counts(total, int(done), int(failed_count))

    def wait_finished(self, job: str, timeout: float) -> bool:
        """Block up to `timeout` seconds for the job's last item to settle."""
        return self.client.blpop([self.keys[job].finished], timeout=timeout) is not None

    def settled(self, job: str, indices: Sequence[int]) -> int:
        """Items of `indices` with a recorded result or final failure, from the bitmap itself."""
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=False)
        pipe.get(k.done)
        pipe.hkeys(k.failures)
        bitmap, failed = pipe.execute()
        done, pending = done_and_pending(bitmap or b"", indices)
        failed = {int(i) for i in failed}
        return done + (sum(1 for i in pending if i in failed) if failed else 0)

    def poll(self, job: str, token: str, total: int, ttl: float, workers: int = 0) -> Counts:
        """Refresh the caller's heartbeat (and its count of live workers) and read the
        counters, in one round trip."""
        k = self.keys[job]
        keys = [k.owner, k.counts, k.cancel, k.meta, k.delayed]
        owner, done, failed, running, retrying, epoch = self._poll(keys=keys, args=[token, int(ttl * 1000), workers])
        epoch = epoch.decode() if epoch is not None else None
        return Counts(total, int(done), int(failed), int(running), owner.decode(), int(retrying), epoch)

    def cancel(self, job: str, why: str = "cancel") -> bool:
        """Ask whoever runs the job to stop ("reset": it is about to be deleted); False
        if nobody runs it."""
        k = self.keys[job]
        if not self.client.exists(k.owner):
            return False
        self.client.set(k.cancel, why, ex=60)  # unclaimed, it lapses: a cancel is for the run under way
        return True

    def cancel_reason(self, job: str) -> str | None:
        """Why the run under way was asked to stop (see `cancel`), if it was."""
        reason = self.client.get(self.keys[job].cancel)
        return reason.decode() if reason is not None else None

    def end_run(self, job: str, token: str) -> None:
        """Release the job (if still ours): its workers see the owner gone and exit."""
        k = self.keys[job]
        self._release(keys=[k.owner, k.cancel, k.meta], args=[token, time.time()])

    def owner(self, job: str) -> str | None:
        value = self.client.get(self.keys[job].owner)
        return value.decode() if value is not None else None

    def job_names(self) -> list[str]:
        return sorted(name.decode() for name in self.client.smembers(REGISTRY))

    def snapshot(self, jobs: list[str]) -> list[tuple[dict[str, str], list[int], bool]]:
        """Per job, in one round trip for all: its meta, its counters (done, failed,
        running, retrying) and whether a caller runs it now."""
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            k = self.keys[job]
            pipe.hgetall(k.meta)
            pipe.hmget(k.counts, "done", "failed", "running")
            pipe.exists(k.owner)
            pipe.zcard(k.delayed)
        replies = pipe.execute()
        out = []
        for i in range(0, len(replies), 4):
            meta = {key.decode(): value.decode() for key, value in replies[i].items()}
            counts = [int(c or 0) for c in replies[i + 1]] + [int(replies[i + 3])]
            out.append((meta, counts, bool(replies[i + 2])))
        return out

    # -- workers ---------------------------------------------------------------

    def claim(self, job: str, token: str, wid: str, count: int) -> list[tuple[int, bytes | PayloadRejected]] | None:
        """Take up to `count` items in one round trip; None once the caller let go. An
        input whose signature fails comes as the PayloadRejected error, not as bytes."""
        k = self.keys[job]
        keys = [k.owner, k.queue, k.claims(wid), k.inputs, k.workers, k.counts, k.delayed]
        reply = self._claim(keys=keys, args=[token, count, wid])
        if reply is None:
            return None
        if not reply:
            return []
        indices, payloads = reply
        return [(int(i), self._open_input(job, int(i), p)) for i, p in zip(indices, payloads, strict=True)]

    def _open_input(self, job: str, index: int, blob: bytes | None) -> bytes | PayloadRejected:
        try:
            return self.signer.open(job, index, INPUT, blob or b"")
        except PayloadRejected as exc:
            return exc

    def record(self, job: str, wid: str, outcomes: Iterable[Outcome], retries: int = 0, delay: float = 0.0) -> None:
        """Record results and failures of one worker, atomically and idempotently; a
        retryable failure with attempts left waits `delay` x 2^(attempt-1) s, jittered."""
        k = self.keys[job]
        args: list[Any] = [retries, delay * 1000]
        sign = self.signer.sign
        for o in outcomes:
            payload = sign(job, o.index, RESULT if o.kind == "1" else FAILURE, o.payload)
            args += (o.index, o.kind, payload, random.uniform(0.75, 1.25), o.line)
        if len(args) > 2:
            keys = [k.done, k.results, k.failures, k.counts, k.claims(wid), k.attempts, k.history, k.delayed]
            self._record(keys=[*keys, k.meta, k.finished], args=args)

    def requeue(self, job: str, wid: str) -> int:
        """Give a stopped worker's unfinished items back to the queue; how many went back."""
        k = self.keys[job]
        return int(self._requeue(keys=[k.claims(wid), k.queue, k.done, k.counts]))

    def unclaim(self, job: str, wid: str, indices: list[int]) -> int:
        """Give back items a worker claimed and has not started; how many went back."""
        k = self.keys[job]
        return int(self._unclaim(keys=[k.claims(wid), k.queue, k.done, k.counts], args=indices))

    def bury(self, job: str, wid: str, culprit: int, limit: int, payload: bytes, line: str) -> int:
        """A worker died executing `culprit` (-1: none): requeue its unfinished items,
        counting the death against the culprit, which fails after `limit` deaths.
        Returns how many items the worker had claimed."""
        k = self.keys[job]
        keys = [k.claims(wid), k.queue, k.done, k.counts, k.deaths, k.failures, k.history, k.attempts]
        signed = self.signer.sign(job, culprit, FAILURE, payload)
        return int(self._bury(keys=keys, args=[culprit, limit, signed, line]))

    # -- workers on other machines ---------------------------------------------

    def alive(self, job: str, wid: str, ttl: float) -> None:
        """A worker on another machine lives; said again before `ttl` seconds pass."""
        self.client.set(self.keys[job].alive(wid), 1, px=int(ttl * 1000))

    def lost_workers(self, job: str, local: Callable[[str], bool]) -> list[str]:
        """Workers of other machines whose heartbeat expired (a cut link, a dead host):
        their unfinished items go back to the queue, and they leave the run."""
        k = self.keys[job]
        remote = [w.decode() for w in self.client.smembers(k.workers) if not local(w.decode())]
        if not remote:
            return []
        pipe = self.client.pipeline(transaction=False)
        for wid in remote:
            pipe.exists(k.alive(wid))
        lost = [wid for wid, alive in zip(remote, pipe.execute(), strict=True) if not alive]
        for wid in lost:
            self.requeue(job, wid)
            self.client.srem(k.workers, wid)
        return lost

    def refuse(self, job: str, who: str, message: str) -> None:
        """Note why a worker (`who`: its host and Python) cannot run the job."""
        self.client.hset(self.keys[job].refused, who, message)

    def refusals(self, job: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys[job].refused).items()}

    def runs(self) -> list[tuple[str, str, dict[str, str], int]]:
        """Jobs a caller runs now: name, the run's token, meta, and items waiting
        (queued or to be retried)."""
        names = self.job_names()
        pipe = self.client.pipeline(transaction=False)
        for job in names:
            k = self.keys[job]
            pipe.get(k.owner)
            pipe.hgetall(k.meta)
            pipe.llen(k.queue)
            pipe.zcard(k.delayed)
        replies = pipe.execute()
        out = []
        for i, job in enumerate(names):
            token, meta, queued, delayed = replies[4 * i : 4 * i + 4]
            if token is not None and meta:
                decoded = {key.decode(): value.decode() for key, value in meta.items()}
                out.append((job, token.decode(), decoded, int(queued) + int(delayed)))
        return out

    def take_turns(self, job: str, want: int, per_second: float) -> tuple[int, float]:
        """Turns granted under the job's shared rate limit, or seconds to wait for one."""
        granted, wait_ms = self._take(keys=[self.keys[job].rate], args=[1000 / per_second, want, RATE_WINDOW_MS])
        return int(granted), int(wait_ms) / 1000

    def attempts(self, job: str, indices: list[int]) -> list[tuple[int, str]]:
        """Failed attempts and their one-line history, per index."""
        if not indices:
            return []
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(k.attempts, indices)
        pipe.hmget(k.history, indices)
        counts, lines = pipe.execute()
        return [(int(c or 0), (h or b"").decode()) for c, h in zip(counts, lines, strict=True)]

    def set_fatal(self, job: str, message: str) -> None:
        self.client.set(self.keys[job].fatal, message, ex=3600)

    def fatal(self, job: str) -> str | None:
        value = self.client.get(self.keys[job].fatal)
        return value.decode() if value is not None else None

    # -- gathering -------------------------------------------------------------

    def results(self, job: str, indices: Sequence[int]) -> Iterator[bytes | None]:
        """The result payloads of `indices`, in their order, read in pipelined batches;
        PayloadRejected at the first whose signature fails."""
        blobs = self._hash_in_order(self.keys[job].results, indices)
        if not self.signer.enabled:
            yield from blobs  # nothing to check: no per-item cost
            return
        for index, blob in zip(indices, blobs, strict=True):
            yield self.signer.open(job, index, RESULT, blob) if blob is not None else None

    def append_output(self, job: str, wid: str, lines: list[tuple[int, str, str]]) -> None:
        """Lines tasks wrote (item, stream, text); the job keeps the last KEEP."""
        key = self.keys[job].output
        pipe = self.client.pipeline(transaction=False)
        for index, stream, text in lines:
            pipe.xadd(key, {"i": index, "s": stream, "t": text, "w": wid}, maxlen=KEEP, approximate=True)
        pipe.execute()

    def output(self, job: str, last: int | None = None) -> Output:
        """The job's kept output, oldest first (only the `last` lines, if given)."""
        key = self.keys[job].output
        entries = self.client.xrevrange(key, count=last)[::-1] if last else self.client.xrange(key)
        found = Output(_output_line(entry_id, fields) for entry_id, fields in entries)
        found.cursor = entries[-1][0].decode() if entries else "0-0"
        return found

    def output_cursor(self, job: str) -> str:
        """Where the job's output ends now: `output_since` from here reads what follows."""
        last = self.client.xrevrange(self.keys[job].output, count=1)
        return last[0][0].decode() if last else "0-0"

    def output_since(self, job: str, cursor: str, count: int) -> tuple[list[OutputLine], str]:
        """Up to `count` lines after `cursor`, and the cursor after them."""
        reply = self.client.xread({self.keys[job].output: cursor}, count=count)
        entries = reply[0][1] if reply else []
        lines = [_output_line(entry_id, fields) for entry_id, fields in entries]
        return lines, (entries[-1][0].decode() if entries else cursor)

    def wait_output(self, job: str, cursor: str, timeout: float) -> None:
        """Return once the job's output has lines after `cursor`, or after `timeout` s."""
        self.client.xread({self.keys[job].output: cursor}, count=1, block=max(1, int(timeout * 1000)))

    def failures(self, job: str) -> dict[int, bytes]:
        raw = self.client.hgetall(self.keys[job].failures).items()
        return {int(i): self.signer.open(job, int(i), FAILURE, p) for i, p in raw}

    def inputs(self, job: str, indices: list[int]) -> list[bytes | PayloadRejected | None]:
        """Inputs by index (to show with failures); one whose signature fails comes as
        the PayloadRejected error."""
        blobs = self.client.hmget(self.keys[job].inputs, indices) if indices else []
        return [self._open_input(job, i, b) if b is not None else None for i, b in zip(indices, blobs, strict=True)]

    def _hash_in_order(self, key: str, indices: Sequence[int]) -> Iterator[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        step, total = 1000, len(indices)
        for start in range(0, total, BATCH):
            for sub in range(start, min(start + BATCH, total), step):
                pipe.hmget(key, list(indices[sub : min(sub + step, total)]))
            for values in pipe.execute():
                yield from values


class _KeyCache(dict[str, JobKeys]):
    def __missing__(self, job: str) -> JobKeys:
        keys = self[job] = JobKeys(job)
        return keys


_warned: set[str] = set()


def _output_line(entry_id: bytes, fields: dict[bytes, bytes]) -> OutputLine:
    text = fields.get(b"t", b"").decode("utf-8", errors="replace")
    index = int(fields.get(b"i", b"-1"))
    when = int(entry_id.split(b"-")[0]) / 1000
    return OutputLine(index, fields.get(b"s", b"out").decode(), text, fields.get(b"w", b"").decode(), when)


def _reachable_from_other_hosts(url: str) -> bool:
    """Whether `url` names a server over TCP on an address other than this host's loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return True  # a host name: another machine, as far as we know


def _client_for(url: str) -> redis.Redis | RedisCluster:
    """A client for `url`; for a Redis Cluster (as the server itself says), a cluster client."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    except ValueError as exc:
        raise ConfigError(f"{safe_url(url)} is not a Redis URL: {exc}.") from None
    if url.startswith("unix:"):
        return client  # a Cluster speaks TCP
    try:
        cluster = client.info("cluster").get("cluster_enabled") == 1
    except redis.RedisError:
        return client  # unreachable (check() says so), or a user not allowed INFO: not a Cluster
    if not cluster:
        return client
    client.close()
    return RedisCluster.from_url(url, socket_connect_timeout=5)


def _cluster_url(client: RedisCluster) -> str:
    node = client.get_default_node()  # type: ignore[no-untyped-call]
    kw = client.nodes_manager.connection_kwargs
    auth = ""
    if kw.get("password"):
        auth = f"{quote(kw.get('username') or '', safe='')}:{quote(kw['password'], safe='')}@"
    scheme = "rediss" if kw.get("ssl") else "redis"
    return f"{scheme}://{auth}{node.host}:{node.port}"


def client_url(client: redis.Redis) -> str:
    """A URL from which a worker process can reach the same server as `client`."""
    kw = client.connection_pool.connection_kwargs
    db = kw.get("db", 0)
    auth = ""
    if kw.get("password"):
        user = quote(kw.get("username") or "", safe="")
        auth = f"{user}:{quote(kw['password'], safe='')}@"
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}?db={db}"
    scheme = "rediss" if client.connection_pool.connection_class.__name__ == "SSLConnection" else "redis"
    return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{db}"


def safe_url(url: str) -> str:
    """`url` with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = re.sub(r":[^@]*@", ":***@", parts.netloc, count=1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url
