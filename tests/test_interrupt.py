"""What a stopped call leaves behind: in a Jupyter cell the bar marked stopped, one line
saying what is kept, and a traceback that ends in the cell; in a terminal the same line
and a traceback without redis-py's or the worker pool's frames. Nothing else: no
tracebacks from the demo's HTTP server for the connections the stopped workers dropped."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from nbtasks import demo, interrupt
from nbtasks.store import JobKeys

from .conftest import wait_until, worker_pids

ONE_SERVER = True  # (see conftest): what the caller shows, not the server, is under test

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_a_client_that_hangs_up_mid_answer_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    server = demo.SlowServer(("127.0.0.1", 0), demo.SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        before = threading.active_count()
        with socket.create_connection(server.server_address) as client:
            client.sendall(b"GET /page/1?delay=0.3 HTTP/1.0\r\n\r\n")
            wait_until(lambda: demo.SlowHandler.in_flight == 1, 10, "the request to be taken")
            # Close with a reset, as a killed process's socket does: the answer meets a dead peer.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: threading.active_count() < before + 1, 10, "the handler thread to end")
    finally:
        server.shutdown()
        server.server_close()
    assert demo.SlowHandler.in_flight == 0
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err and "Error" not in printed.err, printed.err


def test_a_second_interrupt_waits_until_the_stop_is_done() -> None:
    got = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.held():
            os.kill(os.getpid(), signal.SIGINT)  # handled at once, between two bytecodes
            got.append("the stop went on to its end")
    assert got == ["the stop went on to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


SETUP = """
import threading, urllib.request, nbtasks
from nbtasks.demo import SlowHandler, SlowServer

server = SlowServer(("127.0.0.1", 0), SlowHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
urls = [f"http://127.0.0.1:{server.server_address[1]}/page/{i}?delay=1" for i in range(1500)]

def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()
"""

CELL = 'pages = nbtasks.pmap(fetch, urls, name="crawl", concurrency=100)'

# Once the stopped workers' connections are all answered (or failed), the server's
# handler threads are gone: anything the server had to say about them has been said.
SETTLED = """
import time
while any(t.name.endswith("(process_request_thread)") for t in threading.enumerate()):
    time.sleep(0.01)
"""


def test_a_stopped_cell_shows_the_bar_stopped_one_line_and_a_traceback_that_ends_in_the_cell(
    jupyter_env: redis.Redis,
) -> None:
    from jupyter_client.manager import start_new_kernel

    r = jupyter_env
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        assert _run(kc, SETUP) == "ok"
        _iopub(kc)
        kc.execute(CELL)
        wait_until(lambda: r.bitcount(JobKeys("crawl").done) >= 100, 60, "100 results")
        km.interrupt_kernel()  # the stop button
        reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert _run(kc, SETTLED) == "ok"
        seen = _iopub(kc)
        kept = r.bitcount(JobKeys("crawl").done)

        # One line, nothing else: no traceback of the HTTP server for the dropped connections.
        line = f"nbtasks: interrupted; {kept} of 1500 results of job 'crawl' are stored. Run the same call again"
        assert seen["stream"] == line + " to resume.\n"
        # The traceback: the cell's own line, and nothing of nbtasks, redis-py or hiredis.
        (tb,) = seen["error"]
        text = ANSI.sub("", "\n".join(tb))
        assert "----> 1 pages = nbtasks.pmap(fetch, urls" in text, text
        assert not re.search(r"redis|hiredis|nbtasks[/\\]|site-packages", text), text
        assert text.rstrip().splitlines()[-1].startswith("KeyboardInterrupt"), text
        # The bar ends stopped (the dashboard's "stopped" colour), not red like a failure.
        assert [s["bar_style"] for s in seen["bars"]][-1] == "warning"
        assert "crawl (stopped)" in seen["plain"][-1] and f"{kept}/1500" in seen["plain"][-1]
        assert worker_pids("crawl") == []

        assert _run(kc, CELL + "\nassert len(pages) == 1500") == "ok"
        assert [s["bar_style"] for s in _iopub(kc)["bars"]][-1] == "success"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _run(kc: Any, code: str) -> str:
    """Run a cell; its reply's status. Its output stays queued for `_iopub`."""
    sent = kc.execute(code)
    while (reply := kc.get_shell_msg(timeout=120))["parent_header"].get("msg_id") != sent:
        pass
    return str(reply["content"]["status"])


def _iopub(kc: Any) -> dict[str, Any]:
    """What the kernel has sent since the last call: stream text, error tracebacks,
    the bar_style updates of progress widgets, and the plain-text copies of displays."""
    seen: dict[str, Any] = {"stream": "", "error": [], "bars": [], "plain": []}
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            return seen
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            seen["stream"] += content["text"]
        elif kind == "error":
            seen["error"].append(content["traceback"])
        elif kind in ("comm_open", "comm_msg") and "bar_style" in content["data"].get("state", {}):
            seen["bars"].append(content["data"]["state"])
        elif kind in ("display_data", "update_display_data"):
            seen["plain"].append(content["data"].get("text/plain", ""))


SCRIPT = """
import sys, time, nbtasks

def slow(x):
    time.sleep(0.2)
    return x

nbtasks.configure(redis_url=sys.argv[1])
print("started", flush=True)
nbtasks.pmap(slow, range(2000), name="terminal", concurrency=20)
"""


def test_an_interrupted_script_says_what_is_kept_and_shows_only_its_own_frames(
    r: redis.Redis, redis_server: Any, tmp_path: Path
) -> None:
    script = tmp_path / "crawl.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), redis_server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: r.bitcount(JobKeys("terminal").done) >= 40, 60, "40 results")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    kept = r.bitcount(JobKeys("terminal").done)
    lines = err.replace("\r", "\n").splitlines()  # (the bar redraws itself with carriage returns)
    said = f"nbtasks: interrupted; {kept} of 2000 results of job 'terminal' are stored."
    assert any(line.startswith(said) for line in lines), err  # a line of its own, not after the bar
    tb = err[err.index("Traceback") :]
    # The traceback ends in the script: its last frame is the line that called pmap.
    assert tb.rstrip().endswith(
        'in <module>\n    nbtasks.pmap(slow, range(2000), name="terminal", concurrency=20)\nKeyboardInterrupt'
    ), tb
    assert "redis" not in tb and "nbtasks" + os.sep not in tb, tb
    assert worker_pids("terminal") == []
