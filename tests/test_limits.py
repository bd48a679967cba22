"""Per-key limits: `Limit`, `host` and `Backoff` as a user writes them, and the store's
steps under them against a real Redis (each server the suite runs): which items start,
which wait under their key, and that every way a claim ends gives its slot back."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import pytest
import redis

import nbtasks
from nbtasks import codec
from nbtasks.errors import ConfigError
from nbtasks.store import JobKeys, Outcome, Store, open_store

from .test_store import make_job, ok

NO_RATE = (2, 0.0, 0.0)  # at most 2 of a key at once; no rate
KEYS = ["a", "a", "a", "b", "b", "a"]  # the key of each item of the job below


@dataclass
class Request:
    url: str


def test_host_takes_urls_objects_with_a_url_and_mappings() -> None:
    assert nbtasks.host("https://Example.ORG:8443/a?b=1") == "example.org"
    assert nbtasks.host(b"http://127.0.0.2:81/x") == "127.0.0.2"
    assert nbtasks.host(Request("http://api.example.com/v1")) == "api.example.com"
    assert nbtasks.host({"url": "http://[::1]:8080/"}) == "::1"
    with pytest.raises(ValueError, match="found no host in 'page-1'.*Limit\\(key=...\\)"):
        nbtasks.host("page-1")
    with pytest.raises(ValueError, match="found no host"):
        nbtasks.host(42)


def test_limit_says_what_is_wrong_with_it() -> None:
    with pytest.raises(ConfigError, match="concurrency=...\\) must be 1 or more"):
        nbtasks.Limit(concurrency=0)
    with pytest.raises(ConfigError, match='rate= takes a string like "50/s"'):
        nbtasks.Limit(rate="fast")
    with pytest.raises(ConfigError, match="would limit nothing"):
        nbtasks.Limit(concurrency=None)
    with pytest.raises(ConfigError, match="takes a function of an item"):
        nbtasks.Limit(key="host")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limit= takes nbtasks.Limit"):
        nbtasks.pmap(abs, [1], limit=4)  # type: ignore[arg-type]
    assert nbtasks.Limit(rate="30/min").per_second == 0.5


def test_backoff_reads_retry_after_as_seconds_or_a_date() -> None:
    assert nbtasks.Backoff(2).seconds == 2.0
    assert nbtasks.Backoff("120").seconds == 120.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (nbtasks.Backoff(when).seconds or 0) <= 30
    assert nbtasks.Backoff().seconds is None
    assert nbtasks.Backoff("soon").seconds is None  # unreadable: the key backs off by its own count


def keyed_job(store: Store, job: str) -> str:
    token = make_job(store, job, len(KEYS))
    return token


def claim(store: Store, job: str, token: str, wid: str, want: int, limits=NO_RATE) -> tuple[list[int], list[int]]:
    """One worker's claim as the gate makes it: items that start, then new ones keyed."""
    got = store.claim_keyed(job, token, wid, want, limits)
    assert got is not None
    fresh = [(i, KEYS[i]) for i, _ in got.fresh]
    started = store.admit(job, wid, fresh, limits)
    return [i for i, _ in got.started], [i for i, _ in fresh if i in started]


def running(r: redis.Redis, job: str) -> dict[bytes, bytes]:
    return r.hgetall(JobKeys(job).keyrun)


def test_items_of_a_busy_key_wait_in_redis_while_other_keys_run(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = keyed_job(store, "keys")
    started, admitted = claim(store, "keys", token, "w1", 6)
    assert (started, admitted) == ([], [0, 1, 3, 4]), "two of a, two of b start; the rest wait"
    k = JobKeys("keys")
    assert r.lrange(k.held(b"a"), 0, -1) == [b"2", b"5"]
    assert running(r, "keys") == {b"a": b"2", b"b": b"2"}
    assert store.poll("keys", token, 6, ttl=60).running == 4
    # Another worker finds nothing to start: a's slots are taken.
    assert claim(store, "keys", token, "w2", 6) == ([], [])
    # A result gives a's slot back: the next claim starts a's first waiting item, in order.
    store.record("keys", "w1", [ok(0, 0)])
    assert claim(store, "keys", token, "w2", 6) == ([2], [])
    # Every way a claim ends gives its slot back: a worker gives items back, or dies.
    store.unclaim("keys", "w1", [1])
    assert running(r, "keys") == {b"a": b"1", b"b": b"2"}
    store.bury("keys", "w1", -1, 3, codec.failure_payload(RuntimeError()), "died")
    assert running(r, "keys") == {b"a": b"1"}, "the dead worker's slots came back"
    store.requeue("keys", "w2")
    assert running(r, "keys") == {}
    assert r.hlen(k.keyed) == 0


def test_a_key_starts_at_most_its_rate(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = keyed_job(store, "rated")
    limits = (0, 60_000.0, 0.0)  # one start a minute per key, no cap
    started, admitted = claim(store, "rated", token, "w", 6, limits)
    assert admitted == [0, 3], "one turn each for a and b"
    got = store.claim_keyed("rated", token, "w", 6, limits)
    assert got is not None and got.started == [] and got.held == 4
    assert got.wake is not None and 59 < got.wake <= 60, "the worker is told when a's next turn comes"


def test_a_backoff_holds_its_key_and_puts_the_item_first_again(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = keyed_job(store, "held")
    _, admitted = claim(store, "held", token, "w", 6)
    assert admitted == [0, 1, 3, 4]
    backoff = Outcome(1, "b", b"60000", "backed off")
    store.record("held", "w", [ok(0, 0), backoff])
    k = JobKeys("held")
    assert r.lrange(k.held(b"a"), 0, -1) == [b"1", b"2", b"5"], "the item that backed off goes first"
    assert r.hget(k.attempts, 1) is None, "a backoff is no failed attempt"
    states = store.key_states("held")
    assert [key for key, _, _ in states.backing_off] == ["a"]
    assert 59 < states.backing_off[0][1] <= 60 and states.backing_off[0][2] == 1
    assert states.busiest[0] == ("a", 0, 3) and ("b", 2, 0) in states.busiest
    # a is held: nothing of it starts, while b's slot that comes back is used at once.
    store.record("held", "w", [ok(3, 3)])
    assert claim(store, "held", token, "w", 6) == ([], [])
    counts = store.poll("held", token, 6, ttl=60)
    assert (counts.done, counts.failed, counts.running) == (2, 0, 1)
    # A new run queues every pending item again: nothing stays held from the last one.
    store.begin_run("held", token, range(6), ttl=60)
    assert not r.exists(k.held(b"a")) and not r.exists(k.keywait) and running(r, "held") == {}
    # ...but the key's backoff is still on: the server asked for a minute.
    assert [key for key, _, _ in store.key_states("held").backing_off] == ["a"]


def test_a_job_with_waiting_items_is_deleted_whole(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = keyed_job(store, "gone")
    claim(store, "gone", token, "w", 6)
    assert r.exists(JobKeys("gone").held(b"a"))
    store.end_run("gone", token)
    nbtasks.reset("gone", redis=redis_server.url)
    assert [key for key in r.keys("*") if b"gone" in key] == []
