"""The store's atomic steps against a real Redis: claims, idempotent records, requeue."""

from __future__ import annotations

import pickle
import random

import redis

from nbtasks import codec
from nbtasks.store import JobKeys, Outcome, Store, open_store, pending_indices

from .stored import payload


def ok(index: int, value: object) -> Outcome:
    return Outcome(index, "1", codec.dump(value))


def failed(index: int, exc: Exception, kind: str = "0") -> Outcome:
    return Outcome(index, kind, codec.failure_payload(exc), codec.failure_line(exc))


def make_job(store: Store, job: str, n: int) -> str:
    token = "t" * 32
    store.define(job, {"total": n}, codec.dump_function(abs))
    indices = store.add_inputs(job, [i.to_bytes(16, "little") for i in range(n)], codec.dump)
    assert indices == list(range(n))
    store.begin_run(job, token, range(n), ttl=60)
    return token


def test_recording_twice_counts_once_and_keeps_the_first_result(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "twice", 3)
    assert [i for i, _ in store.claim("twice", token, "w1", 3) or []] == [0, 1, 2]
    store.record("twice", "w1", [ok(0, "first"), failed(1, ValueError())])
    # The same items run again elsewhere (at least once) and are recorded again.
    store.record("twice", "w2", [ok(0, "second"), failed(1, KeyError())])
    counts = store.poll("twice", token, 3, ttl=60)
    assert (counts.done, counts.failed) == (1, 1)
    assert pickle.loads(payload(r, JobKeys("twice").results, 0) or b"") == "first"
    assert codec.load(store.failures("twice")[1])["exc_type"] == "ValueError"
    # A late success of a failed item replaces the failure; counters stay exact.
    store.record("twice", "w2", [ok(1, "late")])
    counts = store.poll("twice", token, 3, ttl=60)
    assert (counts.done, counts.failed) == (2, 0)
    assert store.failures("twice") == {}


def test_claim_refuses_a_stale_token_and_requeue_returns_unrecorded_claims(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "claims", 10)
    assert store.claim("claims", "not-the-owner", "w", 5) is None
    taken = store.claim("claims", token, "w", 4) or []
    assert [(i, codec.load(p)) for i, p in taken] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    store.record("claims", "w", [ok(1, 1)])
    assert store.requeue("claims", "w") == 3
    again = [i for i, _ in store.claim("claims", token, "v", 10) or []]
    assert sorted(again[:3]) == [0, 2, 3], "requeued items go to the head of the queue"
    assert again[3:] == [4, 5, 6, 7, 8, 9]
    assert r.llen(JobKeys("claims").queue) == 0


def test_begin_run_queues_exactly_the_items_without_a_result(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "partial", 20)
    store.claim("partial", token, "w", 20)
    store.record("partial", "w", [ok(i, i) for i in (0, 5, 19)])
    store.record("partial", "w", [failed(7, ValueError())])
    counts = store.begin_run("partial", "u" * 32, range(20), ttl=60)
    assert (counts.done, counts.failed) == (3, 0)
    queued = [int(i) for i in r.lrange(JobKeys("partial").queue, 0, -1)]
    assert queued == [i for i in range(20) if i not in (0, 5, 19)]


def test_pending_indices_reads_redis_bit_order(r: redis.Redis) -> None:
    for i in (0, 3, 8, 15, 16):
        r.setbit("bits", i, 1)
    assert list(pending_indices(r.get("bits") or b"", 20)) == [1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 17, 18, 19]


def test_job_names_stay_inside_their_hash_tag() -> None:
    for name in ("a}b", "{x}", "50%", "sp ace\nnl*"):
        prefix = JobKeys(name).prefix
        tag = prefix[prefix.index("{") + 1 : prefix.index("}")]
        assert "{" not in tag and prefix.endswith("}:")
    assert JobKeys("a}b").prefix != JobKeys("a%7Db").prefix


def test_running_counts_claims_until_recorded_or_requeued(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "running", 10)
    store.claim("running", token, "w", 6)
    assert store.poll("running", token, 10, ttl=60).running == 6
    store.record("running", "w", [ok(0, 0), failed(1, ValueError())])
    assert store.poll("running", token, 10, ttl=60).running == 4
    store.requeue("running", "w")
    assert store.poll("running", token, 10, ttl=60).running == 0


def test_a_retryable_failure_waits_in_redis_then_fails_when_retries_run_out(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "retry", 3)
    store.claim("retry", token, "w", 1)
    store.record("retry", "w", [failed(0, OSError("flaky"), "r")], retries=1, delay=60)
    counts = store.poll("retry", token, 3, ttl=60)
    assert (counts.failed, counts.retrying, counts.running) == (0, 1, 0)
    assert [i for i, _ in store.claim("retry", token, "w", 3) or []] == [1, 2]  # not due for a minute
    r.zadd(JobKeys("retry").delayed, {"0": 0})  # make it due now
    assert [i for i, _ in store.claim("retry", token, "w", 3) or []] == [0]
    store.record("retry", "w", [failed(0, OSError("still flaky"), "r")], retries=1, delay=60)
    counts = store.poll("retry", token, 3, ttl=60)
    assert (counts.failed, counts.retrying) == (1, 0)
    assert store.attempts("retry", [0]) == [(2, "OSError: flaky\nOSError: still flaky\n")]


def test_rate_turns_are_spaced_by_the_server_clock(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    granted, wait = store.take_turns("rated", 100, per_second=10)
    assert granted == 1 and wait == 0  # a 50 ms window holds one turn at 10/s
    granted, wait = store.take_turns("rated", 100, per_second=10)
    assert granted == 0 and 0 < wait <= 0.05  # the next turn is 100 ms after the first


def test_a_dead_worker_blames_the_item_it_was_running(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "poison", 4)
    died = codec.failure_record("WorkerDied", "died", "")
    for death in (1, 2):
        assert sorted(i for i, _ in store.claim("poison", token, "w", 4) or []) == [0, 1, 2, 3]
        assert store.bury("poison", "w", 2, 2, died, "WorkerDied: exit code 9") == 4
        counts = store.poll("poison", token, 4, ttl=60)
        assert (counts.running, counts.failed) == (0, death - 1)
    # Item 2 killed its worker twice: failed. The others went back, with no death counted.
    assert sorted(int(i) for i in r.lrange(JobKeys("poison").queue, 0, -1)) == [0, 1, 3]
    assert codec.load(store.failures("poison")[2])["exc_type"] == "WorkerDied"
    assert store.attempts("poison", [1, 2]) == [(0, ""), (2, "WorkerDied: exit code 9\n" * 2)]


def test_a_worker_that_dies_or_stops_holding_nothing_is_fine(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "empty", 3)
    assert store.requeue("empty", "nobody") == 0
    assert store.bury("empty", "nobody", -1, 3, codec.failure_record("WorkerDied", "", ""), "WorkerDied") == 0
    assert store.poll("empty", token, 3, ttl=60).running == 0


def test_recording_large_results_is_bounded_in_bytes_per_command(r: redis.Redis, redis_server) -> None:
    store = open_store(redis_server.url)
    token = make_job(store, "large", 10)
    assert len(store.claim("large", token, "w", 10) or []) == 10
    big = [ok(i, bytes([i]) * 2 + random.Random(i).randbytes(6 << 20)) for i in range(10)]  # 60 MB, incompressible
    r.config_resetstat()
    store.record("large", "w", big)
    calls = r.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls >= 60 // 16 + 1, "no command carries more than about BATCH_BYTES"
    assert store.poll("large", token, 10, ttl=60).done == 10
    assert [pickle.loads(payload(r, JobKeys("large").results, i) or b"")[:2] for i in (0, 9)] == [b"\0\0", b"\t\t"]
