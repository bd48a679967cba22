"""Tasks that raise, workers that die, and bad input: clear errors, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks.store import JobKeys

from .conftest import RedisServer, wait_until, worker_pids
from .stored import payloads
from .test_pmap import SCRIPT, executions, square


def test_failures_do_not_stop_the_others_and_rerun_retries_only_them(
    r: redis.Redis, redis_server, tmp_path: Path
) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    flag.touch()
    cmd = [sys.executable, str(SCRIPT), "--redis", redis_server.url, "--log", str(log), "--n", "50"]
    cmd += ["--fail-while", str(flag)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    failing = [i for i in range(50) if i % 7 == 0]
    assert first.returncode == 1
    assert json.loads(first.stdout) == {"failed": failing}
    assert executions(log) == {i: 1 for i in range(50)}

    flag.unlink()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["results"] == [x * x for x in range(50)]
    assert executions(log) == {i: 2 if i in failing else 1 for i in range(50)}


def flaky(x: int) -> int:
    if x in (3, 11):
        raise LookupError(f"no entry for {x}")
    return x


def test_task_error_names_count_first_index_input_and_remote_traceback(r: redis.Redis) -> None:
    with pytest.raises(nbtasks.TaskError) as info:
        nbtasks.pmap(flaky, [f"x{i}" if i == 3 else i for i in range(20)], progress=False)
    err = info.value
    assert isinstance(err, nbtasks.NbtasksError)
    assert [f.index for f in err.failures] == [11]  # "x3" is not 3: it passes
    with pytest.raises(nbtasks.TaskError) as info:
        nbtasks.pmap(flaky, range(20), progress=False)
    err = info.value
    assert [(f.index, f.input, f.exc_type) for f in err.failures] == [(3, 3, "LookupError"), (11, 11, "LookupError")]
    message = str(err)
    assert message.startswith("2 of 20 tasks of job ")
    assert "item 3 (input 3) raised LookupError: no entry for 3" in message
    assert 'raise LookupError(f"no entry for {x}")' in message  # the remote source line
    assert "in flaky" in err.failures[1].traceback


def test_progress_bar_shows_counts_and_failures(r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(nbtasks.TaskError):
        nbtasks.pmap(flaky, range(20), name="bar")
    err = capsys.readouterr().err
    assert "bar:" in err and "18/20" in err and "failed=2" in err


def die_once(path: str) -> int:
    # The first execution kills its worker outright; the retry on another worker succeeds.
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return 1
    os.close(fd)
    os._exit(9)


def test_a_dying_worker_is_replaced_and_its_items_go_back(r: redis.Redis, tmp_path: Path) -> None:
    paths = [str(tmp_path / "died")] + [str(tmp_path / f"ok{i}") for i in range(30)]
    for p in paths[1:]:
        Path(p).touch()
    assert nbtasks.pmap(die_once, paths, processes=2, concurrency=4, progress=False) == [1] * 31


class Unloadable:
    """Pickles in the caller but cannot be loaded in a worker."""

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse_to_load, ())


def _refuse_to_load() -> None:
    raise ImportError("module 'secret_sauce' is only on the laptop")


def test_a_function_workers_cannot_load_is_a_clear_error(r: redis.Redis) -> None:
    with pytest.raises(nbtasks.WorkerError, match="could not be loaded here: ImportError: module 'secret_sauce'"):
        nbtasks.pmap(Unloadable(), range(5), progress=False)


def test_unpicklable_function_fails_before_anything_is_stored(r: redis.Redis) -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(nbtasks.NotPicklableError, match="Cannot send function .*uses_lock.* lock"):
        nbtasks.pmap(uses_lock, range(5))
    assert r.dbsize() == 0


def test_unpicklable_input_names_the_item(r: redis.Redis) -> None:
    with pytest.raises(nbtasks.NotPicklableError, match="Input 2 .generator."):
        nbtasks.pmap(square, [1, 2, (i for i in range(3))])
    assert r.dbsize() == 0


def test_non_iterable_is_a_clear_error(r: redis.Redis) -> None:
    with pytest.raises(TypeError, match="needs an iterable of inputs .* not int"):
        nbtasks.pmap(square, 5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="takes the function first"):
        nbtasks.pmap([1, 2], square)  # type: ignore[call-overload]


def test_unreachable_redis_names_the_url_and_what_to_do(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nothing-here.sock"
    with pytest.raises(nbtasks.RedisUnavailable, match=f"Cannot reach Redis at {url}.*Start that server"):
        nbtasks.pmap(square, range(3), redis=url)
    with pytest.raises(nbtasks.RedisUnavailable, match=r"redis://:\*\*\*@127.0.0.1:1/0"):
        nbtasks.pmap(square, range(3), redis="redis://:hunter2@127.0.0.1:1/0")


def test_name_reused_with_other_inputs_runs_only_the_new_ones(r: redis.Redis) -> None:
    assert nbtasks.pmap(square, range(5), name="crawl", progress=False) == [0, 1, 4, 9, 16]
    before = payloads(r, JobKeys("crawl").results)
    assert nbtasks.pmap(square, range(6), name="crawl", progress=False) == [0, 1, 4, 9, 16, 25]
    after = payloads(r, JobKeys("crawl").results)
    assert len(after) == 6 and {k: after[k] for k in before} == before  # the five kept, one added
    assert nbtasks.pmap(square, range(6), name="crawl", fresh=True, progress=False) == [0, 1, 4, 9, 16, 25]
    assert nbtasks.pmap(square, [], name="crawl", progress=False) == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(nbtasks.ConfigError, match="concurrency must be 1 or more"):
        nbtasks.pmap(square, range(3), concurrency=0)
    with pytest.raises(nbtasks.ConfigError, match="name= must be a non-empty string"):
        nbtasks.pmap(square, range(3), name="")


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def test_losing_redis_for_good_is_a_clear_error_and_leaves_no_worker(tmp_path: Path) -> None:
    own = RedisServer(tmp_path)  # this test kills its server
    client = redis.Redis.from_url(own.url)

    def kill_after_some_results() -> None:
        wait_until(lambda: client.bitcount(JobKeys("lost").done) >= 20, 60, "20 results")
        own.stop()

    killer = threading.Thread(target=kill_after_some_results)
    killer.start()
    nbtasks.configure(outage_limit=1.0)  # not ours to restart: give up soon
    try:
        with pytest.raises(nbtasks.RedisUnavailable, match="Lost Redis at .* for 1 s .* run the same call again"):
            nbtasks.pmap(slow_square, range(2000), name="lost", redis=own.url, concurrency=5, progress=False)
    finally:
        killer.join()
        client.close()
        own.stop()  # already stopped unless the test failed early
    assert worker_pids("lost") == []
