"""What keeps nbtasks off Linux-only ground: process checks go through psutil (macOS has
no /proc), and the unix-only modules stay inside the embedded server's module."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

from nbtasks import server
from nbtasks.pool import processes

from .conftest import wait_until

PACKAGE = Path(__file__).parent.parent / "nbtasks"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_module_reads_proc_and_only_the_server_imports_fcntl() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert modules
    readers = [p.name for p in modules if '"/proc' in p.read_text() or 'f"/proc' in p.read_text()]
    assert readers == []
    assert [p.relative_to(PACKAGE).as_posix() for p in modules if "fcntl" in _imports(p)] == ["server.py"]


def test_a_stopped_process_is_seen_as_stopped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not processes._stopped(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: processes._stopped(proc.pid), 10, "the process to stop")
    finally:
        proc.kill()
        proc.wait()
    assert not processes._stopped(proc.pid)  # gone: not stopped


def test_a_pidfile_whose_pid_is_now_another_program_is_not_taken_for_the_server(tmp_path: Path) -> None:
    (tmp_path / "server.pid").write_text(str(os.getpid()))  # alive, but not a server of this folder
    assert server._pid(tmp_path) is None
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(60)", str(tmp_path / server.SOCKET)])
    try:
        (tmp_path / "server.pid").write_text(str(proc.pid))  # its command line names the socket
        assert server._pid(tmp_path) == proc.pid
    finally:
        proc.kill()
        proc.wait()
    assert server._pid(tmp_path) is None
