"""What every store operation shares: the client, the signer, the key cache and the Lua
scripts; and the turning of redis-py's errors into nbtasks' own, so that no other module
needs to know redis-py's exceptions."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from ..errors import ConnectionLost, PayloadRejected, RedisUnavailable, WritesRefused
from ..keys import REGISTRY, KeyCache
from ..trust import INPUT, Signer
from . import lua
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
        self._add = self.client.register_script(lua.ADD)
        self._read_buckets = self.client.register_script(lua.READ_BUCKETS)
        self._set_counts = self.client.register_script(lua.SET_COUNTS)
        self._drop_idle = self.client.register_script(lua.DROP_IDLE)

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

    def _open_input(self, job: str, index: int, blob: bytes | None) -> bytes | PayloadRejected:
        try:
            return self.signer.open(job, index, INPUT, blob or b"")
        except PayloadRejected as exc:
            return exc


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
