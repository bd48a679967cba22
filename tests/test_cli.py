"""The nbtasks command: every subcommand's help, exit codes, and output that fits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

import nbtasks
from nbtasks.job_status import count

ONE_SERVER = True  # (see conftest): the command line, not the server, is under test


def nbt(
    *args: str, url: str | None = None, columns: int = 200, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    if url is not None:
        env["NBTASKS_REDIS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "nbtasks", *args], capture_output=True, text=True, env=env, timeout=60, input=stdin
    )


@pytest.mark.parametrize(
    "command",
    [[], ["status"], ["jobs"], ["failures"], ["logs"], ["reset"], ["prune"], ["worker"], ["server"], ["demo"]],
)
def test_every_command_has_help_with_the_exit_codes(command: list[str]) -> None:
    out = nbt(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: nbtasks" in out.stdout
    if command != ["demo"]:  # the demo's options are its own
        assert "4    no job of that name" in out.stdout


def fails(x: int) -> int:
    if x % 10 == 3:
        raise ValueError(f"three at {x}")
    return x


def test_status_jobs_failures_reset_and_their_exit_codes(r: redis.Redis, redis_server) -> None:
    url = redis_server.url
    assert nbt("status", url=url).stdout.strip() == "No jobs. nbtasks.pmap(func, items) creates one."
    nbtasks.pmap(abs, range(50), name="fine", progress=False)
    nbtasks.pmap(fails, range(40), name="broken", errors="return", progress=False)

    status = nbt("status", url=url)
    assert status.returncode == 0
    rows = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert "50/50" in rows["fine"] and "finished" in rows["fine"]
    assert "36/40" in rows["broken"] and "failed" in rows["broken"]

    assert sorted(nbt("jobs", url=url).stdout.splitlines()) == ["broken\tfailed\t36/40\t4", "fine\tfinished\t50/50\t0"]

    one = nbt("status", "broken", url=url)
    assert one.returncode == 0 and "4 failed; the first 3:" in one.stdout

    failures = nbt("failures", "broken", "--limit", "2", url=url)
    assert failures.returncode == 1
    assert "item 3 (input 3) raised ValueError: three at 3" in failures.stdout
    assert 'raise ValueError(f"three at {x}")' in failures.stdout
    assert "4 failed (2 more: --limit 0 shows all)." in failures.stdout
    assert nbt("failures", "fine", url=url).returncode == 0

    for command in (["status", "nope"], ["failures", "nope"], ["reset", "nope", "--yes"]):
        missing = nbt(*command, url=url)
        assert missing.returncode == 4 and "No job named 'nope'" in missing.stderr

    assert nbt("reset", "fine", url=url).returncode == 1  # asked, and no terminal to answer
    assert nbt("reset", "fine", "--yes", url=url).returncode == 0
    assert nbt("jobs", url=url).stdout.splitlines() == ["broken\tfailed\t36/40\t4"]


def test_an_unreachable_redis_is_exit_code_5(tmp_path) -> None:
    out = nbt("status", "--redis", f"unix://{tmp_path}/nothing.sock")
    assert out.returncode == 5
    assert "Cannot reach Redis" in out.stderr and "Traceback" not in out.stderr


def test_the_status_table_fits_a_narrow_terminal(r: redis.Redis, redis_server) -> None:
    nbtasks.pmap(abs, range(20), name="narrow", progress=False)
    nbtasks.pmap(abs, range(2000), progress=False)  # an automatic name: abs-<12 hex digits>
    wide = nbt("status", url=redis_server.url)
    assert "function" in wide.stdout.splitlines()[0]
    for columns in (60, 50):
        narrow = nbt("status", url=redis_server.url, columns=columns)
        assert all(len(line) <= columns for line in narrow.stdout.splitlines()), narrow.stdout
        assert "20/20" in narrow.stdout and "2000/2000" in narrow.stdout and "finished" in narrow.stdout


def test_output_cut_short_by_its_reader_ends_quietly(r: redis.Redis, redis_server) -> None:
    nbtasks.pmap(fails, range(400), name="many", errors="return", progress=False)
    for command in ("failures many --limit 0", "logs many", "jobs"):
        piped = subprocess.run(
            f"{sys.executable} -m nbtasks {command} | head -1",
            shell=True,
            capture_output=True,
            text=True,
            env={**os.environ, "NBTASKS_REDIS_URL": redis_server.url},
            timeout=60,
        )
        assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, (command, piped.stderr)


def test_one_is_one(r: redis.Redis, redis_server) -> None:
    nbtasks.pmap(fails, [3, 4], name="single", errors="return", progress=False)
    shown = nbt("status", "single", url=redis_server.url).stdout
    assert "1 failed; the first:" in shown
    assert (count(1, "input"), count(2, "input"), count(1000, "item")) == ("1 input", "2 inputs", "1,000 items")


def test_reset_during_a_run_does_not_say_how_to_resume(r: redis.Redis, capfd: pytest.CaptureFixture[str]) -> None:
    job = nbtasks.pmap(slow, range(200), name="doomed", background=True, processes=1, concurrency=2, progress=False)
    job.counts()  # it exists, and runs
    nbtasks.reset("doomed")
    with pytest.raises((nbtasks.JobCancelled, nbtasks.UnknownJob)):
        job.result(timeout=60)  # (waits for the run's thread, which said what happened)
    err = capfd.readouterr().err
    assert "job 'doomed' is being deleted" in err and "resume" not in err


def slow(x: int) -> int:
    import time

    time.sleep(0.05)
    return x


def test_status_watch_refreshes_until_no_job_runs(r: redis.Redis, redis_server) -> None:
    job = nbtasks.pmap(slow, range(60), name="watched", background=True, processes=1, concurrency=2, progress=False)
    watched = nbt("status", "--watch", url=redis_server.url)
    assert watched.returncode == 0, watched.stderr
    tables = [t for t in watched.stdout.split("\n\n") if "watched" in t]
    assert len(tables) >= 2, watched.stdout  # it refreshed while the job ran...
    assert "running" in tables[0] and "finished" in tables[-1]  # ...and stopped once it ended
    assert job.result(timeout=60) == list(range(60))


def test_the_text_bar_shows_failures_as_they_happen(r: redis.Redis, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    release = tmp_path / "release"
    script = os.path.join(os.path.dirname(__file__), "scripts", "failing_bar.py")
    env = {**os.environ, "RELEASE": str(release)}
    proc = subprocess.Popen([sys.executable, script, redis_server.url], stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    seen = b""
    try:
        while b"failed=20" not in seen:
            chunk = proc.stderr.read1(4096)
            assert chunk, f"the run ended without showing its failures: {seen[-500:]!r}"
            seen += chunk
    finally:
        release.touch()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
