"""`nbtasks worker`: another machine's processes join a run, leave it cleanly on SIGTERM,
lose their items when they go silent, and refuse a job they cannot run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks.store import JobKeys

from .conftest import wait_until, worker_children

ONE_SERVER = True  # (see conftest): workers on other machines, not the server, are under test

ROOT = Path(__file__).parent.parent


def where(x: int) -> str:
    import time

    time.sleep(0.05)
    place = os.environ.get("NBT_WHERE", "local")
    with open(os.environ["NBT_LOG"], "a") as log:
        log.write(place + "\n")
    return place


@contextmanager
def service(url: str, *args: str, cwd: Path = ROOT, python: str = sys.executable) -> Iterator[subprocess.Popen[str]]:
    """`nbtasks worker` as another machine would run it (its workers say NBT_WHERE=remote)."""
    env = {**os.environ, "NBT_WHERE": "remote"}
    cmd = [python, "-m", "nbtasks", "worker", "--redis", url, "--processes", "1", "--concurrency", "5", *args]
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            for pid in sorted(worker_children(proc.pid)):
                os.kill(pid, signal.SIGKILL)


def places(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "places"
    monkeypatch.setenv("NBT_LOG", str(path))  # local workers inherit it, and so does the service
    return path


def remote_wids(r: redis.Redis, job: str) -> list[str]:
    """Ids of the job's workers started by `nbtasks worker` (host:id; a caller's are token-n)."""
    return [w.decode() for w in r.smembers(JobKeys(job).workers) if b":" in w]


def test_a_worker_joins_a_run_and_sigterm_puts_its_items_back(r: redis.Redis, redis_server, log: Path) -> None:
    job = nbtasks.pmap(where, range(400), name="shared", background=True, processes=1, concurrency=5, progress=False)
    # A long heartbeat: only the worker itself can give its items back in time.
    with service(redis_server.url, "--job", "shared", "--heartbeat", "120") as proc:
        wait_until(lambda: places(log)["remote"] >= 20, 60, "the remote worker at work")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "joined job 'shared'" in out and "stopping: unfinished items go back to their jobs" in out
    wids = remote_wids(r, "shared")
    assert wids and not any(r.exists(JobKeys("shared").claims(w)) for w in wids), "claims left behind"
    results = Counter(job.result(timeout=60))
    assert results["remote"] >= 20 and results["local"] > 0 and results.total() == 400


def test_a_silent_worker_loses_its_items_and_the_job_completes(r: redis.Redis, redis_server, log: Path) -> None:
    job = nbtasks.pmap(where, range(400), name="silent", background=True, processes=1, concurrency=5, progress=False)
    with service(redis_server.url, "--job", "silent", "--heartbeat", "1.5") as proc:
        wait_until(lambda: places(log)["remote"] >= 20, 60, "the remote worker at work")
        frozen = sorted(worker_children(proc.pid))
        assert len(frozen) == 1 and len(remote_wids(r, "silent")) == 1
        wid = remote_wids(r, "silent")[0]
        os.kill(frozen[0], signal.SIGSTOP)  # alive but silent, like a host behind a cut link
        try:
            assert len(job.result(timeout=60)) == 400
            assert not r.sismember(JobKeys("silent").workers, wid), "the caller did not drop the silent worker"
            assert not r.exists(JobKeys("silent").claims(wid))
        finally:
            os.kill(frozen[0], signal.SIGCONT)


def say_where(x: int) -> str:
    place = where(x)
    print("ran at", place)
    return place


def test_the_output_of_a_remote_workers_tasks_lands_in_the_job(r: redis.Redis, redis_server, log: Path) -> None:
    job = nbtasks.pmap(say_where, range(400), name="heard", background=True, processes=1, concurrency=5, progress=False)
    with service(redis_server.url, "--job", "heard"):
        wait_until(lambda: places(log)["remote"] >= 20, 60, "the remote worker at work")
        results = job.result(timeout=120)
    lines = job.logs()
    remote = [line for line in lines if ":" in line.worker]  # (host:id; a caller's workers are token-n)
    assert len(remote) == results.count("remote") and {line.text for line in remote} == {"ran at remote"}
    assert len(lines) == 400 and sorted(line.index for line in lines) == list(range(400))


def test_a_worker_refuses_a_function_it_cannot_load_and_ship_sends_it(
    r: redis.Redis, redis_server, log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib, elsewhere = tmp_path / "lib", tmp_path / "elsewhere"
    lib.mkdir(), elsewhere.mkdir()
    (lib / "remote_only.py").write_text(
        "import os, time\n"
        "def work(x):\n"
        "    time.sleep(0.02)\n"
        "    with open(os.environ['NBT_LOG'], 'a') as log:\n"
        "        log.write(os.environ.get('NBT_WHERE', 'local') + '\\n')\n"
        "    return x + 1\n"
    )
    monkeypatch.syspath_prepend(str(lib))  # the caller's machine has the module; the other does not
    import remote_only  # type: ignore[import-not-found]

    with service(redis_server.url, cwd=elsewhere) as proc:
        job = nbtasks.pmap(
            remote_only.work, range(200), name="unloadable", background=True, processes=1, concurrency=5, progress=False
        )
        assert job.result(timeout=60) == list(range(1, 201)), "the refusal left the items to the caller's worker"
        assert places(log)["remote"] == 0
        refusals = nbtasks.Job("unloadable").refusals()
        assert len(refusals) == 1
        why = next(iter(refusals.values()))
        assert "No module named 'remote_only'" in why and "nbtasks.ship(module)" in why

        nbtasks.ship(remote_only)
        try:
            shipped = nbtasks.pmap(
                remote_only.work,
                range(400),
                name="shipped",
                background=True,
                processes=1,
                concurrency=5,
                progress=False,
            )
            assert shipped.result(timeout=60) == list(range(1, 401))
        finally:
            import cloudpickle

            cloudpickle.unregister_pickle_by_value(remote_only)
            from nbtasks import codec

            codec._shipped.discard(b"remote_only")
        assert places(log)["remote"] > 0, "the shipped module ran on the other machine"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert out.count("refused job 'unloadable'") == 1, out
    sys.modules.pop("remote_only", None)


def candidates() -> list[str]:
    """Other Pythons: pyenv's (this machine has them), then any on PATH."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = [
        str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.1[1-4].*/bin/python3")) if here + "." not in str(p)
    ]
    return found + [w for v in ("3.12", "3.13") if v != here and (w := shutil.which(f"python{v}"))]


@pytest.fixture(scope="session")
def other_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nbtasks installed in a venv of another Python version (once: tests run grouped by
    server, so a module's fixture would be built again for the second)."""
    other = next((p for p in candidates() if subprocess.run([p, "-c", ""], capture_output=True).returncode == 0), None)
    if other is None:
        pytest.skip("no other Python 3 here")
    venv = tmp_path_factory.mktemp("other-python")
    subprocess.run([other, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], check=True, timeout=600)
    return venv / "bin" / "python"


@pytest.mark.slow
def test_a_worker_on_another_python_refuses_the_job(
    r: redis.Redis, redis_server, log: Path, other_python: Path
) -> None:
    job = nbtasks.pmap(where, range(200), name="versions", background=True, processes=1, concurrency=5, progress=False)
    with service(redis_server.url, "--job", "versions", python=str(other_python)) as proc:
        assert len(job.result(timeout=60)) == 200
        wait_until(lambda: nbtasks.Job("versions").refusals(), 30, "the refusal")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"refused job 'versions': it was stored by Python {here}" in out
    assert places(log)["remote"] == 0
