"""pmap behaves like list(map(...)): order, values, functions from anywhere, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks import demo
from nbtasks.store import JobKeys

SCRIPT = Path(__file__).parent / "scripts" / "counted.py"


def square(x: int) -> int:
    return x * x


def describe(value: object) -> str:
    return f"{type(value).__name__}:{value!r}"


def executions(log: Path) -> Counter[int]:
    return Counter(int(line) for line in log.read_text().split()) if log.exists() else Counter()


def test_results_match_map_in_input_order(r: redis.Redis) -> None:
    items = ["a", 1, 2.5, None, (1, "x"), {"k": [1, 2]}, b"bytes", frozenset({3})] * 50
    assert nbtasks.pmap(describe, items, progress=False) == list(map(describe, items))


def test_ten_thousand_items(r: redis.Redis) -> None:
    assert nbtasks.pmap(square, range(10_000), progress=False) == [x * x for x in range(10_000)]


def test_lambdas_and_closures_from_main_run_in_fresh_workers(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    # A script's __main__ is what a notebook is: plain pickle cannot carry its functions.
    script = tmp_path / "main_funcs.py"
    script.write_text(
        "import json, sys, nbtasks\n"
        "offset = 100\n"
        "class Point:\n"
        "    def __init__(self, x): self.x = x\n"
        "def make(k):\n"
        "    def closure(p): return p.x * k + offset\n"
        "    return closure\n"
        "a = nbtasks.pmap(make(3), [Point(i) for i in range(50)], redis=sys.argv[1], progress=False)\n"
        "b = nbtasks.pmap(lambda s: s.upper(), ['x', 'y'], redis=sys.argv[1], progress=False)\n"
        "print(json.dumps([a, b]))\n"
    )
    out = subprocess.run([sys.executable, str(script), redis_server.url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    a, b = json.loads(out.stdout)
    assert a == [i * 3 + 100 for i in range(50)]
    assert b == ["X", "Y"]


def test_empty_iterable_returns_empty_list_and_stores_nothing(r: redis.Redis) -> None:
    assert nbtasks.pmap(square, iter([])) == []
    assert r.dbsize() == 0


def test_generator_inputs(r: redis.Redis) -> None:
    assert nbtasks.pmap(square, (x for x in range(300)), progress=False) == [x * x for x in range(300)]


def test_same_call_again_reruns_nothing(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    log = tmp_path / "log"
    cmd = [sys.executable, str(SCRIPT), "--redis", redis_server.url, "--log", str(log), "--n", "200"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert executions(log) == Counter(range(200))
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert executions(log) == Counter(range(200)), "a finished job ran items again"


def test_finished_job_returns_stored_results_without_workers(r: redis.Redis) -> None:
    job = "finished"
    nbtasks.pmap(square, range(20), name=job, progress=False)
    # Watch the job's keys: a run would take the owner key and rebuild the queue.
    r.config_set("notify-keyspace-events", "KA")
    events = r.pubsub()
    events.psubscribe(f"__keyspace@0__:{JobKeys(job).prefix}*")
    events.get_message(timeout=5)  # the subscription's confirmation
    assert nbtasks.pmap(square, range(20), name=job, progress=False) == [x * x for x in range(20)]
    touched = set()
    while (message := events.get_message(timeout=0.2)) is not None:
        touched.add(message["channel"].decode().rsplit(":", 1)[1])
    events.close()
    assert "owner" not in touched and "queue" not in touched, touched


def test_edited_function_is_a_new_job_but_named_job_keeps_results(
    r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []

    def first(x: int) -> int:
        calls.append(x)
        return x

    def second(x: int) -> int:
        calls.append(x)
        return -x

    # Without a name: other code, other job, so the new code computes everything.
    assert nbtasks.pmap(first, range(5), processes=0, progress=False) == [0, 1, 2, 3, 4]
    assert nbtasks.pmap(second, range(5), processes=0, progress=False) == [0, -1, -2, -3, -4]
    assert len(calls) == 10

    # With a name: finished results stay; the new code runs only what is left.
    calls.clear()
    with pytest.raises(ZeroDivisionError):
        nbtasks.pmap(lambda x: 1 // (x - 3), range(5), name="kept", processes=0, progress=False)
    capsys.readouterr()
    assert nbtasks.pmap(second, range(5), name="kept", processes=0, progress=False) == [-1, -1, -1, -3, -4]
    assert calls == [3, 4]
    said = capsys.readouterr().err
    assert said.startswith("nbtasks: job 'kept' changed since its last call (") and "code" in said
    assert "its 3 results for these inputs are kept; the new code runs the other 2." in said


def test_fresh_starts_over(r: redis.Redis) -> None:
    calls: list[int] = []

    def f(x: int) -> int:
        calls.append(x)
        return x

    nbtasks.pmap(f, range(4), name="again", processes=0, progress=False)
    nbtasks.pmap(f, range(4), name="again", processes=0, progress=False)
    assert calls == [0, 1, 2, 3]
    nbtasks.pmap(f, range(4), name="again", processes=0, fresh=True, progress=False)
    assert calls == [0, 1, 2, 3] * 2


def test_inline_mode_lets_the_exception_through_unchanged_and_keeps_results(r: redis.Redis) -> None:
    def f(x: int) -> int:
        if x == 5:
            raise KeyError("five")
        return x

    with pytest.raises(KeyError, match="five"):
        nbtasks.pmap(f, range(10), processes=0, progress=False)
    assert r.bitcount(JobKeys(next(iter(_jobs(r)))).done) == 5


def _jobs(r: redis.Redis) -> set[str]:
    return {j.decode() for j in r.smembers("nbtasks:jobs")}


def test_network_calls_overlap_in_green_threads(r: redis.Redis, http_url: str) -> None:
    urls = [f"{http_url}/item/{i}?delay=0.2" for i in range(200)]
    bodies = nbtasks.pmap(demo.fetch, urls, processes=2, concurrency=100, progress=False)
    assert bodies == [f"/item/{i}?delay=0.2" for i in range(200)]
    # Overlap counted at the server: a measure of concurrency, not of speed.
    assert demo.SlowHandler.peak >= 50, f"only {demo.SlowHandler.peak} requests overlapped"


def test_workers_do_not_inherit_a_fork_of_the_caller(r: redis.Redis) -> None:
    pids = nbtasks.pmap(_pid_and_eventlet, range(50), progress=False)
    assert {pid for pid, _ in pids}.isdisjoint({os.getpid()})
    assert all(patched for _, patched in pids), "workers did not monkey-patch"
    assert "eventlet" not in sys.modules, "the caller imported eventlet"


def _pid_and_eventlet(_: int) -> tuple[int, bool]:
    from eventlet import patcher

    return os.getpid(), patcher.is_monkey_patched("socket")


def mostly_instant(url: str) -> str:
    # Most items return at once (after a streak of those, a worker runs claimed batches
    # in one green thread); every 500th waits on the network, and must still overlap.
    return demo.fetch(url) if url.endswith("?delay=0.3") else url


def test_fast_items_run_in_batches_and_slow_ones_still_overlap(r: redis.Redis, http_url: str) -> None:
    urls = [f"{http_url}/{i}" + ("?delay=0.3" if i % 500 == 250 else "") for i in range(3000)]
    out = nbtasks.pmap(mostly_instant, urls, concurrency=50, progress=False)
    assert out == [u if not u.endswith("?delay=0.3") else u[len(http_url) :] for u in urls]
    assert demo.SlowHandler.peak >= 3, f"only {demo.SlowHandler.peak} slow requests overlapped"


def pid_after(item: tuple[float, int]) -> int:
    import time

    time.sleep(item[0])
    return os.getpid()


def test_items_that_turn_long_are_not_hoarded_by_one_worker(r: redis.Redis) -> None:
    # Short items are claimed a few ahead; once items turn long, those claimed ahead go
    # back to the queue, so the long ones at the end do not all wait on one process.
    items = [(0.0, i) for i in range(20)] + [(0.5, i) for i in range(4)]  # distinct: each runs
    pids = nbtasks.pmap(pid_after, items, processes=2, concurrency=1, progress=False)
    assert len(set(pids[20:])) == 2, f"one worker ran every long item: {pids[20:]}"
