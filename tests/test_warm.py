"""Warm workers: the processes of a complete run take the next call, see the caller's
environment as it is then, and leave when idle, stale, or their caller is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import nbtasks

from .conftest import _pids, wait_until, worker_children

ONE_SERVER = True  # (see conftest): reusing worker processes, not the server, is under test


@pytest.fixture(autouse=True)
def warm(r: redis.Redis) -> Iterator[None]:
    nbtasks.configure(warm=30.0, processes=2)
    yield
    from nbtasks.pool import warm

    warm.close_all()  # no warm worker carries over to the next test


def whoami(x: int) -> tuple[int, str | None, str]:
    return os.getpid(), os.environ.get("NBTASKS_TEST_MARK"), os.getcwd()


def test_the_next_call_reuses_the_workers_and_sees_the_callers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBTASKS_TEST_MARK", "first")
    first = nbtasks.pmap(whoami, range(400), name="warm-1", concurrency=2, progress=False)
    workers = worker_children()
    assert len(workers) == 2, "both workers wait for the next call"
    assert {pid for pid, _, _ in first} <= workers
    assert {mark for _, mark, _ in first} == {"first"}

    monkeypatch.setenv("NBTASKS_TEST_MARK", "second")
    monkeypatch.chdir(tmp_path)
    second = nbtasks.pmap(whoami, range(400), name="warm-2", concurrency=2, progress=False)
    assert {pid for pid, _, _ in second} <= workers, "the same processes ran the second call"
    assert {mark for _, mark, _ in second} == {"second"}
    assert {cwd for _, _, cwd in second} == {str(tmp_path)}
    assert worker_children() == workers


def test_idle_workers_leave_after_the_warm_period() -> None:
    nbtasks.configure(warm=0.5)
    assert nbtasks.pmap(abs, range(-20, 0), name="idle", progress=False) == list(range(20, 0, -1))
    assert worker_children(), "workers wait after the call"
    wait_until(lambda: not worker_children(), 15, "idle workers to leave")


def test_warm_0_keeps_no_worker() -> None:
    nbtasks.configure(warm=0)
    nbtasks.pmap(abs, range(20), name="cold", progress=False)
    wait_until(lambda: not worker_children(), 15, "workers to leave")


def test_a_worker_whose_module_changed_on_disk_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "warm_helper.py"
    source = "import os\nVERSION = {}\ndef version(x):\n    return VERSION, os.getpid()\n"
    module.write_text(source.format(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "warm_helper", raising=False)
    import warm_helper  # type: ignore[import-not-found]

    first = nbtasks.pmap(warm_helper.version, range(10), name="module-1", progress=False)
    assert {version for version, _ in first} == {1}
    module.write_text(source.format(2))
    stat = module.stat()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a clock tick may be coarse
    second = nbtasks.pmap(warm_helper.version, range(10), name="module-2", progress=False)
    assert {version for version, _ in second} == {2}
    assert not {pid for _, pid in first} & {pid for _, pid in second}, "the worker with the old module left"
    monkeypatch.delitem(sys.modules, "warm_helper")


def test_warm_workers_leave_when_their_caller_is_killed(tmp_path: Path, r: redis.Redis) -> None:
    url = r.connection_pool.connection_kwargs["path"]
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, nbtasks
        nbtasks.configure(redis_url="unix://{url}", warm=300, processes=2)
        nbtasks.pmap(abs, range(50), progress=False)
        print("done", flush=True)
        sys.stdin.read()  # wait to be killed, with the workers warm
        """)
    )
    with subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as caller:
        try:
            assert caller.stdout is not None and caller.stdout.readline().strip() == "done"
            workers = worker_children(caller.pid)
            assert len(workers) == 2
        finally:
            caller.send_signal(signal.SIGKILL)
    wait_until(lambda: not workers & set(_pids(lambda argv: b"nbtasks.worker" in argv)), 15, "orphans to leave")


def test_a_reused_worker_that_dies_is_replaced_and_the_job_completes(tmp_path: Path) -> None:
    nbtasks.pmap(abs, range(20), name="warm-up", progress=False)
    workers = worker_children()
    marker = tmp_path / "killed"

    def kill_once(x: int) -> int:
        if x == 7 and not marker.exists():
            marker.write_text("")
            os.kill(os.getpid(), signal.SIGKILL)
        return x * 2

    assert nbtasks.pmap(kill_once, range(100), name="dies", progress=False) == [x * 2 for x in range(100)]
    assert marker.exists()
    assert len(workers - worker_children()) == 1, "the worker that died is gone, the other still waits"


def test_an_interrupted_run_keeps_no_worker(r: redis.Redis) -> None:
    job = nbtasks.pmap(_slow, range(1000), name="cancelled-warm", background=True, progress=False, concurrency=5)
    wait_until(lambda: job.counts().done >= 10, 60, "progress")
    job.cancel()
    with pytest.raises(nbtasks.JobCancelled):
        job.result()
    wait_until(lambda: not worker_children(), 15, "the cancelled run's workers to leave")


def _slow(x: int) -> int:
    import time

    time.sleep(0.05)
    return x
