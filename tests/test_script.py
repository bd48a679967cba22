"""The tasks.py interface: a script through every verb, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import redis

from nbtasks.store import JobKeys

from .conftest import wait_until

ONE_SERVER = True  # (see conftest): the tasks.py interface, not the server, is under test

SCRIPT = Path(__file__).parent / "scripts" / "crawl.py"


def crawl(
    tmp_path: Path, url: str, *args: str, stdin: str | None = None, delay: float = 0.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env(tmp_path, url, delay),
    )


def env(tmp_path: Path, url: str, delay: float = 0.0) -> dict[str, str]:
    return {**os.environ, "CRAWL_LOG": str(tmp_path / "log"), "CRAWL_REDIS": url, "CRAWL_DELAY": str(delay)}


def executions(tmp_path: Path) -> Counter[str]:
    log = tmp_path / "log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def test_every_verb_keeps_order_duplicates_results_and_failures(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    url = redis_server.url
    (tmp_path / "first.txt").write_text("a\nb\na\nbad-1\nc\n")
    added = crawl(tmp_path, url, "add", str(tmp_path / "first.txt"))
    assert added.returncode == 0 and "added 5 inputs; 5 in all" in added.stdout
    again = crawl(tmp_path, url, "add", "-", stdin="d\na\n")  # a second add appends
    assert again.returncode == 0 and "added 2 inputs; 7 in all" in again.stdout

    run = crawl(tmp_path, url, "run")
    assert run.returncode == 1, run.stderr  # one item failed
    assert "6 of 7 done, 1 failed" in run.stdout
    assert "7/7" not in run.stderr and "6/7" in run.stderr, "a terminal progress bar"

    results = [json.loads(line) for line in crawl(tmp_path, url, "results").stdout.splitlines()]
    lines = ["a", "b", "a", "bad-1", "c", "d", "a"]
    assert [x["index"] for x in results] == list(range(7))
    assert [x.get("result") for x in results] == [s.upper() + "!" if s != "bad-1" else None for s in lines]
    assert results[3]["error"] == "ValueError: cannot fetch bad-1"

    status = crawl(tmp_path, url, "status")
    assert status.returncode == 0
    assert "6/7" in status.stdout and "1 failed" in status.stdout
    assert "item 3 (input 'bad-1') raised ValueError: cannot fetch bad-1" in status.stdout
    assert 'raise ValueError(f"cannot fetch {line}")' in status.stdout, "the remote traceback, with its source line"

    # Running again retries only the failure; results are kept.
    before = executions(tmp_path)
    assert crawl(tmp_path, url, "run").returncode == 1
    assert executions(tmp_path) - before == Counter({"bad-1": 1})

    refused = crawl(tmp_path, url, "reset")  # stdin is not a terminal: no is the answer
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert r.exists(JobKeys("crawl").results)
    assert crawl(tmp_path, url, "reset", "--yes").returncode == 0
    assert not r.exists(JobKeys("crawl").results) and not r.exists(JobKeys("crawl").meta)
    gone = crawl(tmp_path, url, "status")
    assert gone.returncode == 4 and "add some first" in gone.stderr


def test_a_killed_run_resumes_without_running_recorded_items_again(
    r: redis.Redis, redis_server, tmp_path: Path
) -> None:
    url = redis_server.url
    lines = [f"u{i}" for i in range(300)]
    (tmp_path / "urls.txt").write_text("\n".join(lines) + "\n")
    assert crawl(tmp_path, url, "add", str(tmp_path / "urls.txt")).returncode == 0
    done = JobKeys("crawl").done
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), "run"],
        env=env(tmp_path, url, delay=0.05),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as first:
        wait_until(lambda: r.bitcount(done) >= 50, 60, "50 results")
        first.send_signal(signal.SIGKILL)
    recorded = {i for i in range(300) if r.getbit(done, i)}
    second = crawl(tmp_path, url, "run", delay=0.05)
    assert second.returncode == 0, second.stderr
    assert "300 of 300 done, 0 failed" in second.stdout
    runs = executions(tmp_path)
    assert set(runs) == set(lines)
    assert all(runs[f"u{i}"] == 1 for i in recorded), "an item recorded before the kill ran again"
    results = [json.loads(line)["result"] for line in crawl(tmp_path, url, "results").stdout.splitlines()]
    assert results == [s.upper() + "!" for s in lines]
