"""Large payloads outside Redis: written to a folder (beside nbtasks' own server, or one
configured), compressed when that pays, read back intact; a deleted or altered one is a
clear error and its item runs again; deleting a job deletes them; a crash keeps them."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks import job as job_module, server
from nbtasks.store import JobKeys, payloads

from .conftest import server_pids, wait_until
from .s3server import moto_s3
from .stored import payload, payloads as stored_payloads, put
from .test_remote import places, service, where

ONE_SERVER = True  # (see conftest): where payloads live is under test, not the server


def noise(i: int) -> bytes:
    """300 KB that do not compress, different per item."""
    return random.Random(i).randbytes(300 << 10)


def page(i: int) -> str:
    """About 200 KB of HTML-like text, which compresses well."""
    rows = (
        f'<tr><td class="c{j % 7}">item {i}-{j}</td><td><a href="/p/{i * j}">link {j}</a></td></tr>'
        for j in range(3000)
    )
    return "<table>" + "\n".join(rows) + "</table>"


def page_bytes(i: int) -> bytes:
    return page(i).encode()


def counted(i: int) -> bytes:
    """`noise`, noting each run in NBT_LOG (one line per run: its item)."""
    with open(os.environ["NBT_LOG"], "a") as log:
        log.write(f"{i}\n")
    return noise(i)


def runs(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def stored(r: redis.Redis, job: str, index: int) -> bytes:
    return payload(r, JobKeys(job).results, index) or b""


def blob_files(folder: Path) -> list[Path]:
    return [f for f in folder.rglob("*") if f.is_file()]


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A folder for large payloads, configured as a user would."""
    folder = tmp_path / "blobs"
    nbtasks.configure(blobs=str(folder))
    yield folder
    nbtasks.configure(blobs="none")


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("NBT_LOG", str(path))
    return path


def test_large_results_leave_redis_and_come_back_intact(r: redis.Redis, shared: Path) -> None:
    out = nbtasks.pmap(noise, range(12), name="big", processes=2, progress=False)
    assert out == [noise(i) for i in range(12)]
    assert all(len(stored(r, "big", i)) < 1024 for i in range(12)), "Redis holds references only"
    held = sum(f.stat().st_size for f in blob_files(shared))
    assert held >= 12 * (300 << 10), "the bytes are in the folder"
    assert nbtasks.pmap(noise, range(12), name="big", processes=2, progress=False) == out
    assert [j.size for j in nbtasks.jobs() if j.name == "big"][0] >= held, "status counts them"


def test_text_is_compressed_and_small_results_stay_in_redis(r: redis.Redis, shared: Path) -> None:
    out = nbtasks.pmap(page, range(4), name="pages", processes=1, progress=False)
    assert out == [page(i) for i in range(4)]
    size = len(page(0).encode())
    kept = sum(f.stat().st_size for f in blob_files(shared)) + sum(len(stored(r, "pages", i)) for i in range(4))
    assert kept < 4 * size / 3, f"{kept} bytes kept for {4 * size} of text"
    # The same text as bytes (a download's .content): compressed too, not kept as it is.
    assert nbtasks.pmap(page_bytes, range(4), name="raw", processes=1, progress=False) == [
        page(i).encode() for i in range(4)
    ]
    assert sum(f.stat().st_size for f in blob_files(shared)) < kept + 4 * size / 3
    assert nbtasks.pmap(str, range(3), name="small", processes=1, progress=False) == ["0", "1", "2"]
    assert stored(r, "small", 0)[:1] == b"\x80", "a small result is the pickle itself, in Redis"


def test_a_deleted_or_altered_blob_is_refused_and_its_item_runs_again(r: redis.Redis, shared: Path, log: Path) -> None:
    assert nbtasks.pmap(counted, range(6), name="lost", processes=1, progress=False) == [noise(i) for i in range(6)]
    assert sorted(runs(log)) == list(range(6))
    [segment] = blob_files(shared)  # (six results end together: one batch, one segment)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of one result, flipped
    segment.write_bytes(bytes(data))
    with pytest.raises(nbtasks.errors.PayloadLost) as caught:
        nbtasks.pmap(counted, range(6), name="lost", processes=1, progress=False)
    message = str(caught.value)
    assert "Job 'lost' (item " in message and "altered" in message and "runs again" in message, message
    assert sorted(runs(log)) == list(range(6)), "nothing ran for the refusal itself"
    assert nbtasks.pmap(counted, range(6), name="lost", processes=1, progress=False) == [noise(i) for i in range(6)]
    again = runs(log)[6:]
    assert len(again) == 1 and again[0] == caught.value.index, "exactly the altered item ran again"
    for segment in blob_files(shared):
        segment.unlink()  # now every one of them is gone
    with pytest.raises(nbtasks.errors.PayloadLost, match="is missing"):
        nbtasks.pmap(counted, range(6), name="lost", processes=1, progress=False)
    assert nbtasks.pmap(counted, range(6), name="lost", processes=1, progress=False) == [noise(i) for i in range(6)]
    assert sorted(runs(log)[7:]) == list(range(6))


def test_signed_references_cover_the_bytes(
    r: redis.Redis, shared: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBTASKS_SECRET", "s3cret" * 8)
    nbtasks.pmap(counted, range(2), name="signed", processes=1, progress=False)
    [segment] = blob_files(shared)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(nbtasks.errors.PayloadLost, match="altered"):
        nbtasks.pmap(counted, range(2), name="signed", processes=1, progress=False)
    # The reference itself, pointed at the other item's bytes: its signature fails.
    nbtasks.pmap(counted, range(2), name="signed", processes=1, progress=False)
    k = JobKeys("signed")
    put(r, k.results, 0, payload(r, k.results, 1) or b"")
    with pytest.raises(nbtasks.errors.PayloadRejected, match="signature does not match"):
        nbtasks.pmap(counted, range(2), name="signed", processes=1, progress=False)


def test_reset_and_prune_delete_the_files_and_say_what_they_freed(r: redis.Redis, shared: Path) -> None:
    nbtasks.pmap(noise, range(8), name="gone", processes=1, progress=False)
    nbtasks.pmap(noise, range(8, 16), name="old", processes=1, progress=False)
    held = {p.parent.name for p in blob_files(shared)}
    assert len(held) == 2, held
    nbtasks.reset("gone")
    assert {p.parent.name for p in blob_files(shared)} == {n for n in held if n.startswith("old")}
    r.hset(JobKeys("old").meta, mapping={"created": 0, "started": 0, "ended": 0, "used": 0})
    [pruned] = nbtasks.prune(older_than="1d")
    assert pruned.name == "old" and pruned.size >= 8 * (300 << 10), pruned
    assert blob_files(shared) == []


def test_a_killed_server_keeps_every_result_recorded_a_second_before(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import hashlib, os, random, sys
            sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
            import nbtasks
            from tests.test_blobs import counted
            out = nbtasks.pmap(counted, range(20), name="durable", processes=2, progress=False)
            print(hashlib.sha256(b"".join(out)).hexdigest())
            """
        )
    )
    env = {**os.environ, "NBT_LOG": str(tmp_path / "runs")}
    first = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert len(runs(tmp_path / "runs")) == 20
    assert len(blob_files(home / "blobs")) >= 1, "the embedded server's payloads are beside it"
    # The append-only file is written every second: the promise covers what was recorded
    # a second before the crash. (This wait is that second, not a synchronization.)
    time.sleep(1.5)
    for pid in server_pids(home):
        os.kill(pid, signal.SIGKILL)
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    expected = hashlib.sha256(b"".join(noise(i) for i in range(20))).hexdigest()
    assert first.stdout.split() == again.stdout.split() == [expected]
    assert len(runs(tmp_path / "runs")) == 20, "nothing ran again after the crash"
    assert server.status(home).running, "the next call started the server again"


def test_two_machines_write_one_job_into_one_shared_folder(
    r: redis.Redis, redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "shared"
    monkeypatch.setenv("NBT_LOG", str(tmp_path / "places"))
    monkeypatch.setenv("NBTASKS_HOME", str(tmp_path / "home-a"))
    nbtasks.configure(blobs=str(folder))
    job = nbtasks.pmap(
        large_where, range(300), name="both", background=True, processes=1, concurrency=5, progress=False
    )
    # The other machine: its own NBTASKS_HOME, the same Redis, the shared folder (NBTASKS_BLOBS).
    monkeypatch.setenv("NBTASKS_HOME", str(tmp_path / "home-b"))
    monkeypatch.setenv("NBTASKS_BLOBS", str(folder))
    with service(redis_server.url, "--job", "both"):
        out = job.result(timeout=120)
    nbtasks.configure(blobs="none")
    computed = Counter(place for place, _ in out)
    assert computed["remote"] > 0 and computed["local"] > 0, places(tmp_path / "places")
    assert [data for _, data in out] == [large(i) for i in range(300)]
    assert all(len(stored(r, "both", i)) < 1024 for i in range(300)), "every result went to the shared folder"
    assert {p.parent for p in blob_files(folder)} == {p.parent for p in blob_files(folder)[:1]}, "one job folder"


def large(i: int) -> bytes:
    """Just over the threshold, and incompressible."""
    return random.Random(i).randbytes(payloads.BLOB_MIN + 1000)


def large_where(i: int) -> tuple[str, bytes]:
    return where(i), large(i)


def test_an_s3_compatible_store_keeps_them(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("s3fs", reason="s3fs is in the test extra: pip install -e '.[test]'")
    import fsspec

    with moto_s3("nbtasks-test") as (_, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # (workers inherit them, as on a machine set up for S3)
        nbtasks.configure(blobs="s3://nbtasks-test/jobs")
        try:
            # Two jobs in a row: the second runs in the first one's warm workers.
            assert nbtasks.pmap(noise, range(10), name="s3", processes=2, progress=False) == [
                noise(i) for i in range(10)
            ]
            assert nbtasks.pmap(noise, range(10, 14), name="s3b", processes=2, progress=False) == [
                noise(i) for i in range(10, 14)
            ]
            assert all(len(stored(r, "s3", i)) < 1024 for i in range(10)), "Redis holds references only"
            fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
            held = fs.find("nbtasks-test/jobs")
            assert sum(fs.size(p) for p in held) >= 14 * (300 << 10), held
            nbtasks.reset("s3")
            assert fs.find("nbtasks-test/jobs") and all("/s3b-" in p for p in fs.find("nbtasks-test/jobs"))
        finally:
            nbtasks.configure(blobs="none")


def test_large_inputs_leave_redis_too(r: redis.Redis, shared: Path) -> None:
    documents = [noise(i) for i in range(6)]
    assert nbtasks.pmap(len, documents, name="docs", processes=1, progress=False) == [300 << 10] * 6
    held = stored_payloads(r, JobKeys("docs").inputs).values()
    assert all(len(v) < 1024 for v in held), "Redis holds references only"
    assert nbtasks.pmap(len, documents, name="docs", processes=1, progress=False) == [300 << 10] * 6


def test_deleting_gives_the_embedded_servers_disk_back(home: Path) -> None:
    nbtasks.configure(blobs="none")  # every byte in Redis: its append-only file grows by 48 MB
    try:
        nbtasks.pmap(noise, range(160), name="heavy", processes=2, progress=False)
        grown = server.status(home).data_size
        assert grown > 45 << 20, grown
        nbtasks.reset("heavy")
        wait_until(lambda: server.status(home).data_size < 8 << 20, 60, "the append-only file rewritten")
    finally:
        nbtasks.configure(blobs="")  # (the default again: beside the server)
    nbtasks.pmap(noise, range(40), name="files", processes=2, progress=False)
    assert server.status(home).blobs_size >= 40 * (300 << 10)
    nbtasks.reset("files")
    assert server.status(home).blobs_size == 0


def test_a_job_heavy_in_redis_says_once_how_to_keep_payloads_elsewhere(
    r: redis.Redis, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "_heavy_said", set())  # (said once per process: for this test's)
    nbtasks.configure(blobs="none")
    nbtasks.pmap(noise, range(10), name="light", processes=2, progress=False)
    assert "configure(blobs=" not in capfd.readouterr().err
    nbtasks.pmap(noise, range(400), name="heavy", processes=2, progress=False)  # 120 MB
    said = capfd.readouterr().err
    assert "job 'heavy' keeps" in said and "configure(blobs=...) or NBTASKS_BLOBS" in said, said
    nbtasks.pmap(noise, range(400, 800), name="heavier", processes=2, progress=False)
    assert "configure(blobs=" not in capfd.readouterr().err, "said once"


def test_a_place_that_cannot_be_used_is_refused_before_anything_runs(r: redis.Redis, log: Path) -> None:
    with pytest.raises(nbtasks.errors.ConfigError, match="absolute folder path"):
        nbtasks.configure(blobs="relative/folder")
    nbtasks.configure(blobs="nosuchproto://bucket/prefix")
    try:
        with pytest.raises(nbtasks.errors.ConfigError, match="Protocol not known: nosuchproto"):
            nbtasks.pmap(counted, range(3), name="nowhere", processes=1, progress=False)
    finally:
        nbtasks.configure(blobs="")
    assert runs(log) == [], "nothing ran"


def test_a_place_out_of_reach_is_an_error_that_forgets_nothing(r: redis.Redis, tmp_path: Path, log: Path) -> None:
    folder = tmp_path / "mounted"
    nbtasks.configure(blobs=str(folder))
    try:
        assert nbtasks.pmap(counted, range(4), name="far", processes=1, progress=False) == [noise(i) for i in range(4)]
        folder.rename(tmp_path / "elsewhere")  # (a shared folder not mounted now)
        with pytest.raises(nbtasks.BlobsUnavailable, match="not there"):
            nbtasks.pmap(counted, range(4), name="far", processes=1, progress=False)
        (tmp_path / "elsewhere").rename(folder)
        assert nbtasks.pmap(counted, range(4), name="far", processes=1, progress=False) == [noise(i) for i in range(4)]
        assert sorted(runs(log)) == list(range(4)), "nothing was forgotten, nothing ran again"
        # A place the workers cannot write to (here a file where the folder should be):
        # the call stops with why, instead of replacing workers that fail the same way.
        blocked = tmp_path / "blocked"
        blocked.write_text("not a folder")
        nbtasks.configure(blobs=str(blocked))
        with pytest.raises(nbtasks.WorkerError, match="Cannot write large payloads to .*blocked"):
            nbtasks.pmap(counted, range(4, 8), name="blocked", processes=1, progress=False)
    finally:
        nbtasks.configure(blobs="")
