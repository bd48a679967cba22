"""What tasks print, warn and log reaches the caller (marked with the item), is kept per
job (`Job.logs()`, `nbtasks logs`), and travels with a Failure; floods are capped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
import redis
from nbclient import NotebookClient

import nbtasks
from nbtasks.output import KEEP, LINE_MAX, SHOW
from nbtasks.store import JobKeys

from .conftest import wait_until

ONE_SERVER = True  # (see conftest): what tasks print, not the server, is under test

BACKENDS = ["eventlet", "threads"]


def chatty(x: int) -> int:
    print("out", x)
    print("err", x, file=sys.stderr)
    logging.getLogger("app").warning("logged %d", x)
    nbtasks.logger.debug("debug %d", x)
    return x * 2


async def chatty_async(x: int) -> int:
    return chatty(x)


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


@pytest.mark.parametrize("backend", [*BACKENDS, "asyncio"])
def test_prints_and_log_records_reach_the_caller_marked_with_their_item(
    r: redis.Redis, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    func = chatty_async if backend == "asyncio" else chatty
    assert nbtasks.pmap(func, range(6), processes=2, concurrency=3, progress=False, backend=backend) == [
        0,
        2,
        4,
        6,
        8,
        10,
    ]
    out, err = capsys.readouterr()
    assert sorted(lines_of(out)) == [f"[item {i}] out {i}" for i in range(6)]
    shown = set(lines_of(err))
    for i in range(6):
        assert f"[item {i}] err {i}" in shown
        # (formatted as pytest's own handler formats: the caller's logging applies)
        assert any(s.startswith(f"[item {i}] WARNING") and s.endswith(f"logged {i}") for s in shown)
        assert any(s.startswith(f"[item {i}] DEBUG") and s.endswith(f"debug {i}") for s in shown)  # nbtasks.logger


def test_the_job_keeps_its_output_and_the_command_shows_it(r: redis.Redis, redis_server) -> None:  # type: ignore[no-untyped-def]
    nbtasks.pmap(chatty, range(4), processes=1, progress=False, name="chat")
    kept = nbtasks.Job("chat").logs()
    assert {(line.index, line.stream, line.text) for line in kept} >= {
        *((i, "out", f"out {i}") for i in range(4)),
        *((i, "err", f"err {i}") for i in range(4)),
    }
    assert {line.index for line in kept if line.stream == "log" and line.text.endswith("logged")} <= set(range(4))
    assert all(line.worker and line.time > 0 for line in kept)
    assert [str(line) for line in nbtasks.Job("chat").logs(last=2)] == [str(line) for line in kept[-2:]]
    env = {**os.environ, "NBTASKS_REDIS_URL": redis_server.url}
    shown = subprocess.run(
        [sys.executable, "-m", "nbtasks", "logs", "chat"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert shown == [str(line) for line in kept]


def test_logs_follow_prints_lines_as_tasks_write_them(r: redis.Redis, redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    nbtasks.pmap(chatty, range(2), processes=1, progress=False, name="followed")
    env = {**os.environ, "NBTASKS_REDIS_URL": redis_server.url, "PYTHONUNBUFFERED": "1"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "nbtasks", "logs", "followed", "--follow"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        first = [follower.stdout.readline() for _ in range(8)]  # what was there already
        assert "[item 0] out 0\n" in first
        nbtasks.pmap(chatty, range(2, 4), processes=1, progress=False, name="followed")
        later = [follower.stdout.readline() for _ in range(8)]
        assert "[item 3] out 3\n" in later
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()


def wait_for_file(x: str) -> str:
    """Says it began, then waits for the test to create the file named `x`."""
    print("begun", x, flush=True)
    path = Path(x)
    for _ in range(6000):
        if path.exists():
            return x
        time.sleep(0.01)
    raise TimeoutError("the caller never saw the first line")


def test_output_is_stored_while_the_task_still_runs(r: redis.Redis, tmp_path: Path) -> None:
    # The task waits until the test has seen its first line: stored only at the end, never.
    marker = str(tmp_path / "seen")
    job = nbtasks.pmap(wait_for_file, [marker], processes=1, progress=False, background=True)
    wait_until(lambda: any(line.text == f"begun {marker}" for line in job.logs()), 30, "the first line in the store")
    Path(marker).touch()
    assert job.result(timeout=60) == [marker]


def flood(x: int) -> int:
    for k in range(300):
        print(f"line {k} of item {x}")
    return x


def test_a_flood_shows_the_first_lines_then_says_how_many_more_and_where(
    r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nbtasks.pmap(flood, range(5), processes=2, progress=False, name="flood") == list(range(5))
    out, err = capsys.readouterr()
    assert len(lines_of(out)) == SHOW
    assert f"nbtasks: {5 * 300 - SHOW:,} more lines of output not shown" in err
    assert "nbtasks logs flood" in err
    assert len(nbtasks.Job("flood").logs()) == 5 * 300


def huge_lines(x: int) -> int:
    sys.stdout.write("x" * 5_000_000)  # megabytes, and no newline
    print("y" * 100_000)
    return x


def test_a_task_that_prints_megabytes_is_cut_and_loses_nothing_else(r: redis.Redis) -> None:
    assert nbtasks.pmap(huge_lines, range(3), processes=1, progress=False, name="huge") == [0, 1, 2]
    kept = nbtasks.Job("huge").logs()
    assert kept and all(len(line.text) < LINE_MAX + 100 for line in kept)
    assert any(line.text.endswith(f"({5_000_000 - LINE_MAX:,} more characters)") for line in kept)


def closes_stdout(x: int) -> int:
    if x == 0:
        sys.stdout.close()
    print("still here", x)
    return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_that_closes_stdout_does_not_silence_the_others(r: redis.Redis, backend: str) -> None:
    out = nbtasks.pmap(closes_stdout, range(4), processes=1, concurrency=1, progress=False, backend=backend)
    assert out == [0, 1, 2, 3]
    job = nbtasks.jobs()[0].name
    assert sorted(line.text for line in nbtasks.Job(job).logs()) == [f"still here {i}" for i in range(4)]


def log_flood(x: int) -> int:
    log = logging.getLogger("flood")
    for k in range(50_000):
        log.error("record %d", k)
    return x


def test_a_task_flooding_logging_is_capped_and_its_result_kept(r: redis.Redis) -> None:
    assert nbtasks.pmap(log_flood, range(2), processes=1, progress=False, name="logflood") == [0, 1]
    kept = r.xlen(JobKeys("logflood").output)
    assert KEEP <= kept < KEEP + 1000  # trimmed oldest first (approximately, as Redis trims)
    assert nbtasks.Job("logflood").logs()[-1].text.endswith("record 49999") or any(
        "lines of output dropped" in line.text for line in nbtasks.Job("logflood").logs()
    )


def fails_after_printing(x: int) -> int:
    print("about to fail on", x)
    raise ValueError(f"bad {x}")


def test_a_failure_carries_the_output_of_its_attempt(r: redis.Redis) -> None:
    out = nbtasks.pmap(fails_after_printing, range(3), processes=1, progress=False, errors="return")
    assert [f.output for f in out] == [f"about to fail on {i}" for i in range(3)]
    with pytest.raises(nbtasks.TaskError, match="about to fail on 0"):
        nbtasks.pmap(fails_after_printing, range(3), processes=1, progress=False)


CALLER = """
import logging, sys
import nbtasks
nbtasks.configure(redis_url=sys.argv[1])
logging.basicConfig(format="%(levelname)s|%(name)s|%(message)s", level=logging.INFO)
logging.getLogger("quiet").setLevel(logging.ERROR)

def task(x):
    logging.getLogger("app").info("info %d", x)
    logging.getLogger("app").debug("debug %d", x)
    logging.getLogger("quiet").warning("hidden %d", x)
    logging.getLogger("quiet").error("shown %d", x)
    return x

print(nbtasks.pmap(task, range(3), processes=1, progress=False))
print("eventlet" in sys.modules)
"""


def test_the_callers_logging_level_and_format_apply_in_workers(redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    done = subprocess.run([sys.executable, str(script), redis_server.url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[0, 1, 2]", "False"]
    shown = lines_of(done.stderr)
    assert sorted(shown) == sorted(
        [f"[item {i}] INFO|app|info {i}" for i in range(3)] + [f"[item {i}] ERROR|quiet|shown {i}" for i in range(3)]
    )


NOTEBOOK_CELL = """
import nbtasks

def noisy(x):
    print("page", x)
    return x
assert nbtasks.pmap(noisy, range(3), processes=1) == [0, 1, 2]
"""


def test_output_shows_under_the_progress_bar_in_jupyter(home: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(NOTEBOOK_CELL))])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    kinds = [
        "widget" if "application/vnd.jupyter.widget-view+json" in o.get("data", {}) else o.output_type for o in outputs
    ]
    assert kinds[0] == "widget", kinds  # the bar first, the lines under it
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert sorted(lines_of(printed)) == ["[item 0] page 0", "[item 1] page 1", "[item 2] page 2"]
