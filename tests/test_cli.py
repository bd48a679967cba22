"""The nbtasks command: every subcommand's help, exit codes, and output that fits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

import nbtasks

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
    "command", [[], ["status"], ["jobs"], ["failures"], ["reset"], ["worker"], ["server"], ["demo"]]
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
