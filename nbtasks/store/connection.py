"""Connecting: URLs, redis-py clients (a Cluster client when the server says it is one),
and the stores every entry point shares, one per URL; with no URL, nbtasks' own server."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.cluster import RedisCluster

from ..errors import ConfigError, ConnectionLost, RedisUnavailable, SecurityWarning
from ..trust import Signer
from .operations import Store
from .urls import client_url, cluster_url, reachable_from_other_hosts, safe_url

Target = str | redis.Redis | RedisCluster

_stores: dict[str, Store] = {}
_warned: set[str] = set()


def connect(target: Target | Store | None) -> Store:
    """A store for a URL or client (reused across calls for the same URL); with
    neither, the embedded server, started if it is not running. The secret is read
    again at every call, so that setting NBTASKS_SECRET in a notebook takes effect."""
    if isinstance(target, Store):
        store = target
    elif target is None:
        store = _embedded()
    elif not isinstance(target, str):
        store = open_store(target)
    elif (cached := _stores.get(target)) is None:
        store = _stores[target] = open_store(target)
    else:
        store = cached
        store.check()
    store.signer = Signer.from_environment()
    return store


T = TypeVar("T")


def ride_out(store: Store, call: Callable[[], T], limit: float) -> T:
    """`call()`, made again while Redis does not answer (a restart, a failover), for up to
    `limit` seconds; our own server is restarted if it died. For steps that are safe to
    repeat: storing a job's definition (what the same call again would do), reading."""
    started, pause = time.monotonic(), 0.05
    while True:
        try:
            return call()
        except ConnectionLost:
            if time.monotonic() - started > limit:
                raise
        if store.revive is not None:
            with contextlib.suppress(Exception):  # not started yet: the next round tries again
                store.revive()
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def forget() -> None:
    """Drop the cached stores (tests point nbtasks at one server after another)."""
    _stores.clear()


def _embedded() -> Store:
    """nbtasks' own server: one ping when it runs (the cached store's), started or
    restarted only when it does not answer."""
    from .. import server  # (the server module names its keys from here: imported late)

    store = _stores.get(server.url_for(server.home()))
    if store is not None:
        try:
            store.check()
            return store
        except RedisUnavailable:
            pass
    url = server.ensure()
    store = _stores.get(url) or open_store(url)
    _stores[url] = store
    store.revive = server.ensure  # a run restarts our own server if it dies
    return store


def open_store(target: Target) -> Store:
    """Connect to a URL or adopt a redis-py client, and check that it answers."""
    client: redis.Redis | RedisCluster
    if isinstance(target, redis.Redis):
        client, url = target, client_url(target)
    elif isinstance(target, RedisCluster):
        client, url = target, cluster_url(target)
    elif isinstance(target, str):
        client, url = _client_for(target), target
    else:
        raise ConfigError(
            f"redis= takes a URL, a redis.Redis or a redis.cluster.RedisCluster client, not {type(target).__name__}."
        )
    store = Store(client, url)
    store.check()
    if not store.signer.enabled and reachable_from_other_hosts(url) and url not in _warned:
        _warned.add(url)
        warnings.warn(
            f"nbtasks: Redis at {safe_url(url)} can be reached from other hosts and no secret is set: anyone "
            "who can write to it can run code in your workers and in this process. Set the same "
            "NBTASKS_SECRET (or a key file, see the README) wherever nbtasks runs.",
            SecurityWarning,
            stacklevel=4,
        )
    return store


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
