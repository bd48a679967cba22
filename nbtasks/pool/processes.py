"""Starts, watches and stops the worker processes of one run."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from .. import blas
from . import warm
from .beacon import IDLE, Beacon
from .warm import Assignment


@dataclass
class _Proc:
    wid: str
    popen: subprocess.Popen[bytes]
    log: Path
    beacon: Beacon
    beacon_path: Path
    control: socket.socket | None = None  # warm workers only


class WorkerPool:
    """`processes` worker processes running ``python -m nbtasks.worker``, taken warm
    from an earlier run when one waits (see `warm`), else started fresh.

    Fresh interpreters, not forks of the caller: a forked Jupyter kernel would carry its
    threads and sockets, and eventlet must patch the standard library before anything
    else is imported. Popen's fork is followed at once by exec, so it is safe inside a
    kernel. Each worker gets its own session: Jupyter's interrupt signals the kernel's
    whole process group, and the caller, not the signal, decides what workers do.

    Their output goes to a log file per worker, not to the caller's stdout and stderr:
    a notebook would not show it, and a worker that outlives a killed caller must not
    hold the caller's pipes open.
    """

    def __init__(
        self,
        url: str,
        job: str,
        token: str,
        processes: int,
        concurrency: int,
        warm: float = 0.0,
        backend: str = "eventlet",
    ) -> None:
        self.url, self.job, self.token, self.backend = url, job, token, backend
        self.processes, self.concurrency, self.warm = processes, concurrency, warm
        self.procs: list[_Proc] = []
        self._started = 0
        self.log_dir = _log_dir()
        self._stopped_since: dict[str, float] = {}

    def start(self) -> None:
        for _ in range(self.processes):
            self.spawn()

    def spawn(self) -> None:
        """Start one worker (at the start, or to replace one that died)."""
        wid = f"{self.token[:8]}-{self._started}"
        self._started += 1
        beacon_path = self.log_dir / f"{wid}.beacon"
        beacon = Beacon(beacon_path, create=True)
        # The caller's import path, so functions from its own modules load there too.
        sys_path = [p or os.getcwd() for p in sys.path]
        env = {**os.environ, **blas.limits(os.environ, self.processes)}  # BLAS threads: see blas
        env["NBTASKS_REDIS_URL"] = self.url  # not in argv: the URL may hold a password
        if self.warm > 0:
            a = Assignment(self.job, self.token, wid, self.concurrency, str(beacon_path), self.url, sys_path)
            a.env, a.cwd = env, os.getcwd()
            if taken := warm.take(a, self.backend):
                popen, control, log = taken
                self.procs.append(_Proc(wid, popen, log, beacon, beacon_path, control))
                return
        env["NBTASKS_SYS_PATH"] = os.pathsep.join(sys_path)
        cmd = [sys.executable, "-m", "nbtasks.worker", "--job", self.job, "--token", self.token, "--wid", wid]
        cmd += ["--concurrency", str(self.concurrency), "--beacon", str(beacon_path), "--backend", self.backend]
        ours, theirs = socket.socketpair() if self.warm > 0 else (None, None)
        if theirs is not None:
            cmd += ["--control", str(theirs.fileno()), "--warm", str(self.warm)]
        log = self.log_dir / f"{wid}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                pass_fds=(theirs.fileno(),) if theirs else (),
            )
        if theirs is not None:
            theirs.close()
        self.procs.append(_Proc(wid, popen, log, beacon, beacon_path, ours))

    def dead(self) -> list[tuple[str, int, int, str]]:
        """Workers that exited since the last call: id, the item it was executing when
        it died (IDLE if none), exit code, the end of its log."""
        gone = [p for p in self.procs if p.popen.poll() is not None]
        self.procs = [p for p in self.procs if p.popen.returncode is None]
        out = [(p.wid, p.beacon.read()[1], p.popen.returncode, _tail(p.log)) for p in gone]
        for p in gone:
            _kept.add(p.log)
            self._forget(p)
        return out

    def blocked(self, age: float) -> list[tuple[str, int]]:
        """Workers whose event loop has not run for `age` seconds, with the item that
        holds it (a task stuck in CPU or C code)."""
        out = []
        for p in self.procs:
            silent, index = p.beacon.read()
            if silent > age and index != IDLE and p.popen.poll() is None:
                out.append((p.wid, index))
        return out

    def frozen(self, age: float) -> list[str]:
        """Workers stopped (SIGSTOP, a debugger) for more than `age` seconds."""
        now = time.monotonic()
        out = []
        for p in self.procs:
            if _stopped(p.popen.pid):
                since = self._stopped_since.setdefault(p.wid, now)
                if now - since > age:
                    out.append(p.wid)
            else:
                self._stopped_since.pop(p.wid, None)
        return out

    def kill(self, wid: str) -> None:
        """Kill a worker at once (its task is stuck); `dead` reports it."""
        for p in self.procs:
            if p.wid == wid:
                p.popen.kill()
                p.popen.wait()

    def stop(self, grace: float = 1.0) -> None:
        """Wait up to `grace` seconds for workers to leave (the caller has released the
        job, so they are recording what they finished), then kill what is left."""
        for p in self.procs:
            if p.control is not None:  # a warm-capable worker: tell it, rather than let it guess
                with contextlib.suppress(OSError):
                    p.control.sendall(b"stop\n")
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
        for p in self.procs:
            p.popen.wait()
            self._forget(p)
        self.procs = []

    def keep_warm(self) -> None:
        """The run is complete: hand live workers to the next run (see `warm`)."""
        for p in self.procs:
            if p.control is not None and p.popen.poll() is None:
                warm.release(p.popen, p.control, p.log, self.warm, self.backend)
                self._forget(p, warm=True)
        self.procs = [p for p in self.procs if p.control is None or p.popen.returncode is not None]

    def close(self, grace: float = 1.0) -> None:
        """Stop every worker that is not kept warm (see `stop`)."""
        self.stop(grace)

    def _forget(self, p: _Proc, warm: bool = False) -> None:
        """Let go of a worker's beacon, and of its log unless it died or stays warm."""
        p.beacon.close()
        p.beacon_path.unlink(missing_ok=True)
        if not warm:
            if p.log not in _kept:
                p.log.unlink(missing_ok=True)
            if p.control is not None:
                p.control.close()


_logs: list[Path] = []
_kept: set[Path] = set()  # logs of workers that died: their last lines explain why


def _log_dir() -> Path:
    """One folder of worker logs per caller process (warm workers outlive a run),
    removed at exit unless a worker died there (see also `remove_leftovers`)."""
    if not _logs:
        remove_leftovers()
        _logs.append(Path(tempfile.mkdtemp(prefix=f"{LOGS_PREFIX}{os.getpid()}-")))
        atexit.register(_remove_logs)
    return _logs[0]


LOGS_PREFIX = "nbtasks-workers-"


_swept: list[bool] = []


def remove_leftovers() -> None:
    """Remove the worker folders of callers that are gone (killed, or whose workers
    died), once per process: at its first call that may run something."""
    if not _swept:
        _swept.append(True)
        _remove_leftovers(Path(tempfile.gettempdir()))


def _remove_leftovers(folder: Path) -> None:
    for leftover in folder.glob(f"{LOGS_PREFIX}*"):
        pid = leftover.name.removeprefix(LOGS_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    return bool(psutil.pid_exists(pid))


def _remove_logs() -> None:
    warm.close_all()  # first, so that warm workers' logs are closed
    if not _kept:
        shutil.rmtree(_logs[0], ignore_errors=True)


def _stopped(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP, a debugger), on any platform psutil knows."""
    try:
        return bool(psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP))
    except psutil.Error:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
