"""Streaming: imap yields in input order as results are recorded, imap_unordered yields
every position, Job.results follows a running job, an interrupted imap resumes, and
failures raise or come as Failure as in pmap."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks import define, gather
from nbtasks.store import JobKeys

ONE_SERVER = True  # (see conftest): reading back while a run records, not the server, is under test


def gated(i: int) -> int:
    """Item 0 at once; the others once the test opens the gate (the file NBT_GATE)."""
    with open(os.environ["NBT_LOG"], "a") as log:
        log.write(f"{i}\n")
    while i and not os.path.exists(os.environ["NBT_GATE"]):
        time.sleep(0.01)  # (green in a worker: the others wait alongside)
    return i * i


def shuffled(i: int) -> int:
    """Items finish in another order than they start."""
    time.sleep((7 * i) % 5 / 100)
    return i * 10


def fails_at_three(i: int) -> int:
    if i == 3:
        raise ValueError("three")
    return i


def runs(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NBT_LOG", str(tmp_path / "runs"))
    monkeypatch.setenv("NBT_GATE", str(tmp_path / "gate"))
    return tmp_path / "gate"


def test_imap_yields_in_input_order(r: redis.Redis) -> None:
    items = [4, 1, 3, 1, 0, 2, 9, 4]  # (equal inputs too: each position gets its result)
    assert list(nbtasks.imap(shuffled, items, processes=2, progress=False)) == [shuffled(i) for i in items]


def test_the_first_result_arrives_while_the_others_still_run(r: redis.Redis, gate: Path) -> None:
    it = nbtasks.imap(gated, range(8), processes=1, progress=False)
    assert next(it) == 0  # the others wait for the gate: pmap would never return here
    gate.touch()
    assert list(it) == [i * i for i in range(1, 8)]


def test_imap_unordered_yields_every_position_once(r: redis.Redis) -> None:
    items = [5, 2, 5, 7, 1, 2]
    pairs = list(nbtasks.imap_unordered(shuffled, items, processes=2, progress=False))
    assert sorted(pairs) == sorted((p, shuffled(i)) for p, i in enumerate(items))


def test_job_results_follows_a_running_job(r: redis.Redis, gate: Path) -> None:
    job = nbtasks.pmap(gated, range(5), name="followed", background=True, processes=1, progress=False)
    it = nbtasks.Job("followed").results()  # (another handle, as from another notebook)
    assert next(it) == 0
    assert not job.done(), "it is still running"
    gate.touch()
    assert list(it) == [1, 4, 9, 16]
    assert job.result() == [0, 1, 4, 9, 16]


def test_an_interrupted_imap_resumes_without_running_the_streamed_items_again(r: redis.Redis, gate: Path) -> None:
    log = Path(os.environ["NBT_LOG"])
    it = nbtasks.imap(gated, range(6), name="resumed", processes=1, progress=False)
    assert next(it) == 0
    it.close()  # leaving the loop stops the run, as an interrupt does
    assert nbtasks.Job("resumed").done()
    gate.touch()
    assert list(nbtasks.imap(gated, range(6), name="resumed", processes=1, progress=False)) == [i * i for i in range(6)]
    assert runs(log).count(0) == 1, "the streamed item did not run again"
    assert sorted(set(runs(log))) == list(range(6))


def test_failures_raise_in_turn_or_come_as_failure(r: redis.Redis) -> None:
    it = nbtasks.imap(fails_at_three, range(6), name="failing", processes=1, progress=False)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(nbtasks.TaskError, match="three"):
        next(it)
    out = list(nbtasks.imap(fails_at_three, range(6), name="failing", errors="return", processes=1, progress=False))
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
    assert isinstance(out[3], nbtasks.Failure) and out[3].index == 3 and out[3].exc_type == "ValueError"


def kilobyte(i: int) -> bytes:
    return random.Random(i).randbytes(1000)


def test_a_call_whose_results_would_not_fit_says_so_once_and_points_to_imap(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gather, "available_memory", lambda: 4 << 20)  # as on a machine with 4 MiB free
    nbtasks.pmap(kilobyte, range(1000), name="roomy", processes=1, progress=False)
    assert "nbtasks.imap" not in capfd.readouterr().err, "1,000 small results fit"
    # Now the job knows its results take about 1 KB each: 8,000 of them would not fit.
    nbtasks.pmap(kilobyte, range(8000), name="roomy", processes=1, progress=False)
    said = capfd.readouterr().err
    assert "job 'roomy' will hold about" in said and "nbtasks.imap(...)" in said, said
    nbtasks.pmap(kilobyte, range(8000), name="roomy", processes=1, progress=False)
    assert "nbtasks.imap" not in capfd.readouterr().err, "said once"


def test_a_generator_is_stored_a_batch_at_a_time_and_resumes(r: redis.Redis, gate: Path) -> None:
    n, batch = 60_000, define.INDEX_BATCH
    stored_when: dict[int, int] = {}

    def inputs() -> Iterator[int]:
        for i in range(n):
            if i % 1000 == 0:  # how many inputs the job held when the caller read item i
                stored_when[i] = int(r.hget(JobKeys("gen").meta, "ix_count") or 0)
            yield i

    assert list(nbtasks.imap(noop, inputs(), name="gen", processes=2, progress=False)) == list(range(n))
    # Item i was read once all batches but the one before its own were stored (that one is
    # stored while the next is read): never the whole list at once.
    assert all(held >= max(i // batch - 1, 0) * batch for i, held in stored_when.items())
    assert stored_when[n - 1000] < n
    gate.touch()
    # Again, from a new generator of the same inputs: nothing runs, the results are read back.
    again = nbtasks.imap(gated, (i for i in range(n)), name="gen", processes=1, progress=False)
    assert list(again) == list(range(n)) and runs(gate.parent / "runs") == []


def noop(i: int) -> int:
    return i
