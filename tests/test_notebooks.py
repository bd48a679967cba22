"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel; their cells
assert what a user would check."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import nbformat
import pytest
import redis
from nbclient import NotebookClient

import nbtasks
from nbtasks.store import JobKeys

from .conftest import wait_until, worker_pids

ONE_SERVER = True  # (see conftest): kernels and widgets, not the server, are under test

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_real_kernel(path: Path, jupyter_env: redis.Redis) -> None:
    # As users meet them: in a store that holds other jobs, and run again after a first time.
    nbtasks.pmap(abs, range(-20, 20), name="someone-elses", progress=False)
    for run in ("first", "again"):
        nb = nbformat.read(path, as_version=4)
        resources = {"metadata": {"path": str(path.parent)}}
        NotebookClient(nb, timeout=120, kernel_name="python3", resources=resources).execute()
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        outputs = [o for cell in code for o in cell.outputs]
        # Only cells tagged raises-exception may end in an error (nbclient enforces it too).
        expected = [cell for cell in code if "raises-exception" in cell.metadata.get("tags", [])]
        errors = [o for cell in code if cell not in expected for o in cell.outputs if o.output_type == "error"]
        assert not errors, run
        for cell in expected:
            assert [o.ename for o in cell.outputs if o.output_type == "error"] == ["KeyboardInterrupt"], run
        # tqdm.auto drew a widget, not a text bar or a bare "HBox(...)".
        widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widgets or run == "again", "no progress widget was displayed"  # (again: results are stored)
        # Their plain-text copies (what GitHub or nbconvert show) hold the final state.
        for o in widgets:
            text = o.data["text/plain"]
            assert "| 0/" not in text and not text.startswith(("HBox(", "VBox(")), text
    assert "someone-elses" in {job.name for job in nbtasks.jobs()}


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS


# Items from 100 on wait for the gate file, so the stop button always lands mid-run (on a
# loaded machine all 600 could otherwise finish before the interrupt).
CELL = """
import os, time, nbtasks

GATE = {gate!r}

def slow(x):
    time.sleep(0.05)
    while x >= 100 and not os.path.exists(GATE):
        time.sleep(0.01)
    return -x

out = nbtasks.pmap(slow, range(600), name="stop-button", concurrency=10)
assert out == [-x for x in range(600)]
print("finished", len(out))
"""


def test_stop_button_returns_fast_keeps_results_and_the_cell_resumes(jupyter_env: redis.Redis, tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    r = jupyter_env
    gate = tmp_path / "gate"
    cell = CELL.format(gate=str(gate))
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute(cell)
        wait_until(lambda: r.bitcount(JobKeys("stop-button").done) >= 50, 60, "50 results")
        sent = time.monotonic()
        km.interrupt_kernel()  # what the stop button does: SIGINT to the kernel's process group
        reply = kc.get_shell_msg(timeout=30)
        elapsed = time.monotonic() - sent
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert elapsed < 2.0, f"the cell took {elapsed:.2f} s to stop"
        kept = r.bitcount(JobKeys("stop-button").done)
        assert worker_pids("stop-button") == []
        assert f"{kept} of 600 results of job 'stop-button' are stored" in _stream(kc)

        gate.touch()
        reply = kc.execute_interactive(cell, timeout=120, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok"
        assert r.bitcount(JobKeys("stop-button").done) == 600
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _stream(kc) -> str:  # type: ignore[no-untyped-def]
    """Everything the kernel printed so far."""
    text = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            return "".join(text)
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])


DEFINE = """
import dataclasses, os, nbtasks
LOG = {log!r}
WORDS = {{"alpha", "beta", "gamma", "delta", "epsilon"}}
scale = {scale}

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    def weight(self):
        return self.x * scale

def score(p):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x\\n")
    os.close(fd)
    return (p.weight(), sorted(WORDS)[p.x % 5])
"""

RUN = """
out = nbtasks.pmap(score, [Point(i) for i in range(40)], processes=1, concurrency=5, progress=False)
assert out == [(i * scale, sorted(WORDS)[i % 5]) for i in range(40)], out
"""


def test_the_same_cells_in_a_new_kernel_find_their_results_and_an_edit_does_not(
    jupyter_env: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "executions"

    def run_in_a_new_kernel(scale: int, seed: str) -> int:
        monkeypatch.setenv("PYTHONHASHSEED", seed)  # the kernel inherits it: another set order
        before = len(log.read_text().split()) if log.exists() else 0
        cells = [nbformat.v4.new_code_cell(DEFINE.format(log=str(log), scale=scale)), nbformat.v4.new_code_cell(RUN)]
        NotebookClient(nbformat.v4.new_notebook(cells=cells), timeout=120, kernel_name="python3").execute()
        return len(log.read_text().split()) - before

    assert run_in_a_new_kernel(2, "1") == 40
    assert run_in_a_new_kernel(2, "2") == 0  # a new kernel, another hash seed: all found
    assert run_in_a_new_kernel(3, "3") == 40  # a global the class reads changed: all run


SHOWN = [
    "import nbtasks\ndef twice(x):\n    return 2 * x\njob = nbtasks.pmap(twice, range(5), background=True)",
    "assert job.result(timeout=60) == [0, 2, 4, 6, 8]\njob",
    "job",
    "nbtasks.pmap(twice, range(5, 8), background=True)",
]


def test_a_job_shows_in_every_cell_that_asks_and_once_in_the_cell_that_starts_it(jupyter_env: redis.Redis) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in SHOWN])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()

    def widgets(cell: int) -> int:
        return sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in nb.cells[cell].outputs)

    started = widgets(0)  # the job's row, and the box its tasks' output goes to
    assert started >= 1
    assert widgets(1) >= 1 and widgets(2) >= 1, "a later cell showed nothing"
    assert widgets(3) == started, "the cell that started the job showed it twice"
