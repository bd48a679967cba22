"""Failure handling a user can steer: retries with backoff, timeouts, rate limits,
errors="return", poison inputs, and the failure ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks.store import JobKeys

from .conftest import wait_until


def _count(folder: str, x: int) -> int:
    """Record one attempt at `x` in a file of its own; how many attempts so far."""
    path = os.path.join(folder, str(x))
    with open(path, "a") as f:
        f.write(".")
    return os.path.getsize(path)


def make_flaky(folder: str, fail_times: int):  # type: ignore[no-untyped-def]
    def flaky(x: int) -> int:
        if x % 5 == 0 and _count(folder, x) <= fail_times:
            raise ConnectionError(f"try {x} again")
        return x * 10

    return flaky


def test_a_task_that_fails_twice_then_succeeds(r: redis.Redis, tmp_path: Path) -> None:
    flaky = make_flaky(str(tmp_path), fail_times=2)
    out = nbtasks.pmap(flaky, range(30), retries=2, retry_delay=0.05, progress=False)
    assert out == [x * 10 for x in range(30)]
    assert {int(p.name): p.stat().st_size for p in tmp_path.iterdir()} == {x: 3 for x in range(0, 30, 5)}


def test_retries_run_out_and_the_ledger_keeps_every_attempt(r: redis.Redis, tmp_path: Path) -> None:
    flaky = make_flaky(str(tmp_path), fail_times=10)
    with pytest.raises(nbtasks.TaskError) as info:
        nbtasks.pmap(flaky, range(10), retries=2, retry_delay=0.01, progress=False)
    failures = info.value.failures
    assert [(f.index, f.attempts) for f in failures] == [(0, 3), (5, 3)]
    assert failures[1].history == ("ConnectionError: try 5 again",) * 3
    assert "(after 3 attempts)" in str(info.value)


def test_retry_on_limits_what_is_retried(r: redis.Redis, tmp_path: Path) -> None:
    flaky = make_flaky(str(tmp_path), fail_times=1)
    with pytest.raises(nbtasks.TaskError):
        nbtasks.pmap(flaky, range(10), retries=3, retry_delay=0.01, retry_on=ValueError, progress=False)
    assert {p.stat().st_size for p in tmp_path.iterdir()} == {1}  # ConnectionError is not retried


def sleepy(x: int) -> int:
    if x == 3:
        time.sleep(30)  # green: eventlet's timeout cuts it
    return x


def spinning(x: int) -> int:
    if x == 3:
        while True:  # never yields: only replacing the process stops it
            pass
    return x


@pytest.mark.parametrize("task", [sleepy, spinning], ids=["waiting", "spinning"])
def test_timeout_fails_the_attempt_and_the_others_go_on(r: redis.Redis, task) -> None:  # type: ignore[no-untyped-def]
    out = nbtasks.pmap(task, range(20), timeout=0.5, errors="return", concurrency=4, progress=False)
    failure = out[3]
    assert isinstance(failure, nbtasks.Failure)
    assert failure.exc_type == "TimeoutError" and failure.message.startswith("timed out after 0.5 s")
    assert out[:3] + out[4:] == [x for x in range(20) if x != 3]


def stamp(folder: str) -> object:
    def record(x: int) -> int:
        with open(os.path.join(folder, f"{x}"), "w") as f:
            f.write(repr(time.time()))
        return x

    return record


def test_rate_limit_holds_over_a_run(r: redis.Redis, tmp_path: Path) -> None:
    out = nbtasks.pmap(stamp(str(tmp_path)), range(30), rate="20/s", concurrency=50, progress=False)  # type: ignore[arg-type]
    assert out == list(range(30))
    times = sorted(float(p.read_text()) for p in tmp_path.iterdir())
    # 2 workers x 50 green threads would start all 30 at once; the shared limit spaces
    # them. A slow machine only lowers the rate, so only the upper bound is checked.
    burst = 2  # turns that fit in the limiter's 50 ms window at the start
    observed = (len(times) - burst) / (times[-1] - times[0])
    assert observed <= 20 * 1.1, f"{observed:.1f} calls/s against a limit of 20/s"


def test_errors_return_puts_failures_in_the_list(r: redis.Redis) -> None:
    out = nbtasks.pmap(lambda x: 10 // x, [5, 0, 2], errors="return", progress=False)
    assert out[0] == 2 and out[2] == 5
    failure = out[1]
    assert isinstance(failure, nbtasks.Failure)
    assert (failure.index, failure.input, failure.exc_type, failure.attempts) == (1, 0, "ZeroDivisionError", 1)
    assert "10 // x" in failure.traceback


def exit_on_seven(x: int) -> int:
    if x == 7:
        os._exit(3)
    time.sleep(0.01)
    return x


def test_an_input_that_kills_its_worker_fails_and_the_job_completes(r: redis.Redis) -> None:
    out = nbtasks.pmap(exit_on_seven, range(60), errors="return", concurrency=8, progress=False)
    failure = out[7]
    assert isinstance(failure, nbtasks.Failure)
    assert failure.exc_type == "WorkerDied" and "exit code 3" in failure.message
    assert failure.attempts == 3 and failure.history == ("WorkerDied: exit code 3",) * 3
    assert out[:7] + out[8:] == [x for x in range(60) if x != 7]


def test_bad_policy_is_refused_before_anything_is_stored(r: redis.Redis) -> None:
    with pytest.raises(nbtasks.ConfigError, match='rate= takes a string like "50/s"'):
        nbtasks.pmap(abs, range(3), rate="fast")
    with pytest.raises(nbtasks.ConfigError, match="retry_on= takes exception classes"):
        nbtasks.pmap(abs, range(3), retry_on=(KeyError, "oops"))  # type: ignore[arg-type]
    with pytest.raises(nbtasks.ConfigError, match='errors= takes "raise" or "return"'):
        nbtasks.pmap(abs, range(3), errors="ignore")
    assert r.dbsize() == 0


RETRY_SCRIPT = """
import json, os, sys, nbtasks
flag, log = sys.argv[2], sys.argv[3]

def once_then_fine(x):
    with open(log, "a") as f:
        f.write(f"{x}\\n")
    if x == 4 and not os.path.exists(flag):
        open(flag, "w").close()
        raise ConnectionError("first try fails")
    return -x

print(json.dumps(nbtasks.pmap(once_then_fine, range(10), name="patient", redis=sys.argv[1],
                              retries=3, retry_delay=float(sys.argv[4]), progress=False)))
"""


def test_a_retry_survives_a_restart_of_the_caller(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    script, flag, log = tmp_path / "retry.py", tmp_path / "flag", tmp_path / "log"
    script.write_text(RETRY_SCRIPT)
    caller = subprocess.Popen(
        [sys.executable, str(script), redis_server.url, str(flag), str(log), "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Item 4 failed and waits in Redis for its retry, five minutes away: kill the caller.
    wait_until(lambda: r.zcard(JobKeys("patient").delayed) == 1, 60, "a retry waiting in Redis")
    caller.kill()
    caller.communicate()
    again = subprocess.run(
        [sys.executable, str(script), redis_server.url, str(flag), str(log), "300"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == [-x for x in range(10)]
    assert log.read_text().split().count("4") == 2


def test_progress_shows_retries_as_they_happen(r: redis.Redis, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    flaky = make_flaky(str(tmp_path), fail_times=1)
    nbtasks.pmap(flaky, range(10), name="bar", retries=1, retry_delay=0.5)
    assert "retrying=2" in capsys.readouterr().err
