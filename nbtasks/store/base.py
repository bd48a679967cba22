"""What every store operation shares: the client, the signer, the key cache and the Lua
scripts; and the turning of redis-py's errors into nbtasks' own, so that no other module
needs to know redis-py's exceptions."""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from .. import blobs as places
from ..codec import Raw
from ..errors import BlobsUnavailable, ConnectionLost, PayloadRejected, RedisUnavailable, WritesRefused
from ..keys import REGISTRY, STORE_ID, KeyCache
from ..trust import INPUT, Signer
from . import index, lua, payloads
from .bits import BATCH
from .chunks import CHUNK, open_chunk
from .client import as_client
from .urls import safe_url

# Errors that pass when the server is back (a restart, a failover), and refusals to write.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
REFUSED = (redis.OutOfMemoryError, redis.ReadOnlyError)


class StoreBase:
    """A connection to the Redis that holds the jobs."""

    def __init__(self, client: redis.Redis | RedisCluster, url: str) -> None:
        self.client = as_client(client)  # (typed replies: see client)
        self.url = url
        self.revive: Callable[[], object] | None = None  # restarts the server, if it is ours
        self.signer = Signer.from_environment()
        self._claim = self.client.register_script(lua.CLAIM)
        self._record = self.client.register_script(lua.RECORD)
        self._poll = self.client.register_script(lua.POLL)
        self._requeue = self.client.register_script(lua.REQUEUE)
        self._unclaim = self.client.register_script(lua.UNCLAIM)
        self._bury = self.client.register_script(lua.BURY)
        self._take = self.client.register_script(lua.TAKE)
        self._release = self.client.register_script(lua.RELEASE)
        self._grow = self.client.register_script(lua.GROW)
        self._add = self.client.register_script(index.ADD)
        self._read_buckets = self.client.register_script(index.READ_BUCKETS)
        self._set_counts = self.client.register_script(lua.SET_COUNTS)
        self._drop_idle = self.client.register_script(lua.DROP_IDLE)
        self._forget = self.client.register_script(lua.FORGET)
        self._claim_keyed = self.client.register_script(lua.CLAIM_KEYED)
        self._admit = self.client.register_script(lua.ADMIT)
        self._clear_keyed = self.client.register_script(lua.CLEAR_KEYED)
        self._key_states = self.client.register_script(lua.KEY_STATES)

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
    def keys(self) -> KeyCache:
        return KeyCache()

    def job_names(self) -> list[str]:
        return sorted(name.decode() for name in self.client.smembers(REGISTRY))

    @cached_property
    def store_id(self) -> str:
        """This store's id, made once per server: the folder of its jobs' large payloads."""
        self.client.set(STORE_ID, uuid.uuid4().hex[:12], nx=True)
        found = self.client.get(STORE_ID)
        return found.decode() if found is not None else "store"

    def _seal(self, job: str, kind: bytes, items: Sequence[tuple[int, bytes | Raw]]) -> list[bytes]:
        """What Redis is to hold for each (index, pickle) of `job`: see `payloads`. Large
        ones go to the job's place for blobs (this process's own choice, else the one its
        caller chose), noted in the job so that deleting it deletes them."""
        place = None
        if any(payloads.size(data) >= payloads.BLOB_MIN for _, data in items):
            root = places.place_of_job((self.client.hget(self.keys[job].meta, "blobs") or b"").decode())
            place = places.open_blobs(root) if root else None
        folder = places.job_folder(self.store_id, job) if place is not None else ""
        try:
            sealed, written = payloads.seal(self.signer, job, kind, items, place, folder)
        except Exception as exc:  # (all it does besides compressing is write to the place)
            assert place is not None
            raise BlobsUnavailable(
                f"Cannot write large payloads to {place.url}: {type(exc).__name__}: {exc}. Check that place "
                "(free space, permissions, credentials), or choose another: configure(blobs=...) or NBTASKS_BLOBS."
            ) from exc
        if place is not None and written:
            k = self.keys[job]
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(k.blobs, f"{place.url}\0{folder}")
            pipe.hincrby(k.meta, "blob_bytes", written)
            pipe.execute()
        return sealed

    def _items(self, key: str, indices: Sequence[int]) -> Iterator[bytes | None]:
        """The payloads of `indices` in a job's inputs or results hash, in their order, a
        batch at a time: from their chunks (see store.chunks), then, for those not found
        there, from fields of their own (large payloads, and jobs of store format 2)."""
        step, total = 1000, len(indices)
        for start in range(0, total, BATCH):
            batch = indices[start : min(start + BATCH, total)]
            chunks = sorted({i // CHUNK for i in batch})
            packed = self.client.hmget(key, [f"c{k}" for k in chunks])
            opened = {k: open_chunk(blob) for k, blob in zip(chunks, packed, strict=True)}
            values = [opened[i // CHUNK][i % CHUNK] for i in batch]
            missing = [n for n, value in enumerate(values) if value is None]
            if missing:
                pipe = self.client.pipeline(transaction=False)
                for sub in range(0, len(missing), step):
                    pipe.hmget(key, [batch[n] for n in missing[sub : sub + step]])
                found = (value for values in pipe.execute() for value in values)
                for n, value in zip(missing, found, strict=True):
                    values[n] = value
            yield from values

    def _open_inputs(self, job: str, items: Sequence[tuple[int, bytes | None]]) -> list[bytes | PayloadRejected]:
        """Inputs as pickles; one that may not be loaded comes as its PayloadRejected."""
        opened = payloads.unseal(self.signer, job, INPUT, [(i, b"" if p is None else p) for i, p in items])
        return [_input(job, i, p) for (i, _), p in zip(items, opened, strict=True)]

    def _drop_blobs(self, places_used: set[bytes]) -> int:
        """Delete the folders of large payloads a deleted job held; the bytes they took."""
        freed = 0
        for entry in places_used:
            root, _, folder = entry.decode().partition("\0")
            try:
                freed += places.open_blobs(root).remove(folder)
            except Exception:  # noqa: BLE001 (a place unreachable now: its files stay, the job is gone)
                continue
        return freed


def _input(job: str, index: int, opened: bytes | Raw | PayloadRejected | None) -> bytes | PayloadRejected:
    if isinstance(opened, Raw):  # (never written so: results only)
        return PayloadRejected(job, index, "an input came as raw bytes, not a pickle")
    return b"" if opened is None else opened


def nbtasks_error(url: str, exc: redis.RedisError) -> RedisUnavailable:
    """The nbtasks error for a redis-py error met talking to `url`."""
    if isinstance(exc, TRANSIENT):
        return ConnectionLost(safe_url(url), exc)
    if isinstance(exc, REFUSED):
        return WritesRefused(safe_url(url), exc)
    return RedisUnavailable(f"Redis at {safe_url(url)} answered with an error: {exc}.")


C = TypeVar("C", bound=type)


def translating(cls: C) -> C:
    """Wrap every public method of `cls` and its bases so that redis-py's errors leave
    it as nbtasks errors (`nbtasks_error`); generators too, as they are iterated."""
    for klass in reversed(cls.__mro__[:-1]):
        for name, value in vars(klass).items():
            if not name.startswith("_") and inspect.isfunction(value):
                setattr(cls, name, _translated(value))
    return cls


def _translated(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: StoreBase, *args: Any, **kwargs: Any) -> Any:
            try:
                return (yield from method(self, *args, **kwargs))
            except redis.RedisError as exc:
                raise nbtasks_error(self.url, exc) from exc

        return generator

    @functools.wraps(method)
    def call(self: StoreBase, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise nbtasks_error(self.url, exc) from exc

    return call
