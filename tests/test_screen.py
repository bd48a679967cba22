"""A background job's text bar and the program's own prints share a terminal: every line
the program prints ends up on a row of its own, never on the bar's row."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis

ONE_SERVER = True  # (see conftest): the terminal, not the server, is under test

SCRIPT = """
import sys, time, nbtasks

DELAY = float(sys.argv[2])

def slow(x):
    time.sleep(DELAY)
    return x

nbtasks.configure(redis_url=sys.argv[1])
job = nbtasks.pmap(slow, range(400), name="beside", background=True, concurrency=4)
for i in range(12):
    print("tick", i)
    print("warn", i, file=sys.stderr)
    time.sleep(0.1)
sys.stdout.write("half a line, ")
sys.stdout.flush()
time.sleep(0.3)  # the bar goes on meanwhile, and must not draw on this row
print("then its end")
assert len(job.result()) == 400
print("all", 400)
"""


@pytest.mark.parametrize("delay", ["0.05", "0"], ids=["while-it-runs", "after-it-ends"])
def test_prints_beside_a_background_bar_keep_rows_of_their_own(
    r: redis.Redis, redis_server: Any, tmp_path: Path, delay: str
) -> None:
    script = tmp_path / "beside.py"
    script.write_text(textwrap.dedent(SCRIPT))
    screen = _run_in_a_terminal([sys.executable, str(script), redis_server.url, delay])
    ours = [row for row in screen if re.search(r"tick|warn|half|all 400", row)]
    expected = [f"{kind} {i}" for i in range(12) for kind in ("tick", "warn")]
    assert ours == [*expected, "half a line, then its end", "all 400"], "\n".join(screen)
    assert any(re.match(r"beside: 100%.*400/400", row) for row in screen), "\n".join(screen)


def _run_in_a_terminal(command: list[str]) -> list[str]:
    """Run `command` on a pseudo-terminal 120 columns wide; the rows it leaves on screen."""
    main, side = os.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    proc = subprocess.Popen(command, stdin=side, stdout=side, stderr=side, close_fds=True)
    os.close(side)
    raw = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the program has ended and closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, raw.decode(errors="replace")
    return _screen(raw.decode(errors="replace"))


def _screen(text: str) -> list[str]:
    """What a terminal shows after `text`: carriage returns go back to the row's start,
    newlines to the next row; escape sequences (colours, cursor moves up) are dropped,
    tqdm draws one bar on one row without them."""
    rows: list[list[str]] = [[]]
    col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|.|\n", text, re.S):
        if token == "\r":
            col = 0
        elif token == "\n":
            rows.append([])
            col = 0
        elif not token.startswith("\x1b"):
            row = rows[-1]
            row.extend(" " * (col + 1 - len(row)))
            row[col] = token
            col += 1
    return ["".join(row).rstrip() for row in rows]
