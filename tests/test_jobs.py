"""Background jobs, Job handles, snapshots, status, reset, and the dashboard's actions."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks.store import REGISTRY, JobKeys, open_store

from .conftest import wait_until, worker_pids
from .test_failures import flaky
from .test_pmap import SCRIPT, executions

ONE_SERVER = True  # (see conftest): Job, the dashboard and status, not the server, are under test


def slow(x: int) -> int:
    time.sleep(0.05)
    return -x


def test_background_returns_a_job_at_once_and_result_waits(r: redis.Redis) -> None:
    job = nbtasks.pmap(slow, range(300), background=True, concurrency=5, progress=False)
    assert isinstance(job, nbtasks.Job)
    first = job.counts()
    assert first.state == "running" and first.done < 300 and not job.done()
    assert job.result(timeout=60) == [-x for x in range(300)]
    assert job.done()
    final = job.counts()
    assert (final.state, final.done, final.failed, final.pending, final.running) == ("finished", 300, 0, 0, 0)
    with pytest.raises(AttributeError):
        final.done = 0  # type: ignore[misc]  # a frozen snapshot


def test_same_background_call_while_running_returns_the_same_job(r: redis.Redis) -> None:
    a = nbtasks.pmap(slow, range(200), name="once", background=True, concurrency=5, progress=False)
    b = nbtasks.pmap(slow, range(200), name="once", background=True, concurrency=5, progress=False)
    assert a is b
    assert a.result(timeout=60) == [-x for x in range(200)]


def test_result_timeout(r: redis.Redis) -> None:
    job = nbtasks.pmap(slow, range(400), background=True, concurrency=2, progress=False)
    with pytest.raises(TimeoutError, match="still running after 0.2 s"):
        job.result(timeout=0.2)
    job.cancel()


def test_running_count_and_workers_show_while_running(r: redis.Redis) -> None:
    job = nbtasks.pmap(slow, range(400), name="busy", background=True, concurrency=5, progress=False)
    wait_until(lambda: job.counts().running > 0 and job.counts().workers == 2, 30, "running items and workers")
    snap = job.counts()
    assert snap.running <= 10 and snap.pending == 400 - snap.done - snap.failed - snap.running
    job.cancel()


def test_cancel_keeps_results_and_retry_failed_resumes(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    log = tmp_path / "log"
    cmd = [sys.executable, str(SCRIPT), "--redis", redis_server.url, "--log", str(log), "--n", "400"]
    cmd += ["--name", "cancelled", "--delay", "0.05", "--concurrency", "5"]
    caller = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: r.bitcount(JobKeys("cancelled").done) >= 50, 60, "50 results")

    # Cancelled from this process while another one drives the job.
    nbtasks.Job("cancelled").cancel()
    _, err = caller.communicate(timeout=30)
    assert caller.returncode == 1 and "JobCancelled" in err and "Run the same call again to resume" in err
    assert worker_pids("cancelled") == []
    stopped = nbtasks.Job("cancelled").counts()
    assert stopped.state == "stopped" and 50 <= stopped.done < 400
    assert (stopped.running, stopped.rate, stopped.eta) == (0, 0.0, None)  # no stale numbers of the stopped run
    with pytest.raises(nbtasks.JobCancelled, match="stopped with"):
        nbtasks.Job("cancelled").result()

    # Resumed here from the stored function and inputs: nothing recorded runs again.
    kept = {i for i in range(400) if r.getbit(JobKeys("cancelled").done, i)}
    job = nbtasks.Job("cancelled").retry_failed(concurrency=20, progress=False)
    assert job.result(timeout=60) == [x * x for x in range(400)]
    assert all(executions(log)[i] == 1 for i in kept)


def test_attach_by_name_from_another_process(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--redis", redis_server.url, "--log", str(tmp_path / "log"), "--n", "30"]
    out = subprocess.run([*cmd, "--name", "elsewhere"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = nbtasks.Job("elsewhere")
    assert job.done() and job.result() == json.loads(out.stdout)["results"]
    assert repr(job) == "<nbtasks.Job 'elsewhere' finished: 30/30 done, 0 failed>"
    with pytest.raises(nbtasks.UnknownJob, match="No job named 'nowhere'"):
        nbtasks.Job("nowhere")


def test_failures_of_a_background_job(r: redis.Redis) -> None:
    job = nbtasks.pmap(flaky, range(20), name="flaky", background=True, progress=False)
    with pytest.raises(nbtasks.TaskError):
        job.result(timeout=60)
    assert [f.index for f in job.failures()] == [3, 11]
    assert job.counts().state == "failed"


def test_status_table_detail_jobs_and_reset(r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(nbtasks.TaskError):
        nbtasks.pmap(flaky, range(20), name="flaky", progress=False)
    nbtasks.pmap(abs, range(-5, 5), name="fine", progress=False)
    capsys.readouterr()

    nbtasks.status()
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0].split()
        == "job function done failed retrying pending running workers rate ETA stored age state".split()
    )
    assert lines[1].split()[:5] == ["fine", "abs", "10/10", "100%", "0"] and lines[1].split()[-1] == "finished"
    assert lines[2].split()[:5] == ["flaky", "flaky", "18/20", "90%", "2"] and lines[2].split()[-1] == "failed"

    nbtasks.status("flaky")
    detail = capsys.readouterr().out
    assert "2 failed; the first 2:" in detail and 'raise LookupError(f"no entry for {x}")' in detail

    assert [(s.name, s.state) for s in nbtasks.jobs()] == [("fine", "finished"), ("flaky", "failed")]
    nbtasks.reset("flaky")
    assert [s.name for s in nbtasks.jobs()] == ["fine"]
    assert not [k for k in r.scan_iter("nbtasks:{flaky}:*")] and r.smembers(REGISTRY) == {b"fine"}
    with pytest.raises(nbtasks.UnknownJob):
        nbtasks.reset("flaky")


def test_dashboard_rows_and_actions(r: redis.Redis, redis_server) -> None:
    from nbtasks.job import dashboard

    job = nbtasks.pmap(slow, range(400), name="watched", background=True, concurrency=5, progress=False)
    board = dashboard(open_store(redis_server.url))
    row = board.rows["watched"]
    assert row.cancel.disabled is False and row.delete.disabled is True and row.bar.max == 400

    row.cancel.click()
    wait_until(lambda: job.done(), 30, "the job to stop")
    board.refresh()
    assert (row.bar.bar_style, row.cancel.disabled, row.retry.disabled) == ("warning", True, False)
    assert "stopped" in row.numbers.value

    row.retry.click()  # runs what is missing, in the background, here
    assert nbtasks.Job("watched").result(timeout=60) == [-x for x in range(400)]
    board.refresh()
    assert (row.bar.value, row.bar.bar_style, row.retry.disabled) == (400, "success", True)

    row.delete.click()
    assert row.confirm.layout.display == "flex"  # asks first
    row.not_sure.click()
    assert row.confirm.layout.display == "none" and [s.name for s in nbtasks.jobs()] == ["watched"]
    row.delete.click()
    row.sure.click()
    assert nbtasks.jobs() == [] and "watched" not in board.rows
    assert board.running()  # the actions restarted the refresh
    board.stop()
    assert not board.running()


def test_dashboard_shows_failures_with_tracebacks(r: redis.Redis, redis_server) -> None:
    from nbtasks.job import dashboard

    with pytest.raises(nbtasks.TaskError):
        nbtasks.pmap(flaky, range(20), name="flaky", progress=False)
    row = dashboard(open_store(redis_server.url)).rows["flaky"]
    assert row.show_failures.description == "Failures (2)" and row.failures.value == ""
    row.show_failures.value = True
    assert row.failures.value.count("<details>") == 2 and "no entry for 11" in row.failures.value


def test_dashboard_refreshes_by_itself_while_jobs_run_then_stops(r: redis.Redis, redis_server) -> None:
    from nbtasks.job import dashboard

    job = nbtasks.pmap(slow, range(300), name="live", background=True, concurrency=5, progress=False)
    board = dashboard(open_store(redis_server.url), interval=0.05)
    row = board.rows["live"]
    assert row.bar.value < 300
    board.start()
    wait_until(lambda: row.bar.value == 300 and row.bar.bar_style == "success", 60, "the bar to fill by itself")
    wait_until(lambda: not board.running(), 10, "refreshing to stop once nothing changes")
    assert job.done()


def test_background_with_no_inputs_is_still_a_job(r: redis.Redis) -> None:
    job = nbtasks.pmap(abs, [], background=True, progress=False)
    assert isinstance(job, nbtasks.Job) and job.done() and job.result() == []


def _age(r: redis.Redis, job: str, days: float) -> None:
    """Make a job look last called and run `days` ago (its times, as the store keeps them)."""
    then = time.time() - days * 86400
    r.hset(JobKeys(job).meta, mapping={f: then for f in ("created", "started", "ended", "used")})


def test_prune_deletes_jobs_unused_for_long_and_never_one_that_runs(r: redis.Redis, redis_server) -> None:
    for name in ("old", "recent", "old-running"):
        assert nbtasks.pmap(abs, range(-50, 0), name=name, progress=False) == list(range(50, 0, -1))
    _age(r, "old", 10)
    _age(r, "old-running", 10)
    running = nbtasks.pmap(slow, range(400), name="old-running", background=True, concurrency=2, progress=False)
    _age(r, "old-running", 10)  # (its run began now: old as it looks, it runs)

    would = nbtasks.prune("7d", dry_run=True)
    assert [p.name for p in would] == ["old"] and would[0].idle > 9 * 86400 and would[0].size > 1000
    assert {s.name for s in nbtasks.jobs()} == {"old", "recent", "old-running"}, "a dry run deletes nothing"

    gone = nbtasks.prune("7d")
    assert [(p.name, p.size) for p in gone] == [("old", would[0].size)]
    assert not list(r.scan_iter("nbtasks:{old}:*")) and b"old" not in r.smembers(REGISTRY)
    assert {s.name for s in nbtasks.jobs()} == {"recent", "old-running"}
    running.cancel()  # stopped now: used just now, so kept
    assert nbtasks.prune("7d") == [] and {s.name for s in nbtasks.jobs()} == {"recent", "old-running"}


def test_a_call_on_an_old_finished_job_makes_it_recent_again(r: redis.Redis) -> None:
    assert nbtasks.pmap(abs, range(-5, 0), name="revisited", progress=False) == [5, 4, 3, 2, 1]
    _age(r, "revisited", 10)
    assert nbtasks.pmap(abs, range(-5, 0), name="revisited", progress=False) == [5, 4, 3, 2, 1]  # nothing runs
    assert nbtasks.prune("7d") == [] and [s.name for s in nbtasks.jobs()] == ["revisited"]


def test_the_prune_command_says_what_it_frees_and_asks_first(r: redis.Redis, redis_server) -> None:
    from .test_cli import nbt

    assert nbtasks.pmap(abs, range(-50, 0), name="forgotten", progress=False) == list(range(50, 0, -1))
    _age(r, "forgotten", 3)
    dry = nbt("prune", "--older-than", "2d", "--dry-run", url=redis_server.url)
    assert (
        dry.returncode == 0 and dry.stdout.startswith("forgotten\tunused for 3d") and "Would delete 1 job" in dry.stdout
    )
    asked = nbt("prune", "--older-than", "2d", url=redis_server.url, stdin="")
    assert asked.returncode == 1 and "Nothing deleted." in asked.stderr  # no terminal to ask: no
    done = nbt("prune", "--older-than", "2d", "--yes", url=redis_server.url)
    assert done.returncode == 0 and "Deleted 1 job, freeing about" in done.stdout, done.stderr
    assert nbtasks.jobs() == []
    assert "No job has gone unused for 2d." in nbt("prune", "--older-than", "2d", url=redis_server.url).stdout


def hundred_kb(x: int) -> bytes:
    return random.Random(x).randbytes(100_000)  # (incompressible: stored as is)


def test_each_job_shows_what_it_takes_of_the_servers_memory(r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    nbtasks.pmap(abs, range(-5, 5), name="small", progress=False)
    nbtasks.pmap(hundred_kb, range(40), name="pages", progress=False)  # 4 MB of results
    sizes = {s.name: s.size for s in nbtasks.jobs()}
    assert 0 < sizes["small"] < 100_000 and sizes["pages"] > 4_000_000, sizes
    capsys.readouterr()
    nbtasks.status()
    pages = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pages"))
    assert " MiB " in pages, pages  # the "stored" column


def test_a_job_given_a_lifetime_is_pruned_once_unused_that_long_and_others_stay(r: redis.Redis) -> None:
    assert nbtasks.pmap(abs, range(-5, 0), name="brief", keep="1h", progress=False) == [5, 4, 3, 2, 1]
    assert nbtasks.pmap(abs, range(-5, 0), name="kept", progress=False) == [5, 4, 3, 2, 1]  # forever
    _age(r, "brief", 2 / 24)
    _age(r, "kept", 400)
    assert [p.name for p in nbtasks.prune()] == ["brief"]
    assert [s.name for s in nbtasks.jobs()] == ["kept"]
    with pytest.raises(nbtasks.ConfigError, match="keep= must be a positive duration"):
        nbtasks.pmap(abs, range(3), keep="0s")


EXPIRES = """
import sys, nbtasks
nbtasks.configure(redis_url=sys.argv[1])
print(nbtasks.pmap(abs, range(-3, 0), name="today", progress=False))
"""


def test_a_new_process_deletes_jobs_past_their_keep_as_it_makes_its_first_call(r: redis.Redis, redis_server) -> None:
    nbtasks.configure(keep="1d")  # the default lifetime, as configure(...) or NBTASKS_KEEP gives it
    assert nbtasks.pmap(abs, range(-5, 0), name="last-week", progress=False) == [5, 4, 3, 2, 1]
    _age(r, "last-week", 7)
    done = subprocess.run([sys.executable, "-c", EXPIRES, redis_server.url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[3, 2, 1]", done.stderr
    assert [s.name for s in nbtasks.jobs()] == ["today"]
