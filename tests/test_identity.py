"""A job's identity (issue 14): ``pmap(f, items)`` returns what ``list(map(f, items))``
returns in the caller at that moment, runs only the inputs that have no result under the
function's identity, and unchanged code resumes in a new process."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

import nbtasks
from nbtasks import codec, define, identity
from nbtasks.store import JobKeys

from .stored import payloads
from .test_pmap import executions

# (see conftest): which function a result belongs to is under test, not the server; the
# tests of how results are laid out in the server run against both (both_servers).
ONE_SERVER = True

SCRIPTS = Path(__file__).parent / "scripts"

# Globals that the tests' functions read and that the tests change between two calls;
# each test sets the value it starts from.
threshold = 10
table: dict[str, int] = {"k": 1}
frame: Any = None


def record(log: Path, x: object) -> None:
    """Leave one line per execution; O_APPEND keeps concurrent workers' lines whole."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{x}\n".encode())
    os.close(fd)


def run(log: Path, func: Callable[[Any], Any], items: Iterable[Any], **kw: Any) -> tuple[list[Any], Counter[int]]:
    """pmap on one worker process, and the executions it caused, read from the log."""
    before = executions(log)
    results = nbtasks.pmap(func, items, processes=1, concurrency=4, progress=False, **kw)
    return results, executions(log) - before


def pmap1(func: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    return list(nbtasks.pmap(func, items, processes=1, concurrency=4, progress=False))


def call_script(name: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run a caller script of tests/scripts in a new process; its printed JSON."""
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def below_threshold(log: Path) -> Callable[[int], int]:
    """A task (by value: a closure) that reads the module's global `threshold`."""

    def f(x: int) -> int:
        record(log, x)
        return x if x < threshold else -x

    return f


def test_a_changed_global_is_read_anew(r: redis.Redis, tmp_path: Path) -> None:
    global threshold
    log = tmp_path / "log"

    f = below_threshold(log)

    threshold = 10
    assert run(log, f, range(6))[0] == list(map(f, range(6)))
    threshold = 0
    results, ran = run(log, f, range(6))
    assert results == list(map(f, range(6)))
    assert ran == Counter(range(6))


def test_a_lambda_in_a_loop_sees_the_current_closure_value(r: redis.Redis) -> None:
    seen = []
    for k in (2, 3):
        got = pmap1(lambda x: x * k, range(4))  # noqa: B023
        assert got == list(map(lambda x: x * k, range(4)))  # noqa: B023
        seen.append(got)
    assert seen == [[0, 2, 4, 6], [0, 3, 6, 9]]


def helper(x: int) -> int:
    return x + 1


def test_a_helper_redefined_in_the_test_module_is_called_in_its_new_version(r: redis.Redis) -> None:
    global helper
    original = helper

    def task(x: int) -> int:
        return helper(x) * 10

    try:
        assert pmap1(task, range(4)) == list(map(task, range(4))) == [10, 20, 30, 40]

        def replacement(x: int) -> int:
            return x + 2

        helper = replacement  # the module's global, rebound as a later cell would
        assert pmap1(task, range(4)) == list(map(task, range(4))) == [20, 30, 40, 50]
    finally:
        helper = original


def test_a_helper_redefined_in_main_is_called_in_its_new_version(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    first, second = call_script("identity_helper.py", redis_server.url, str(tmp_path / "log"))
    assert first["pmap"] == first["map"] == [10, 20, 30, 40]
    assert second["pmap"] == second["map"] == [20, 30, 40, 50]
    assert second["ran"] == 4


def test_a_global_dict_mutated_in_place_is_read_anew(r: redis.Redis) -> None:
    table.clear()
    table["k"] = 1

    def f(x: int) -> int:
        return x * table["k"]

    assert pmap1(f, range(4)) == list(map(f, range(4))) == [0, 1, 2, 3]
    table["k"] = 2
    assert pmap1(f, range(4)) == list(map(f, range(4))) == [0, 2, 4, 6]


def test_changed_defaults_and_keyword_only_defaults_are_used(r: redis.Redis) -> None:
    for k in (2, 3):

        def f(x: int, k: int = k, *, m: int = 0) -> int:  # the same source, another default
            return x * k + m

        assert pmap1(f, range(4)) == list(map(f, range(4))) == [0, k, 2 * k, 3 * k]
    f.__defaults__ = (5,)
    assert pmap1(f, range(4)) == list(map(f, range(4))) == [0, 5, 10, 15]
    f.__kwdefaults__ = {"m": 100}
    assert pmap1(f, range(4)) == list(map(f, range(4))) == [100, 105, 110, 115]


def affine(a: int, x: int, *, b: int = 0) -> int:
    return a * x + b


def test_partials_with_other_bound_arguments_are_other_functions(r: redis.Redis) -> None:
    seen = []
    for bound in (partial(affine, 2), partial(affine, 3), partial(affine, 3, b=1)):
        got = pmap1(bound, range(4))
        assert got == list(map(bound, range(4)))
        seen.append(got)
    assert seen == [[0, 2, 4, 6], [0, 3, 6, 9], [1, 4, 7, 10]]


def test_a_helper_edited_on_disk_in_the_users_own_module_runs_in_a_new_process(
    r: redis.Redis, redis_server, tmp_path: Path
) -> None:
    folder, log = tmp_path / "src", tmp_path / "log"
    folder.mkdir()
    # No bytecode cache, and the edit changes the file's size: Python must read the edit.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    (folder / "userhelpers.py").write_text("def scale(x):\n    return x * 2\n")
    first = call_script("identity_module.py", redis_server.url, str(log), str(folder), env=env)
    assert first == {"pmap": [0, 2, 4, 6, 8], "map": [0, 2, 4, 6, 8], "ran": 5}
    (folder / "userhelpers.py").write_text("def scale(x):\n    return x * 30 + 1\n")
    second = call_script("identity_module.py", redis_server.url, str(log), str(folder), env=env)
    assert second["pmap"] == second["map"] == [1, 31, 61, 91, 121]
    assert second["ran"] == 5


def test_only_inputs_without_a_result_run_whatever_list_they_come_in(r: redis.Redis, tmp_path: Path) -> None:
    log = tmp_path / "log"

    def make(salt: int) -> Callable[[int], int]:
        def f(x: int) -> int:
            record(log, x)
            return x * salt

        return f

    f, g = make(2), make(3)
    shuffled = random.Random(14).sample(range(100), 100)
    cases: list[tuple[Callable[[int], int], list[int], Counter[int]]] = [
        (f, list(range(100)), Counter(range(100))),
        (f, list(range(101)), Counter([100])),  # extended
        (f, shuffled, Counter()),
        (f, list(range(10)), Counter()),  # shortened
        (f, [x for x in range(101) if x % 3 == 0], Counter()),  # filtered
        (g, list(range(100)), Counter(range(100))),
        (g, list(range(50, 150)), Counter(range(100, 150))),
    ]
    for func, items, expected in cases:
        results, ran = run(log, func, items)
        assert ran == expected, f"{len(items)} items from {items[:3]}: ran {sorted(ran)[:10]}..."
        assert results == list(map(func, items))


def test_equal_inputs_in_one_list_run_once(r: redis.Redis, tmp_path: Path) -> None:
    log = tmp_path / "log"

    def f(x: int) -> int:
        record(log, x)
        return x * 7

    results, ran = run(log, f, [1, 1, 2, 2, 2])
    assert ran == Counter([1, 2])
    assert results == list(map(f, [1, 1, 2, 2, 2])) == [7, 7, 14, 14, 14]


def test_main_classes_and_sets_resume_with_another_hash_seed(r: redis.Redis, redis_server, tmp_path: Path) -> None:
    args = (redis_server.url, str(tmp_path / "log"))
    first = call_script("identity_hashseed.py", *args, env={**os.environ, "PYTHONHASHSEED": "1"})
    assert first["pmap"] == first["map"]
    assert first["ran"] == 12
    second = call_script("identity_hashseed.py", *args, env={**os.environ, "PYTHONHASHSEED": "2"})
    assert second["pmap"] == second["map"] == first["pmap"]
    assert second["ran"] == 0, "a new process with another hash seed did not find the finished job"


def test_a_named_job_reports_a_changed_global_keeps_its_results_and_runs_new_inputs(
    r: redis.Redis, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    global threshold
    log = tmp_path / "log"

    f = below_threshold(log)

    threshold = 10
    first, ran = run(log, f, range(5), name="crawl")
    assert first == list(map(f, range(5))) == [0, 1, 2, 3, 4]
    threshold = 0
    capfd.readouterr()
    results, ran = run(log, f, range(8), name="crawl")
    err = capfd.readouterr().err
    assert ran == Counter(range(5, 8)), "known inputs ran again, or new ones did not run"
    assert results == first + list(map(f, range(8)))[5:] == [0, 1, 2, 3, 4, -5, -6, -7]
    lines = [line for line in err.splitlines() if line.startswith("nbtasks:")]
    assert len(lines) == 1, err
    assert "crawl" in lines[0] and "threshold" in lines[0], lines[0]


def test_task_error_says_how_to_retry_and_how_to_keep_results_after_an_edit(r: redis.Redis, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    flag.touch()

    def f(x: int) -> int:
        record(log, x)
        if x == 2 and flag.exists():
            raise ValueError("refusing 2")
        return x * 10

    with pytest.raises(nbtasks.TaskError) as info:
        run(log, f, range(5))
    message = str(info.value)
    assert "again" in message and "retr" in message, message
    assert "name=" in message and info.value.job in message, message

    # Unchanged, the call retries the failed item only.
    flag.unlink()
    results, ran = run(log, f, range(5))
    assert ran == Counter([2])
    assert results == list(map(f, range(5)))

    # Edited, with name= the job's current name, the finished results are kept.
    def broken(x: int) -> int:
        record(log, x)
        return 100 // (x - 3) * 0 + x

    with pytest.raises(nbtasks.TaskError) as info:
        run(log, broken, range(5))

    def fixed(x: int) -> int:
        record(log, x)
        return x

    results, ran = run(log, fixed, range(5), name=info.value.job)
    assert ran == Counter([3])
    assert results == list(map(fixed, range(5)))


def test_a_captured_numpy_array_is_part_of_the_identity(r: redis.Redis, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    log = tmp_path / "log"
    weights = np.zeros(2_500_000)  # 20 MB

    def f(i: int) -> float:
        record(log, i)
        return float(weights[i] + weights[-1])

    assert run(log, f, range(4))[0] == list(map(f, range(4))) == [0.0] * 4
    weights[-1] = 1.5
    results, ran = run(log, f, range(4))
    assert results == list(map(f, range(4))) == [1.5] * 4
    assert ran == Counter(range(4))
    results, ran = run(log, f, range(4))
    assert ran == Counter(), "the same array, unchanged, ran again"
    assert results == list(map(f, range(4)))


def test_a_global_dataframe_with_a_changed_cell_is_read_anew(r: redis.Redis) -> None:
    pd = pytest.importorskip("pandas")
    global frame
    frame = pd.DataFrame({"price": [1.0, 2.0, 3.0, 4.0]}, index=list("abcd"))

    def f(key: str) -> float:
        return float(frame.loc[key, "price"]) * 2

    keys = list("abcd")
    assert pmap1(f, keys) == list(map(f, keys)) == [2.0, 4.0, 6.0, 8.0]
    frame.loc["c", "price"] = 30.0
    assert pmap1(f, keys) == list(map(f, keys)) == [2.0, 4.0, 60.0, 8.0]


def test_fresh_and_reset_recompute_everything(r: redis.Redis, tmp_path: Path) -> None:
    log = tmp_path / "log"

    def f(x: int) -> int:
        record(log, x)
        return -x

    assert run(log, f, range(5))[1] == Counter(range(5))
    assert run(log, f, range(5))[1] == Counter()
    results, ran = run(log, f, range(5), fresh=True)
    assert ran == Counter(range(5))
    assert results == list(map(f, range(5)))
    names = [job.name for job in nbtasks.jobs()]
    assert len(names) == 1, names
    nbtasks.reset(names[0])
    results, ran = run(log, f, range(5))
    assert ran == Counter(range(5))
    assert results == list(map(f, range(5)))


def old_job(r: redis.Redis, name: str, n: int, done: dict[int, object]) -> None:
    """A job as an earlier nbtasks (store format 1) left it: one job per list of inputs,
    `done` holding its recorded results."""
    keys = JobKeys(name)
    meta = {"format": "1", "total": n, "inputs": "list:0123", "ready": "1", "code": "old", "function": "triple"}
    r.hset(keys.meta, mapping={**meta, "python": "3.11", "policy": "{}", "epoch": "e1", "created": 1.0})
    r.set(keys.func, codec.dump_function(abs))
    r.hset(keys.inputs, mapping={i: codec.dump(i) for i in range(n)})
    for index, value in done.items():
        r.hset(keys.results, index, codec.dump(value))
        r.setbit(keys.done, index, 1)
    r.hset(keys.counts, mapping={"done": len(done), "failed": 0, "running": 0})
    r.sadd("nbtasks:jobs", name)


def triple(x: int) -> int:
    return 3 * x


@pytest.mark.both_servers
def test_jobs_of_the_earlier_store_format_stay_readable_and_are_never_returned_for_another_function(
    r: redis.Redis, tmp_path: Path
) -> None:
    # Results no function of today computes: if they came back, an old job was reused.
    old_job(r, "triple-0123456789ab", 8, {i: 1000 + i for i in range(8)})
    assert nbtasks.Job("triple-0123456789ab").result() == [1000 + i for i in range(8)]
    assert [s.name for s in nbtasks.jobs()] == ["triple-0123456789ab"]
    assert nbtasks.pmap(triple, range(8), processes=1, progress=False) == [3 * i for i in range(8)]
    nbtasks.reset("triple-0123456789ab")
    assert r.exists(JobKeys("triple-0123456789ab").results) == 0


@pytest.mark.both_servers
def test_a_named_job_of_the_earlier_store_format_keeps_its_results_and_runs_the_rest(
    r: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log"
    old_job(r, "crawl", 8, {i: 3 * i for i in range(5)})

    def f(x: int) -> int:
        record(log, x)
        return 3 * x

    results, ran = run(log, f, range(10), name="crawl")
    assert results == [3 * i for i in range(10)]
    assert ran == Counter(range(5, 10))  # 5, 6, 7 of the old list and the two new ones
    said = capsys.readouterr().err
    assert said.startswith("nbtasks: job 'crawl' changed since its last call (another function: ")
    assert said.endswith(
        "instead of triple); its 5 results for these inputs are kept; the new code runs the other 5.\n"
    )


def as_format_2(r: redis.Redis, name: str) -> None:
    """Turn a stored job back into what store format 2 left: every input and result in a
    field of its own, no chunks, and no word of its index's digests (all 16 bytes then)."""
    keys = JobKeys(name)
    for key in (keys.inputs, keys.results):
        held = payloads(r, key)
        r.delete(key)
        if held:
            r.hset(key, mapping=held)
    r.hset(keys.meta, "format", "2")
    r.hdel(keys.meta, "ix_digest")


@pytest.mark.both_servers
def test_jobs_of_store_format_2_are_read_as_they_are_and_grow_in_chunks(
    r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"

    def f(x: int) -> int:
        record(log, x)
        return 3 * x

    with monkeypatch.context() as patched:
        patched.setattr(define, "INDEX_DIGEST", 16)  # as format 2 indexed its inputs
        run(log, f, range(600), name="crawl")
    as_format_2(r, "crawl")
    keys = JobKeys("crawl")
    assert r.hlen(keys.results) == 600 and not r.hexists(keys.results, "c0")
    results, ran = run(log, f, range(600), name="crawl")
    assert results == [3 * i for i in range(600)] and not ran, "read back without running anything"
    assert nbtasks.Job("crawl").result() == results
    results, ran = run(log, f, range(900), name="crawl")
    assert results == [3 * i for i in range(900)] and ran == Counter(range(600, 900))
    assert r.hget(keys.meta, "format") == b"3"
    assert len(payloads(r, keys.results)) == 900 and r.hlen(keys.results) < 900, "the new results are packed"
    results, ran = run(log, f, reversed(range(900)), name="crawl")
    assert results == [3 * i for i in reversed(range(900))] and not ran


@pytest.mark.both_servers
def test_small_inputs_and_results_are_packed_in_chunks(r: redis.Redis) -> None:
    items = [*range(600), "x" * 300]  # the last one too large for a chunk, and its result
    results = pmap1(plus_one_or_twice, items)
    assert results == [*range(1, 601), "x" * 600]
    # 601 items: chunks 0 and 1 full, chunk 2 with 88 small ones; the large input and its
    # result in a field of their own.
    keys = JobKeys(f"plus_one_or_twice-{identity.identify(plus_one_or_twice).digest[:12]}")
    assert sorted(r.hkeys(keys.results)) == [b"600", b"c0", b"c1", b"c2"]
    assert sorted(r.hkeys(keys.inputs)) == [b"600", b"c0", b"c1", b"c2"]
    # The list's indices are consecutive: its view holds their range, not 4 bytes per item.
    assert [len(view) for view in r.hvals(keys.views)] == [len(r.hkeys(keys.views)[0]) + 4 + 9]
    assert pmap1(plus_one_or_twice, reversed(items)) == results[::-1]


def plus_one_or_twice(x: int | str) -> int | str:
    return x * 2 if isinstance(x, str) else x + 1


def test_an_unnamed_job_never_takes_the_name_another_identity_holds(r: redis.Redis) -> None:
    # Names carry 12 hex digits of the identity; should another identity hold that name,
    # the call takes a longer one rather than that job's results.
    name = f"triple-{identity.identify(triple).digest[:12]}"
    old_job(r, name, 4, {i: 1000 + i for i in range(4)})
    assert nbtasks.pmap(triple, range(4), processes=1, progress=False) == [0, 3, 6, 9]
    assert nbtasks.Job(name).result() == [1000, 1001, 1002, 1003]


factor = 2


@functools.cache
def cached_scale(x: int) -> int:
    return x * factor


def uses_cached(x: int) -> int:
    return cached_scale(x)


def test_a_decorated_helper_counts_with_its_code_and_what_it_reads() -> None:
    # functools.lru_cache would pickle by name alone: what it wraps counts instead.
    global factor
    factor = 2
    before = identity.identify(uses_cached)
    assert identity.identify(uses_cached) == before
    factor = 3
    after = identity.identify(uses_cached)
    assert after.digest != before.digest and after.changes(before.parts) == ["helper 'cached_scale'"]


def test_status_counts_the_last_calls_own_list(r: redis.Redis) -> None:
    nbtasks.pmap(triple, range(30), processes=1, progress=False)
    (state,) = nbtasks.jobs()
    assert (state.total, state.done, state.state) == (30, 30, "finished")
    nbtasks.pmap(triple, [4, 4, 2, 7], processes=1, progress=False)  # all stored: nothing runs
    (state,) = nbtasks.jobs()
    assert (state.total, state.done, state.failed, state.state) == (3, 3, 0, "finished")
    nbtasks.pmap(triple, range(25, 35), processes=1, progress=False)  # five new ones run
    (state,) = nbtasks.jobs()
    assert (state.total, state.done, state.state) == (10, 10, "finished")
    assert nbtasks.Job(state.name).result() == [3 * x for x in range(25, 35)]


def test_your_modules_count_as_their_files_all_the_way_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers import your modules by name, so they run the files: an edit on disk counts
    # even before this process reloads anything, and through every module reached.
    import importlib
    import uuid

    tag = uuid.uuid4().hex[:8]
    pkg, first, second, third = f"idpkg{tag}", f"idone{tag}", f"idtwo{tag}", f"idthree{tag}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("from .core import transform\n")
    (tmp_path / pkg / "core.py").write_text("def transform(x):\n    return x - 1\n")
    (tmp_path / f"{first}.py").write_text(f"import {second}\ndef via(x):\n    return {second}.g(x)\n")
    (tmp_path / f"{second}.py").write_text("def g(x):\n    return x + 1000\n")
    (tmp_path / f"{third}.py").write_text("FACTOR = 4\ndef compute(x):\n    return x * FACTOR\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    package, one = importlib.import_module(pkg), importlib.import_module(first)
    compute = importlib.import_module(third).compute

    def through_a_package(x: int) -> int:
        return package.transform(x)

    def through_a_module_that_imports_another(x: int) -> int:
        return one.via(x)

    def imported_from_a_module(x: int) -> int:
        return compute(x)

    funcs = (through_a_package, through_a_module_that_imports_another, imported_from_a_module)
    before = [identity.identify(f).digest for f in funcs]
    assert [identity.identify(f).digest for f in funcs] == before
    # Edits of the files only (longer, so that no file time granularity can hide them).
    (tmp_path / pkg / "core.py").write_text("def transform(x):\n    return x - 5  # edited\n")
    (tmp_path / f"{second}.py").write_text("def g(x):\n    return x + 2000  # edited\n")
    (tmp_path / f"{third}.py").write_text("FACTOR = 5  # edited\ndef compute(x):\n    return x * FACTOR\n")
    after = [identity.identify(f).digest for f in funcs]
    assert [a != b for a, b in zip(after, before, strict=True)] == [True, True, True]


def test_two_background_calls_of_one_function_on_other_lists_each_get_their_own(r: redis.Redis) -> None:
    # One function is one job, so the two calls share it: the second takes the run over,
    # the first resumes after it, and each handle gathers its own list.
    def slow(x: int) -> int:
        time.sleep(0.01)
        return x * 10

    first = nbtasks.pmap(slow, range(0, 200), background=True, processes=1, concurrency=10, progress=False)
    second = nbtasks.pmap(slow, range(1000, 1200), background=True, processes=1, concurrency=10, progress=False)
    assert first is not second
    assert second.result(timeout=100) == [x * 10 for x in range(1000, 1200)]
    assert first.result(timeout=100) == [x * 10 for x in range(200)]
    assert nbtasks.pmap(slow, range(0, 200), processes=1, progress=False) == [x * 10 for x in range(200)]


@pytest.mark.both_servers
def test_the_index_grows_in_small_buckets_and_finds_every_input(r: redis.Redis, tmp_path: Path) -> None:
    log = tmp_path / "log"

    def f(x: int) -> int:
        record(log, x)
        return -x

    for upto, expected in ((10, 10), (3000, 2990), (6000, 3000)):
        results, ran = run(log, f, range(upto))
        assert results == [-x for x in range(upto)] and sum(ran.values()) == expected
    shuffled = random.Random(3).sample(range(6000), 6000)
    results, ran = run(log, f, shuffled)
    assert results == [-x for x in shuffled] and not ran  # every input found again through the index
    (state,) = nbtasks.jobs()
    keys = JobKeys(state.name)
    sizes = [r.hlen(key) for key in r.scan_iter(match=keys.index + "*")]
    assert sum(sizes) == 6000 == int(r.hget(keys.meta, "ix_count"))
    assert max(sizes) <= 128  # each stays in Redis's compact encoding


@pytest.mark.both_servers
def test_equal_inputs_far_apart_in_a_long_new_list_run_once(r: redis.Redis, tmp_path: Path) -> None:
    # A new job's list is stored in batches; an input equal to one of an earlier batch
    # must find it (the second half repeats the first, a batch and more later).
    from nbtasks.define import INDEX_BATCH

    log = tmp_path / "log"

    def f(x: int) -> int:
        record(log, x)
        return x + 1

    half = list(range(INDEX_BATCH + 5000))
    results, ran = run(log, f, half + half[::-1])
    assert results == [x + 1 for x in half + half[::-1]]
    assert ran == Counter(half)  # each once
    (state,) = nbtasks.jobs()
    assert state.total == len(half) and len(payloads(r, JobKeys(state.name).inputs)) == len(half)
