"""The quickstart notebook in a real browser: JupyterLab and headless Chromium (driven by
Playwright) run all its cells; the pmap progress bar and the status dashboard must render
in the page and end full and finished. With NBTASKS_SCREENSHOT=1 it saves
docs/screenshot.png for the README."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest

import nbtasks

from .conftest import _pids, server_pids, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

REPO = Path(__file__).parent.parent
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
# The README's screenshot is written again only when asked for (NBTASKS_SCREENSHOT=1):
# the test command leaves the checkout as it was.
SCREENSHOT = REPO / "docs" / "screenshot.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOBS = 3000  # the number of pages the quickstart fetches
WAIT_MS = 120_000  # the longest a page-side wait may take before the test fails


@dataclass
class Lab:
    url: str  # the notebook's page, token included
    code_cells: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) == 200
    except OSError:
        return False


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab serving a clean copy of the quickstart (see `serve`)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # start from a clean copy even if the repository's has outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with serve(tmp_path, nb, NOTEBOOK.name) as running:
        yield running


@contextlib.contextmanager
def serve(tmp_path: Path, nb: nbformat.NotebookNode, filename: str) -> Iterator[Lab]:
    """JupyterLab on its own port, token and folders, serving `nb` as `filename`, whose
    kernels use nbtasks' own server in a fresh, short NBTASKS_HOME. Everything it started
    (JupyterLab, its kernels, the nbtasks server) is stopped afterwards."""
    if importlib.util.find_spec("jupyterlab") is None:
        pytest.skip("JupyterLab is not installed (pip install jupyterlab)")
    root = tmp_path / "root"
    root.mkdir()
    nbformat.write(nb, root / filename)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "NBTASKS_"))}
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[var] = str(tmp_path / var.lower())
    # No "get Jupyter news?" toast over the page.
    settings = tmp_path / "jupyter_config_dir/lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env["TMPDIR"] = str(tmp_path / "tmp")  # what the kernel leaves in temp files stays here
    (tmp_path / "tmp").mkdir()
    home = Path(tempfile.mkdtemp(prefix="nbt"))  # short: the server's unix socket lives here
    env["NBTASKS_HOME"] = str(home)

    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--port={port}", "--no-browser"]
    command += ["--allow-root", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            return answers(f"{base}/api/status?token={token}")

        wait_until(up, 60, "JupyterLab to answer")
        workspace = f"nbtasks-{secrets.token_hex(4)}"
        url = f"{base}/lab/workspaces/{workspace}/tree/{filename}?reset&token={token}"
        yield Lab(url, sum(cell.cell_type == "code" for cell in nb.cells))
    finally:
        _stop(proc, tmp_path / "jupyter_runtime_dir")
        if not nbtasks.server.stop(home):
            for pid in server_pids(home):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], runtime: Path) -> None:
    """SIGTERM makes JupyterLab shut its kernels down; kill whatever is left."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Kernels run in sessions of their own; each is named by a connection file in `runtime`.
    for pid in _pids(lambda argv: str(runtime).encode() in argv):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def page() -> Iterator[Page]:
    """A headless Chromium page (Debian's browser: Playwright cannot download its own here)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Error as e:
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {e}")
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 860})
            tab.set_default_timeout(WAIT_MS)
            yield tab
        finally:
            browser.close()


# True once Run All has ended: the first code cell has a number and no cell is queued or
# running ("[*]"). If a cell fails, the cells after it go back to "[ ]", so this ends too.
RUN_ENDED = r"""() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim());
  return prompts.length > 0 && /^\[\d+\]:$/.test(prompts[0]) && !prompts.some(p => p === '[*]:');
}"""


@pytest.mark.timeout(300)
def test_quickstart_in_a_real_browser(page: Page, lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # for what must show up in the page once the run ended
    page.goto(lab.url)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    expect(cells).to_have_count(lab.code_cells, timeout=WAIT_MS)
    # The status bar names the kernel and its state once the page is connected to it.
    kernel = page.get_by_role("contentinfo").get_by_role("button", name=re.compile(r"\(ipykernel\) \| Idle$"))
    expect(kernel).to_be_visible(timeout=WAIT_MS)

    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(RUN_ENDED, polling=100, timeout=WAIT_MS)

    failures = [text for text in cells.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in text]
    assert not failures, "a cell failed in the browser:\n" + "\n".join(failures)
    expect(cells.last.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"))

    # The pmap cell: tqdm's widget (label, bar, numbers) at its final state.
    pmap = cells.filter(has_text='name="quickstart", fresh=True')
    expect(pmap).to_have_count(1)
    tqdm = pmap.locator(".jp-OutputArea .widget-hbox").filter(has=page.locator(".widget-hprogress"))
    expect(tqdm).to_have_count(1)
    expect(tqdm.locator(".widget-html-content").first).to_have_text(re.compile(r"^quickstart:\s*100%"))
    expect(tqdm.locator(".widget-html-content").last).to_have_text(re.compile(rf"^\s*{JOBS}/{JOBS}\b"))
    assert_full(tqdm.locator(".widget-hprogress"))
    expect(tqdm.locator(".progress-bar")).to_have_class(re.compile(r"\bprogress-bar-success\b"))  # not red

    # The status dashboard: the row of job "quickstart", its bar full and green, "finished".
    board = cells.filter(has_text="nbtasks.status()")
    expect(board).to_have_count(1)
    name = page.locator(".widget-html-content b", has_text=re.compile(r"^quickstart$"))
    row = board.locator(".jp-OutputArea .widget-hbox").filter(has=name).filter(has=page.locator(".widget-hprogress"))
    expect(row).to_have_count(1)
    numbers = row.locator(".widget-html-content").last
    expect(numbers).to_have_text(re.compile(rf"^finished\b.*\b{JOBS}/{JOBS} done\b.*\b0 failed\b"))
    assert_full(row.locator(".widget-hprogress"))
    expect(row.locator(".progress-bar")).to_have_class(re.compile(r"\bprogress-bar-success\b"))

    # The screenshot for the README: no file browser, the pmap cell at the top, the dashboard below it.
    page.keyboard.press("Control+b")  # View > Appearance > Show Left Sidebar
    expect(page.locator(".jp-DirListing")).to_be_hidden()
    pmap.evaluate("cell => cell.scrollIntoView({block: 'start'})")
    expect(tqdm).to_be_in_viewport()
    expect(row).to_be_in_viewport()
    shot = SCREENSHOT if os.environ.get("NBTASKS_SCREENSHOT") == "1" else tmp_path / "screenshot.png"
    page.screenshot(path=shot)
    assert shot.stat().st_size > 10_000  # a real picture of the page, not an empty one


def assert_full(bar: Locator) -> None:
    """The bar's filled part spans its whole track: ipywidgets 8 sets its width in %, and
    the page lays it out. The dashboard may redraw a row meanwhile (when a job appears), so
    the layout is read again until it holds."""
    from playwright.sync_api import expect

    fill = bar.locator(".progress-bar")
    expect(fill).to_have_count(1)
    expect(fill).to_have_attribute("style", re.compile(r"\bwidth: 100%"))

    def full() -> bool:
        track, filled = bar.locator(".progress").bounding_box(), fill.bounding_box()
        return track is not None and filled is not None and filled["width"] > 0.99 * track["width"] > 0

    wait_until(full, 30, "the bar to be drawn full across its track")


STOP_CELLS = [
    """import threading, urllib.request
import nbtasks
from nbtasks.demo import SlowHandler, SlowServer

server = SlowServer(("127.0.0.1", 0), SlowHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
urls = [f"http://127.0.0.1:{server.server_address[1]}/page/{i}?delay=1" for i in range(1000)]

def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()""",
    'pages = nbtasks.pmap(fetch, urls, name="crawl", concurrency=50)',
    """assert pages == [f"/page/{i}?delay=1" for i in range(1000)]
print(f"all {len(pages)} pages, in order")""",
]
STOPPED_SHOT = REPO / "docs" / "stopped.png"
RESUMED_SHOT = REPO / "docs" / "resumed.png"


@pytest.mark.timeout(300)
def test_the_stop_button_in_a_real_browser_then_the_same_cell_again(page: Page, tmp_path: Path) -> None:
    """Press JupyterLab's stop button while pmap runs: the cell shows its bar stopped
    (not red), the one line saying what is kept, and a traceback that ends in the cell,
    nothing else. Running the cell again finishes the job; the next cell checks it."""
    from playwright.sync_api import expect

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in STOP_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    with serve(tmp_path, nb, "crawl.ipynb") as lab:
        expect.set_options(timeout=30_000)
        page.goto(lab.url)
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        expect(cells).to_have_count(3, timeout=WAIT_MS)
        kernel = page.get_by_role("contentinfo").get_by_role("button", name=re.compile(r"\(ipykernel\) \| Idle$"))
        expect(kernel).to_be_visible(timeout=WAIT_MS)
        page.keyboard.press("Control+b")  # no file browser: the screenshots show the notebook
        crawl = cells.nth(1)

        cells.first.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")  # the set-up cell
        expect(cells.first.locator(".jp-InputPrompt")).to_have_text("[1]:", timeout=WAIT_MS)
        page.keyboard.press("Shift+Enter")  # the crawl
        bar = crawl.locator(".jp-OutputArea .widget-hbox").filter(has=page.locator(".widget-hprogress"))
        expect(bar).to_have_count(1, timeout=WAIT_MS)
        numbers = bar.locator(".widget-html-content").last

        def some_done() -> bool:
            found = re.match(r"\s*(\d+)/1000", numbers.inner_text())
            return found is not None and int(found.group(1)) >= 150

        wait_until(some_done, 60, "150 pages before pressing stop")
        page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]').click()
        expect(crawl.locator(".jp-InputPrompt")).to_have_text("[2]:", timeout=WAIT_MS)

        # The bar: stopped, in the dashboard's colour for it, not the red of a failure.
        expect(bar.locator(".progress-bar")).to_have_class(re.compile(r"\bprogress-bar-warning\b"))
        expect(bar.locator(".widget-html-content").first).to_have_text(re.compile(r"^crawl\s\(stopped\):"))
        kept = int(re.match(r"\s*(\d+)/1000", numbers.inner_text()).group(1))  # type: ignore[union-attr]
        texts = crawl.locator(".jp-OutputArea .jp-RenderedText").all_inner_texts()
        shown = "\n".join(texts)
        assert f"nbtasks: interrupted; {kept} of 1000 results of job 'crawl' are stored." in shown, shown
        assert "----> 1 pages = nbtasks.pmap(fetch, urls" in shown, shown
        assert not re.search(r"redis|site-packages|nbtasks/|BrokenPipe|ConnectionReset", shown), shown
        assert len(shown.strip().splitlines()) <= 8, shown
        crawl.evaluate("cell => cell.scrollIntoView({block: 'start'})")
        _shot(page, STOPPED_SHOT, tmp_path)

        crawl.locator(".jp-InputPrompt").click()  # select the crawl, then run it again and the check below
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run Selected Cell and All Below", exact=True).click()
        expect(cells.last.locator(".jp-InputPrompt")).to_have_text("[4]:", timeout=WAIT_MS)
        again = crawl.locator(".jp-OutputArea .widget-hbox").filter(has=page.locator(".widget-hprogress"))
        expect(again).to_have_count(1)
        expect(again.locator(".widget-html-content").last).to_have_text(re.compile(r"^\s*1000/1000\b"))
        expect(again.locator(".progress-bar")).to_have_class(re.compile(r"\bprogress-bar-success\b"))
        assert_full(again.locator(".widget-hprogress"))
        assert "Traceback" not in "\n".join(crawl.locator(".jp-OutputArea-output").all_inner_texts())
        expect(cells.last.locator(".jp-OutputArea-output")).to_have_text(re.compile(r"all 1000 pages, in order"))
        crawl.evaluate("cell => cell.scrollIntoView({block: 'start'})")
        _shot(page, RESUMED_SHOT, tmp_path)


def _shot(page: Page, readme_copy: Path, tmp_path: Path) -> None:
    """A screenshot: the README's copy in docs/ with NBTASKS_SCREENSHOT=1, else a temp file."""
    shot = readme_copy if os.environ.get("NBTASKS_SCREENSHOT") == "1" else tmp_path / readme_copy.name
    page.screenshot(path=shot, clip={"x": 0, "y": 0, "width": 1280, "height": 380})  # the two cells
    assert shot.stat().st_size > 10_000  # a real picture of the page, not an empty one
