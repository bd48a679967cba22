"""Resume after the caller is killed or interrupted, and workers that outlive their caller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from nbtasks.store import JobKeys, pending_indices

from .conftest import run_script, wait_until, worker_pids
from .test_pmap import SCRIPT, executions

N = 400


def recorded(r: redis.Redis, job: str) -> set[int]:
    """Indices with a recorded result, read from the job's done bitmap."""
    bitmap = r.get(JobKeys(job).done) or b""
    return set(range(N)) - set(pending_indices(bitmap, N))


def start(redis_url: str, log: Path, job: str, **kw: object) -> subprocess.Popen[str]:
    args = ["--redis", redis_url, "--log", str(log), "--n", str(N), "--name", job, "--delay", "0.05"]
    return run_script(SCRIPT, *args, "--concurrency", "10", **kw)


def finish(redis_url: str, log: Path, job: str, **kw: object) -> list[int]:
    proc = start(redis_url, log, job, **kw)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return list(json.loads(out)["results"])


def test_resume_after_sigkill_of_the_caller_reruns_no_recorded_item(r: redis.Redis, redis_server, tmp_path) -> None:
    log, job = tmp_path / "log", "killed"
    caller = start(redis_server.url, log, job)
    wait_until(lambda: len(recorded(r, job)) >= 100, 60, "100 recorded results")
    caller.kill()
    caller.communicate()
    before = recorded(r, job)
    assert 100 <= len(before) < N

    assert finish(redis_server.url, log, job) == [x * x for x in range(N)]
    runs = executions(log)
    assert set(runs) == set(range(N))
    assert all(runs[i] == 1 for i in before), "an item recorded before the kill ran again"


def test_interrupt_returns_fast_stops_workers_and_resumes(r: redis.Redis, redis_server, tmp_path) -> None:
    log, job = tmp_path / "log", "interrupted"
    # Its own session, signalled as a group, as Jupyter signals a kernel's process group.
    caller = start(redis_server.url, log, job, start_new_session=True)
    wait_until(lambda: len(recorded(r, job)) >= 60, 60, "60 recorded results")
    wait_until(lambda: len(worker_pids(job)) == 2, 30, "two workers")
    sent = time.monotonic()
    os.killpg(caller.pid, signal.SIGINT)
    _, err = caller.communicate(timeout=30)
    elapsed = time.monotonic() - sent
    assert elapsed < 2.0, f"the interrupt took {elapsed:.2f} s to return"
    assert caller.returncode != 0
    assert "KeyboardInterrupt" in err
    kept = recorded(r, job)
    assert f"{len(kept)} of {N} results of job '{job}' are stored. Run the same call again to resume." in err
    assert worker_pids(job) == [], "workers outlived the interrupt"

    assert finish(redis_server.url, log, job) == [x * x for x in range(N)]
    runs = executions(log)
    assert all(runs[i] == 1 for i in kept), "an item recorded before the interrupt ran again"


def test_workers_exit_after_their_caller_dies(r: redis.Redis, redis_server, tmp_path) -> None:
    log, job = tmp_path / "log", "orphaned"
    tmp = tmp_path / "tmp"  # the callers' temporary folder: what they leave there is seen
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    caller = start(redis_server.url, log, job, env=env)
    wait_until(lambda: len(worker_pids(job)) == 2 and len(recorded(r, job)) > 0, 60, "workers at work")
    caller.kill()
    caller.communicate()
    # The caller's heartbeat lives 6 s; the bound leaves slack for a loaded machine.
    wait_until(lambda: worker_pids(job) == [], 15, "orphaned workers to exit")
    assert len(list(tmp.glob("nbtasks-workers-*"))) == 1  # the killed caller could not clean up
    assert finish(redis_server.url, log, job, env=env) == [x * x for x in range(N)]
    left = {str(f.relative_to(tmp)) for f in tmp.rglob("*")}
    assert not any(name.startswith("nbtasks-workers-") for name in left), f"left behind: {sorted(left)}"


def test_inline_run_resumes_too(r: redis.Redis, redis_server, tmp_path) -> None:
    log = tmp_path / "log"
    cmd = [sys.executable, str(SCRIPT), "--redis", redis_server.url, "--log", str(log), "--n", "30"]
    cmd += ["--name", "inline", "--processes", "0", "--fail-while", str(tmp_path / "flag")]
    (tmp_path / "flag").touch()
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1 and "ValueError: refusing 0" in first.stderr
    (tmp_path / "flag").unlink()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert json.loads(second.stdout)["results"] == [x * x for x in range(30)]
    assert executions(log)[0] == 2 and all(executions(log)[i] == 1 for i in range(1, 30))
