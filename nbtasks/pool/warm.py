"""Warm workers: processes that finished a run wait a while for the next one, so that
repeated small maps in a notebook start at once instead of paying an interpreter start.

Caller and worker talk over a socket pair made when the worker is started (the worker's
end passed as a file descriptor, never through stdin or stdout, which belong to the
user's function). One JSON line or word per message:

    caller -> worker   end            the run is complete: wind down
    caller -> worker   stop           the run was stopped: record what finished, leave
    worker -> caller   ready          idle, waiting for an assignment
    caller -> worker   {assignment}   the next run: job, token, environment...
    worker -> caller   ok             taken (or the socket closes: the worker left)

A worker leaves instead of waiting when tasks are still running, when one of the user's
own modules it imported has changed on disk (its code would be stale), after `warm`
seconds idle, and when the caller goes away (the socket reaches end of file).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

READY_WAIT = 0.3  # seconds a new run waits for a worker of the last run to be ready
TAKE_WAIT = 2.0  # seconds a worker has to accept an assignment


@dataclass
class Assignment:
    """Everything a worker needs for one run, the caller's context included."""

    job: str
    token: str
    wid: str
    concurrency: int
    beacon: str
    url: str
    sys_path: list[str]
    env: dict[str, str] | None = None  # None: the environment the worker started with
    cwd: str | None = None

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Assignment:
        return cls(**json.loads(line))

    def apply(self) -> None:
        """Take on the caller's environment, working folder and import path, as a
        fresh worker would."""
        if self.env is not None:
            os.environ.clear()
            os.environ.update(self.env)
        if self.cwd is not None:
            try:
                os.chdir(self.cwd)
            except OSError:
                pass  # the caller's folder is gone: stay where we are
        for entry in self.sys_path:
            if entry and entry not in sys.path:
                sys.path.append(entry)


# -- the caller's side ------------------------------------------------------------


@dataclass
class Idle:
    popen: subprocess.Popen[bytes]
    control: socket.socket
    log: Path
    backend: str  # a process runs one backend for its life (eventlet patches at start)
    since: float = field(default_factory=time.monotonic)


_idle: list[Idle] = []
_lock = threading.Lock()
_reaper: threading.Thread | None = None


def release(popen: subprocess.Popen[bytes], control: socket.socket, log: Path, warm: float, backend: str) -> None:
    """Tell a worker its run is complete and keep it for the next run."""
    try:
        control.sendall(b"end\n")
    except OSError:
        _discard(popen, control)
        return
    global _reaper
    with _lock:
        _idle.append(Idle(popen, control, log, backend))
        if _reaper is None or not _reaper.is_alive():
            # Reaps those that left on their own, so no zombie stays in a quiet kernel.
            _reaper = threading.Thread(target=_reap, args=(warm + 1.0,), name="nbtasks warm workers", daemon=True)
            _reaper.start()


def take(assignment: Assignment, backend: str) -> tuple[subprocess.Popen[bytes], socket.socket, Path] | None:
    """A warm worker of `backend` that accepted `assignment`, or None (start a fresh one)."""
    deadline = time.monotonic() + READY_WAIT
    while True:
        with _lock:
            _prune_locked()  # first: it closes the sockets of those that left
            candidates = [w for w in _idle if w.backend == backend]
            for w in candidates:
                if _readable(w.control, 0):
                    _idle.remove(w)
                    break
            else:
                w = None
        if w is not None:
            if _hand_over(w, assignment):
                return w.popen, w.control, w.log
            continue
        if not candidates or time.monotonic() >= deadline:
            return None
        select.select([c.control for c in candidates], [], [], max(0.0, deadline - time.monotonic()))


def _hand_over(w: Idle, assignment: Assignment) -> bool:
    try:
        w.control.settimeout(TAKE_WAIT)
        if _read_word(w.control) != b"ready":
            raise OSError("not ready")
        w.control.sendall(assignment.to_line())
        if _read_word(w.control) != b"ok":
            raise OSError("refused")  # stale modules, or it left
        w.control.settimeout(None)
        return True
    except OSError:
        _discard(w.popen, w.control)
        return False


def _read_word(sock: socket.socket) -> bytes:
    """One short line; the worker sends nothing else, so no line is split across reads."""
    data = sock.recv(64)
    return data.strip()


def _readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def _discard(popen: subprocess.Popen[bytes], control: socket.socket) -> None:
    control.close()
    if popen.poll() is None:
        popen.kill()
    popen.wait()


def _reap(every: float) -> None:
    """Forget idle workers that left, every so often, until none is left."""
    while True:
        time.sleep(every)
        with _lock:
            _prune_locked()
            if not _idle:
                return


def _prune_locked() -> None:
    """Forget (and reap) idle workers that left."""
    for w in [w for w in _idle if w.popen.poll() is not None]:
        _idle.remove(w)
        w.control.close()


@atexit.register
def close_all() -> None:
    """Let every idle worker go (they also leave on their own if this process dies)."""
    with _lock:
        while _idle:
            w = _idle.pop()
            w.control.close()
            try:
                w.popen.wait(1.0)
            except subprocess.TimeoutExpired:
                w.popen.kill()


# -- the worker's side ------------------------------------------------------------


class Control:
    """The worker's end of the socket pair (a green socket once eventlet has patched)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self._buffer = b""

    def send(self, word: str) -> None:
        self.sock.sendall(word.encode() + b"\n")

    def line(self, timeout: float | None) -> bytes | None:
        """The next line, or None at end of file or after `timeout` seconds."""
        self.sock.settimeout(timeout)
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def next_assignment(self, warm: float, stale: Callable[[], bool]) -> Assignment | None:
        """Say ready, then wait up to `warm` seconds for a run; None: leave (also when
        `stale()` says, once the run arrives, that this process's code is out of date)."""
        try:
            self.send("ready")
            line = self.line(warm)
            if line is None or stale():
                return None
            assignment = Assignment.from_line(line)
            self.send("ok")
            return assignment
        except OSError:
            return None


class Modules:
    """Modification times of the user's own modules a worker has imported: once one
    changes on disk, the worker's copy is stale and it must not take another run."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._stale = False
        here = Path(__file__).resolve().parent.parent  # nbtasks itself
        self._system = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix, str(here)})

    def note(self, since: float) -> None:
        """Take in the modules imported by a run that began at `since` (time.time());
        one modified since then may have changed after it was imported: stale."""
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and path not in self._seen and not path.startswith(self._system):
                try:
                    self._seen[path] = mtime = os.stat(path).st_mtime_ns
                except OSError:
                    continue
                self._stale = self._stale or mtime >= since * 1e9

    def changed(self) -> bool:
        if self._stale:
            return True
        for path, mtime in self._seen.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False
