"""No oversubscription: each worker's BLAS and OpenMP get cores // processes threads,
unless the caller set them; a warm worker takes the next run's limit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

import nbtasks
from nbtasks import blas
from nbtasks.worker import command

from .conftest import worker_children

ONE_SERVER = True  # (see conftest): thread limits, not the server, are under test

CORES = blas.cores()


@pytest.fixture(autouse=True)
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread variable in this caller's environment, unless a test sets one."""
    for name in blas.VARIABLES:
        monkeypatch.delenv(name, raising=False)


def seen(x: int) -> dict[str, Any]:
    """In a worker: its thread variables, its pid and (with threadpoolctl) the threads of
    each BLAS it has loaded."""
    import numpy  # noqa: F401  (loads OpenBLAS as a user's function would)

    out: dict[str, Any] = {name: os.environ.get(name) for name in blas.VARIABLES}
    out["pid"] = os.getpid()
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return out
    out["blas"] = sorted({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
    return out


def test_limits_give_each_process_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "cores", lambda: 8)
    assert blas.limits({}, 2) == dict.fromkeys(blas.VARIABLES, "4")
    assert blas.limits({}, 3) == dict.fromkeys(blas.VARIABLES, "2")
    assert blas.limits({}, 16) == dict.fromkeys(blas.VARIABLES, "1"), "never fewer than one"
    assert blas.limits({"OPENBLAS_NUM_THREADS": ""}, 2)["OPENBLAS_NUM_THREADS"] == "4", "empty is unset"


def test_limits_keep_the_callers_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "cores", lambda: 8)
    mine = blas.limits({"OPENBLAS_NUM_THREADS": "8", "MKL_NUM_THREADS": "3"}, 2)
    assert mine == {**dict.fromkeys(blas.VARIABLES, "4"), "OPENBLAS_NUM_THREADS": "8", "MKL_NUM_THREADS": "3"}
    # OMP_NUM_THREADS is the one every library falls back on: it stands for the others.
    assert blas.limits({"OMP_NUM_THREADS": "6"}, 2) == dict.fromkeys(blas.VARIABLES, "6")
    assert blas.limits({"OMP_NUM_THREADS": "6,2", "MKL_NUM_THREADS": "1"}, 2) == {
        **dict.fromkeys(blas.VARIABLES, "6"),
        "OMP_NUM_THREADS": "6,2",
        "MKL_NUM_THREADS": "1",
    }


def test_workers_get_cores_per_process(r: redis.Redis) -> None:
    for processes in (1, 2):
        share = str(max(1, CORES // processes))
        out = nbtasks.pmap(
            seen, range(4), name=f"share-{processes}", processes=processes, concurrency=1, progress=False
        )
        assert {o[name] for o in out for name in blas.VARIABLES} == {share}
        if "blas" in out[0]:
            assert {n for o in out for n in o["blas"]} == {int(share)}, "the BLAS numpy loaded runs that many"


def test_the_callers_setting_is_kept(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(CORES))
    out = nbtasks.pmap(seen, range(4), name="mine", processes=2, concurrency=1, progress=False)
    assert {o["OPENBLAS_NUM_THREADS"] for o in out} == {str(CORES)}
    assert {o["MKL_NUM_THREADS"] for o in out} == {str(max(1, CORES // 2))}, "the others are limited"
    if "blas" in out[0]:
        assert {n for o in out for n in o["blas"]} == {CORES}


def test_nbtasks_worker_limits_its_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, str]] = []

    def popen(cmd: list[str], env: dict[str, str], **kw: Any) -> SimpleNamespace:
        started.append(env)
        return SimpleNamespace()

    monkeypatch.setattr(command.subprocess, "Popen", popen)
    monkeypatch.setattr(blas, "cores", lambda: 8)
    monkeypatch.setenv("NUMEXPR_NUM_THREADS", "5")
    lender = command.Service(SimpleNamespace(url="redis://nowhere"), processes=4, concurrency=1)  # type: ignore[arg-type]
    monkeypatch.setattr(lender, "_say", lambda message: None)
    lender._start("job", "token", "code", "eventlet")
    assert {name: started[0][name] for name in blas.VARIABLES} == {
        **dict.fromkeys(blas.VARIABLES, "2"),
        "NUMEXPR_NUM_THREADS": "5",
    }


LOADED = """
import os, sys
import numpy
from nbtasks import blas
from threadpoolctl import threadpool_info


def threads():
    return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]

blas.limit_loaded()  # the first assignment: what loaded read this environment
del sys.modules["threadpoolctl"]
blas.limit_loaded()
assert "threadpoolctl" not in sys.modules, "nothing changed: nothing imported"
before = threads()
os.environ["OPENBLAS_NUM_THREADS"] = "1"  # the next run's assignment
blas.limit_loaded()
one = threads()
os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[1]
blas.limit_loaded()
print(before, one, threads())
"""


def test_limit_loaded_changes_the_libraries_loaded_before() -> None:
    pytest.importorskip("threadpoolctl")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(CORES)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOADED), str(CORES)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    before, one, again = out.stdout.split("] ")
    if before == "[":
        pytest.skip("this numpy has no OpenBLAS")
    assert (before, one, again.strip()) == (f"[{CORES}", "[1", f"[{CORES}]")


@pytest.fixture
def warm(r: redis.Redis) -> Iterator[None]:
    nbtasks.configure(warm=30.0)
    yield
    from nbtasks.pool import warm

    warm.close_all()


@pytest.mark.skipif(CORES < 2, reason="one core: every share is one thread")
def test_a_warm_worker_takes_the_next_runs_limit(warm: None) -> None:
    pytest.importorskip("threadpoolctl")
    first = nbtasks.pmap(seen, range(4), name="warm-2", processes=2, concurrency=1, progress=False)
    assert {n for o in first for n in o["blas"]} == {CORES // 2}
    waiting = worker_children()
    second = nbtasks.pmap(seen, range(4), name="warm-1", processes=1, concurrency=1, progress=False)
    assert len({o["pid"] for o in second} & waiting) == 1, "a worker of the first run took the second"
    assert {n for o in second for n in o["blas"]} == {CORES}, "its numpy, loaded in the first run, got the new limit"
