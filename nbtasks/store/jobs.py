"""Store operations on a job's definition: its metadata, its inputs and their index, the
views of its lists, and the registry of jobs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import PayloadRejected
from ..keys import FORMAT, REGISTRY
from ..trust import FUNCTION, INDEX, INPUT, VIEW
from .base import StoreBase
from .bits import BATCH, batches, by_bucket, byte_batches, done_and_pending, pack, unpack
from .records import JobRecord, decoded

COMPACT_MIN = 32 << 20  # an append-only file smaller than this is not worth rewriting
INPUT_BATCH = 25_000  # inputs per index.ADD call: each call reads and writes every bucket it touches
Prepared = tuple[list[bytes], list[bytes | int]]  # one index.ADD call: the digests, and its arguments
RANGE = b"r"  # a view of consecutive indices: this, then its start and stop (not 4 bytes per item)


class JobOps(StoreBase):
    def meta(self, job: str) -> JobRecord | None:
        """The job's metadata, typed; None when the store holds no such job."""
        return JobRecord.parse(job, decoded(self.client.hgetall(self.keys[job].meta)))

    def lookup(self, job: str, digests: list[bytes]) -> list[int | None]:
        """The index of each input (by the digest of its value) the job holds, else None."""
        if not digests:
            return []
        k = self.keys[job]
        level, split, count = self.client.hmget(k.meta, "ix_level", "ix_split", "ix_count")
        if not count:
            return [None] * len(digests)  # a job with no inputs yet
        # Each digest's bucket, as index.ADD places it. Should a bucket split meanwhile, a
        # digest is not found here and ADD finds it: never two indices for one input.
        buckets = by_bucket(digests, int(level or 0), int(split or 0))
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
        return self.send_inputs(job, self.prepare_inputs(job, digests, payload))

    def prepare_inputs(self, job: str, digests: list[bytes], payload: Callable[[int], bytes]) -> list[Prepared]:
        """The first half of `add_inputs`: indices reserved, payloads sealed, the calls
        of index.ADD made ready (so that a thread may send them while the next are made)."""
        if not digests:
            return []
        first = int(self.client.hincrby(self.keys[job].meta, "size", len(digests))) - len(digests)
        calls: list[Prepared] = []
        for start, batch in byte_batches(len(digests), payload, INPUT_BATCH):
            mine = digests[start : start + len(batch)]
            sealed = self._seal(job, INPUT, [(first + start + offset, data) for offset, data in enumerate(batch)])
            tags = self._tags(job, mine, range(first + start, first + start + len(batch)))
            calls.append((mine, [first + start, len(mine[0]), b"", b"".join(mine), tags, *sealed]))
        return calls

    def send_inputs(self, job: str, calls: list[Prepared], expect: int = 0) -> list[int]:
        """The second half of `add_inputs`: store the inputs; the index of each. An empty
        index is made for `expect` inputs at once (the caller's whole list)."""
        k = self.keys[job]
        out: list[int] = []
        for digests, args in calls:
            held = self._add(keys=[k.meta, k.inputs], args=[k.index, expect, *args])
            out += [self._index_of(job, d, e) for d, e in zip(digests, held, strict=True)]
        return out

    def holds_inputs(self, job: str) -> bool:
        """Whether the job's index holds any input yet."""
        return bool(self.client.hexists(self.keys[job].meta, "ix_count"))

    def _tags(self, job: str, digests: Sequence[bytes], indices: Sequence[int]) -> bytes:
        """With a secret, the signature of each index entry (its digest, bound to its index,
        so that no one can point an input at another's result), packed; else nothing."""
        if not self.signer.enabled:
            return b""
        return b"".join(self.signer.sign(job, i, INDEX, d) for d, i in zip(digests, indices, strict=True))

    def _index_of(self, job: str, digest: bytes, entry: bytes) -> int:
        number, _, signed = entry.partition(b":")
        index = int(number)
        if (signed or self.signer.enabled) and self.signer.open(job, index, INDEX, signed) != digest:
            raise PayloadRejected(job, index, "its index entry was made for another input")
        return index

    def index_inputs(self, job: str, entries: dict[bytes, int]) -> None:
        """Note the digests of inputs stored by an earlier nbtasks (see job.upgrade)."""
        k = self.keys[job]
        items = list(entries.items())
        for start in range(0, len(items), BATCH):
            digests, indices = zip(*items[start : start + BATCH], strict=True)
            packed = b"".join(i.to_bytes(4, "big") for i in indices)
            tags = self._tags(job, digests, indices)
            head: list[bytes | str | int] = [k.index, len(entries), 0, len(digests[0]), packed, b"".join(digests), tags]
            self._add(keys=[k.meta, k.inputs], args=head + [b""] * len(digests))

    def upgraded(self, job: str, size: int) -> None:
        self.client.hset(self.keys[job].meta, mapping={"size": size, "format": FORMAT})

    def view(self, job: str, list_digest: str) -> tuple[Sequence[int], int, bool] | None:
        """The indices of a list of inputs stored before (a range when consecutive), how
        many are distinct, and whether each had a result when last looked."""
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
        held = packed[start + 4 :]
        if len(held) == len(RANGE) + 8 and held.startswith(RANGE):
            return (
                range(int.from_bytes(held[1:5], "little"), int.from_bytes(held[5:], "little")),
                distinct,
                bool(complete),
            )
        return unpack(held), distinct, bool(complete)

    def save_view(self, job: str, list_digest: str, indices: Sequence[int], distinct: int) -> None:
        # The list's digest inside the signed bytes too: no view can be moved to another list.
        # A range (define gives a new job's consecutive indices so) is kept as itself: 9
        # bytes, not 4 per item.
        if isinstance(indices, range) and indices.step == 1:
            held = RANGE + indices.start.to_bytes(4, "little") + indices.stop.to_bytes(4, "little")
        else:
            held = pack(indices)
        data = list_digest.encode() + distinct.to_bytes(4, "little") + held
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
        indices = range(start, start + len(payloads))
        return dict(zip(indices, self._seal(job, INPUT, list(zip(indices, payloads, strict=True))), strict=True))

    def reserve_inputs(self, job: str, count: int) -> int:
        """Reserve `count` indices after those already appended; the first of them."""
        return int(self.client.hincrby(self.keys[job].meta, "reserved", count)) - count

    def append_inputs(self, job: str, start: int, payloads: list[bytes]) -> int:
        """Store inputs at the indices reserved from `start`; the job's new total."""
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=False)
        for offset, chunk in batches(payloads, BATCH):
            pipe.hset(k.inputs, mapping=self._signed_inputs(job, start + offset, chunk))
            pipe.execute()
        return int(self._grow(keys=[k.meta], args=[start + len(payloads)]))

    def define(self, job: str, meta: dict[str, Any], func: bytes | None) -> None:
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(k.meta, mapping={"format": FORMAT, **meta, "used": time.time()})
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
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.meta, "ix_count")  # (the inputs hash holds chunks: its length counts fields)
        pipe.hlen(k.inputs)
        pipe.bitcount(k.done)
        indexed, fields, results = pipe.execute()
        return int(indexed if indexed is not None else fields), int(results)

    def function(self, job: str) -> bytes | None:
        """The job's pickled function (PayloadRejected if its signature fails)."""
        blob: bytes | None = self.client.get(self.keys[job].func)
        return self.signer.open(job, -1, FUNCTION, blob) if blob is not None else None

    def _every_key(self, job: str) -> list[str | bytes]:
        k = self.keys[job]
        level, split = self.client.hmget(k.meta, "ix_level", "ix_split")
        buckets = 2 ** int(level or 0) + int(split or 0)
        return k.all(self.client.smembers(k.workers), buckets, self.client.zrange(k.keywait, 0, -1))

    def delete(self, job: str) -> int:
        """Delete the job and its large payloads; the bytes these took outside Redis."""
        held = self.client.smembers(self.keys[job].blobs)
        self.client.delete(*self._every_key(job))
        self.client.srem(REGISTRY, job)
        return self._drop_blobs(held)

    def delete_if_idle(self, job: str) -> int | None:
        """Delete the job unless a caller runs it now (one atomic step): None if it runs,
        else the bytes its large payloads took outside Redis."""
        held = self.client.smembers(self.keys[job].blobs)
        if not self._drop_idle(keys=[self.keys[job].owner, *self._every_key(job)]):
            return None
        self.client.srem(REGISTRY, job)
        return self._drop_blobs(held)

    def compact(self) -> bool:
        """On nbtasks' own server, rewrite the append-only file once most of it describes
        deleted jobs, so that deleting gives the disk back; whether a rewrite began."""
        if self.revive is None:
            return False  # a server you run keeps its own schedule (auto-aof-rewrite-percentage)
        persistence = self.client.info("persistence")
        if not persistence.get("aof_enabled") or persistence.get("aof_rewrite_in_progress"):
            return False
        # (used_memory, not used_memory_dataset: Valkey 9 can report the latter below zero,
        # as a huge unsigned number, right after a large deletion)
        size, live = int(persistence.get("aof_current_size", 0)), int(self.client.info("memory")["used_memory"])
        if size < COMPACT_MIN or size < 2 * live:
            return False
        return bool(self.client.bgrewriteaof())

    def sizes(self, records: list[JobRecord]) -> list[int]:
        """About how many bytes each job takes, in one round trip for all: the server's
        memory for its keys (but those of single workers, which are small) and its large
        payloads kept outside Redis."""
        pipe = self.client.pipeline(transaction=False)
        counts = []
        for record in records:
            keys = [key for key in self.keys[record.name].all([], record.index_buckets) if isinstance(key, str)]
            for key in keys:
                pipe.memory_usage(key)
            counts.append(len(keys))
        used = iter(pipe.execute() if records else [])
        memory = [sum(int(next(used) or 0) for _ in range(n)) for n in counts]
        return [m + record.blob_bytes for m, record in zip(memory, records, strict=True)]

    def snapshot(self, jobs: list[str]) -> list[tuple[JobRecord | None, list[int], bool]]:
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
        for job, i in zip(jobs, range(0, len(replies), 4), strict=True):
            counts = [int(c or 0) for c in replies[i + 1]] + [int(replies[i + 3])]
            out.append((JobRecord.parse(job, decoded(replies[i])), counts, bool(replies[i + 2])))
        return out
