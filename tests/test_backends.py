"""The same behaviour on every backend: order, failures, retries, timeouts, rate
limits, cancellation, interrupt and resume; and no patching outside eventlet."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks.store import JobKeys

from .conftest import run_script, wait_until, worker_pids
from .test_pmap import SCRIPT, executions
from .test_resume import recorded

ONE_SERVER = True  # (see conftest): how tasks run in a worker, not the server, is under test

BACKENDS = ["eventlet", "threads", "asyncio"]


def describe(x: object) -> str:
    return f"{type(x).__name__}:{x!r}"


async def describe_async(x: object) -> str:
    await asyncio.sleep(0)
    return describe(x)


def flaky(path: str) -> int:
    """Fails the first two times it runs for `path`, then returns how often it ran."""
    tries = Path(path)
    count = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(count))
    if count < 3:
        raise ConnectionError(f"attempt {count}")
    return count


async def flaky_async(path: str) -> int:
    return flaky(path)


def slow(x: float) -> float:
    time.sleep(x)
    return x


async def slow_async(x: float) -> float:
    await asyncio.sleep(x)
    return x


def patched(_: object) -> tuple[bool, str]:
    return "eventlet" in sys.modules, socket.socket.__module__


async def patched_async(_: object) -> tuple[bool, str]:
    return patched(_)


def spin(x: int) -> tuple[int, float, float]:
    """Busy CPU for 0.3 s: when it ran, and in which process."""
    start = time.time()
    while time.time() - start < 0.3:
        pass
    return os.getpid(), start, time.time()


async def spin_async(x: int) -> tuple[int, float, float]:
    return spin(x)


def pick(backend: str, plain: object, coroutine: object) -> object:
    return coroutine if backend == "asyncio" else plain


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, r: redis.Redis) -> str:
    return str(request.param)


def test_results_in_input_order(backend: str) -> None:
    items = ["a", 1, 2.5, None, (1, "x"), {"k": [1, 2]}, b"bytes"] * 60
    out = nbtasks.pmap(pick(backend, describe, describe_async), items, backend=backend, progress=False)
    assert out == [describe(x) for x in items]


def test_failures_retries_and_timeouts(backend: str, tmp_path: Path) -> None:
    paths = [str(tmp_path / f"item{i}") for i in range(5)]
    out = nbtasks.pmap(
        pick(backend, flaky, flaky_async), paths, backend=backend, retries=2, retry_delay=0.01, progress=False
    )
    assert out == [3] * 5
    with pytest.raises(nbtasks.TaskError) as caught:
        nbtasks.pmap(pick(backend, slow, slow_async), [0.01, 5.0, 0.02], backend=backend, timeout=0.5, progress=False)
    (failure,) = caught.value.failures
    assert failure.index == 1 and failure.exc_type == "TimeoutError" and "timed out after 0.5 s" in failure.message


def test_rate_limit(backend: str) -> None:
    started = time.monotonic()
    delays = [i * 1e-9 for i in range(30)]  # distinct: equal inputs would run once
    nbtasks.pmap(pick(backend, slow, slow_async), delays, backend=backend, rate="20/s", progress=False)
    # 30 calls at 20/s need at least 1.45 s (the first turn is free): an upper bound on the rate.
    assert time.monotonic() - started >= 1.4


def test_cancel(backend: str) -> None:
    job = nbtasks.pmap(
        pick(backend, slow, slow_async), [0.05 + i * 1e-9 for i in range(2000)], name=f"cancel-{backend}",
        background=True, backend=backend, concurrency=5, progress=False,
    )  # fmt: skip
    wait_until(lambda: job.counts().done >= 20, 60, "progress")
    job.cancel()
    with pytest.raises(nbtasks.JobCancelled):
        job.result()
    assert worker_pids(f"cancel-{backend}") == []


def test_no_patching_outside_eventlet(backend: str) -> None:
    seen = set(nbtasks.pmap(pick(backend, patched, patched_async), range(20), backend=backend, progress=False))
    if backend == "eventlet":
        assert seen == {(True, "eventlet.greenio.base")}
    else:
        assert seen == {(False, "socket")}


def test_cpu_bound_work_with_concurrency_1_uses_every_core(backend: str) -> None:
    out = nbtasks.pmap(pick(backend, spin, spin_async), range(6), backend=backend, processes=2, concurrency=1,
                       progress=False)  # fmt: skip
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for pid, start, end in out:
        by_pid.setdefault(pid, []).append((start, end))
    assert len(by_pid) == 2, "both processes worked"
    (a, spans_a), (b, spans_b) = by_pid.items()
    overlap = any(s1 < e2 and s2 < e1 for s1, e1 in spans_a for s2, e2 in spans_b)
    assert overlap, "the two processes never ran at the same time"


def test_a_killed_caller_resumes(backend: str, redis_server, tmp_path: Path) -> None:
    log, job, n = tmp_path / "log", f"resume-{backend}", 400
    args = ["--redis", redis_server.url, "--log", str(log), "--n", str(n), "--name", job, "--delay", "0.05"]
    args += ["--concurrency", "10", "--backend", backend]
    first = run_script(SCRIPT, *args)
    r = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: len(recorded(r, job)) >= 60, 60, "60 recorded results")
    first.kill()
    first.communicate()
    before = recorded(r, job)
    second = run_script(SCRIPT, *args)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out)["results"] == [x * x for x in range(n)]
    assert all(executions(log)[i] == 1 for i in before), "an item recorded before the kill ran again"
    r.close()


def test_an_interrupt_returns_fast_and_resumes(backend: str, redis_server, tmp_path: Path) -> None:
    log, job, n = tmp_path / "log", f"interrupt-{backend}", 400
    args = ["--redis", redis_server.url, "--log", str(log), "--n", str(n), "--name", job, "--delay", "0.05"]
    args += ["--concurrency", "10", "--backend", backend]
    caller = run_script(SCRIPT, *args, start_new_session=True)
    r = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: len(recorded(r, job)) >= 60 and len(worker_pids(job)) == 2, 60, "workers at work")
    sent = time.monotonic()
    os.killpg(caller.pid, signal.SIGINT)
    _, err = caller.communicate(timeout=30)
    assert time.monotonic() - sent < 2.0 and "KeyboardInterrupt" in err
    assert worker_pids(job) == [], "workers outlived the interrupt"
    kept = recorded(r, job)
    second = run_script(SCRIPT, *args)
    out, err = second.communicate(timeout=120)
    assert json.loads(out)["results"] == [x * x for x in range(n)], err
    assert all(executions(log)[i] == 1 for i in kept)
    r.close()


def test_a_backend_that_does_not_fit_the_function_is_refused(r: redis.Redis) -> None:
    with pytest.raises(nbtasks.ConfigError, match="async def function runs on backend='asyncio'"):
        nbtasks.pmap(describe_async, [1], backend="threads", progress=False)
    with pytest.raises(nbtasks.ConfigError, match="plain function"):
        nbtasks.pmap(describe, [1], backend="asyncio", progress=False)
    with pytest.raises(nbtasks.ConfigError, match="one of eventlet, threads, asyncio"):
        nbtasks.pmap(describe, [1], backend="gevent", progress=False)


def test_async_functions_run_inline_too(r: redis.Redis) -> None:
    assert nbtasks.pmap(describe_async, [1, "a"], processes=0, progress=False) == ["int:1", "str:'a'"]


WITHOUT_EVENTLET = """
import importlib.abc, json, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "eventlet":
            raise ModuleNotFoundError("No module named 'eventlet'")
sys.meta_path.insert(0, NotInstalled())
import nbtasks
print(json.dumps(nbtasks.pmap(abs, range(-50, 0), redis=sys.argv[1], name="no-eventlet", progress=False)))
"""


def test_threads_is_the_fallback_without_eventlet(r: redis.Redis, redis_server) -> None:
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_EVENTLET, redis_server.url], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == list(range(50, 0, -1))
    policy = json.loads(r.hget(JobKeys("no-eventlet").meta, "policy"))
    assert policy["backend"] == "threads"
