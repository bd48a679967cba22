"""Crash safety: workers killed or frozen, Redis restarted (with or without its data),
two callers at once, Redis refusing writes. Nothing lost, nothing recorded twice."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

import nbtasks
from nbtasks.store import JobKeys, client_url

from .conftest import RedisServer, wait_until, worker_pids
from .stored import payloads
from .test_pmap import SCRIPT, executions


def exact(r: redis.Redis, job: str, total: int) -> None:
    """Each item recorded once: counter, bitmap and results agree."""
    k = JobKeys(job)
    assert int(r.hget(k.counts, "done") or 0) == r.bitcount(k.done) == len(payloads(r, k.results)) == total


def tagged(x: int) -> tuple[int, int]:
    time.sleep(0.05)
    return x * x, os.getpid()


def test_a_killed_workers_items_come_back_and_a_replacement_starts(r: redis.Redis) -> None:
    job = nbtasks.pmap(tagged, range(600), name="killed", background=True, concurrency=10, progress=False)
    wait_until(lambda: job.counts().done >= 100 and len(worker_pids("killed")) == 2, 60, "progress")
    victim = worker_pids("killed")[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in worker_pids("killed") and len(worker_pids("killed")) == 2, 30, "a replacement")
    assert [v for v, _ in job.result(timeout=60)] == [x * x for x in range(600)]
    exact(r, "killed", 600)


def _wid_of(pid: int) -> str:
    argv = psutil.Process(pid).cmdline()
    return argv[argv.index("--wid") + 1]


def test_a_frozen_worker_gives_its_items_back_and_its_late_results_change_nothing(r: redis.Redis) -> None:
    nbtasks.configure(heartbeat_ttl=2.0)  # the window after which a stopped worker is replaced
    job = nbtasks.pmap(tagged, range(800), name="frozen", background=True, concurrency=10, progress=False)
    wait_until(lambda: job.counts().done >= 100 and len(worker_pids("frozen")) == 2, 60, "progress")
    victim = worker_pids("frozen")[0]
    claims = JobKeys("frozen").claims(_wid_of(victim))
    for _ in range(50):  # stop it while it holds items (between two claims it holds none)
        os.kill(victim, signal.SIGSTOP)
        held = [int(i) for i in r.hkeys(claims)]
        if held:
            break
        os.kill(victim, signal.SIGCONT)
        wait_until(lambda: r.exists(claims), 30, "the worker to claim again")
    try:
        # Its items go back and are recorded by others while it sleeps...
        wait_until(lambda: all(r.getbit(JobKeys("frozen").done, i) for i in held), 60, "its items, done elsewhere")
    finally:
        os.kill(victim, signal.SIGCONT)  # ...then it wakes and records them late.
    results = job.result(timeout=60)
    assert [v for v, _ in results] == [x * x for x in range(800)]
    assert held and all(results[i][1] != victim for i in held), "a late result replaced the first one"
    exact(r, "frozen", 800)


def spin(x: int) -> int:
    if x == 5:
        end = time.monotonic() + 3  # blocks the worker's loop longer than the heartbeat lives
        while time.monotonic() < end:
            pass
    return x


def test_a_task_blocking_its_loop_is_not_declared_dead(r: redis.Redis, tmp_path: Path) -> None:
    nbtasks.configure(heartbeat_ttl=1.0)
    log = str(tmp_path / "log")

    def logged(x: int) -> int:
        with open(log, "a") as f:
            f.write(f"{x}\n")
        return spin(x)

    assert nbtasks.pmap(logged, range(20), concurrency=2, progress=False) == list(range(20))
    assert executions(tmp_path / "log") == {i: 1 for i in range(20)}


@contextlib.contextmanager
def _restarted_once(tmp_path: Path, when: Callable[[redis.Redis], bool], what: str) -> Iterator[redis.Redis]:
    """A durable server of its own, restarted once `when(client)` holds (a half-second
    outage); yields a client of it."""
    own = RedisServer(tmp_path / "srv", None, "--appendonly", "yes", "--appendfsync", "always")
    client = redis.Redis.from_url(own.url)

    def restart() -> None:
        wait_until(lambda: when(client), 60, what)
        own.stop()
        time.sleep(0.5)  # the outage itself: a restart that takes half a second
        own.restart()

    chaos = threading.Thread(target=restart)
    chaos.start()
    try:
        yield client
    finally:
        chaos.join()
        client.close()
        own.stop()


def test_redis_restarted_mid_job_the_run_rides_it_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _restarted_once(tmp_path, lambda c: c.bitcount(JobKeys("outage").done) >= 150, "150 results") as client:
        url = client_url(client)
        out = nbtasks.pmap(tagged, range(600), name="outage", redis=url, concurrency=10)
        assert [v for v, _ in out] == [x * x for x in range(600)]
        assert "Redis unreachable, retrying" in capsys.readouterr().err
        exact(client, "outage", 600)


def test_redis_restarted_while_the_call_stores_its_inputs_the_call_rides_it_out(tmp_path: Path) -> None:
    n = 100_000
    with _restarted_once(tmp_path, lambda c: c.hlen(JobKeys("storing").inputs) > 0, "inputs being stored") as client:
        out = nbtasks.pmap(abs, range(-n, 0), name="storing", redis=client_url(client), progress=False)
        assert out == list(range(n, 0, -1))
        exact(client, "storing", n)


def test_redis_restarted_empty_is_detected_not_reported_complete(tmp_path: Path) -> None:
    own = RedisServer(tmp_path / "srv")  # no persistence: a restart loses everything
    client = redis.Redis.from_url(own.url)

    def restart_empty() -> None:
        wait_until(lambda: client.bitcount(JobKeys("amnesia").done) >= 100, 60, "100 results")
        own.stop()
        shutil.rmtree(own.folder / "appendonlydir", ignore_errors=True)
        own.restart()

    chaos = threading.Thread(target=restart_empty)
    chaos.start()
    try:
        with pytest.raises(nbtasks.JobLost, match="no longer holds job 'amnesia'"):
            nbtasks.pmap(tagged, range(600), name="amnesia", redis=own.url, concurrency=10, progress=False)
    finally:
        chaos.join()
        client.close()
        own.stop()


def test_two_callers_at_once_share_one_set_of_items(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    log = tmp_path / "log"
    cmd = [sys.executable, str(SCRIPT), "--redis", redis_server.url, "--log", str(log), "--n", "400"]
    cmd += ["--name", "twice", "--delay", "0.02", "--concurrency", "5"]
    callers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [c.communicate(timeout=120) for c in callers]
    assert [c.returncode for c in callers] == [0, 0], [err for _, err in outs]
    for out, _ in outs:
        assert json.loads(out)["results"] == [x * x for x in range(400)]
    exact(r, "twice", 400)


def test_redis_refusing_writes_is_a_clear_error(tmp_path: Path) -> None:
    own = RedisServer(tmp_path / "srv", None, "--maxmemory", "2mb")
    client = redis.Redis.from_url(own.url)
    try:
        with pytest.raises(nbtasks.RedisUnavailable, match="refuses writes .*maxmemory"):
            pages = [f"{i:04}" + "x" * 1000 for i in range(5000)]  # distinct: equal inputs are stored once
            nbtasks.pmap(len, pages, name="too-big", redis=own.url, progress=False)
        assert client.exists(JobKeys("too-big").results, JobKeys("too-big").counts) == 0
    finally:
        client.close()
        own.stop()
