"""Starts, watches and stops the worker processes of one run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .beacon import IDLE, Beacon


@dataclass
class _Proc:
    wid: str
    popen: subprocess.Popen[bytes]
    log: Path
    beacon: Beacon


class WorkerPool:
    """`processes` fresh interpreters running ``python -m nbtasks.worker``.

    Fresh interpreters, not forks of the caller: a forked Jupyter kernel would carry its
    threads and sockets, and eventlet must patch the standard library before anything
    else is imported. Popen's fork is followed at once by exec, so it is safe inside a
    kernel. Each worker gets its own session: Jupyter's interrupt signals the kernel's
    whole process group, and the caller, not the signal, decides what workers do.

    Their output goes to a log file per worker, not to the caller's stdout and stderr:
    a notebook would not show it, and a worker that outlives a killed caller must not
    hold the caller's pipes open.
    """

    def __init__(self, url: str, job: str, token: str, processes: int, concurrency: int) -> None:
        self.url, self.job, self.token = url, job, token
        self.processes, self.concurrency = processes, concurrency
        self.procs: list[_Proc] = []
        self._started = 0
        self.log_dir = Path(tempfile.mkdtemp(prefix="nbtasks-workers-"))
        self._keep_logs = False
        self._stopped_since: dict[str, float] = {}

    def start(self) -> None:
        for _ in range(self.processes):
            self.spawn()

    def spawn(self) -> None:
        """Start one worker (at the start, or to replace one that died)."""
        wid = f"{self.token[:8]}-{self._started}"
        self._started += 1
        env = dict(os.environ)
        # Passed in the environment, not argv: the URL may hold a password.
        env["NBTASKS_REDIS_URL"] = self.url
        env["NBTASKS_SYS_PATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        cmd = [sys.executable, "-m", "nbtasks.worker", "--job", self.job, "--token", self.token, "--wid", wid]
        beacon_path = self.log_dir / f"{wid}.beacon"
        beacon = Beacon(beacon_path, create=True)
        cmd += ["--concurrency", str(self.concurrency), "--beacon", str(beacon_path)]
        log = self.log_dir / f"{wid}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        self.procs.append(_Proc(wid, popen, log, beacon))

    def dead(self) -> list[tuple[str, int, int, str]]:
        """Workers that exited since the last call: id, the item it was executing when
        it died (IDLE if none), exit code, the end of its log."""
        gone = [p for p in self.procs if p.popen.poll() is not None]
        self.procs = [p for p in self.procs if p.popen.returncode is None]
        if gone:
            self._keep_logs = True
        return [(p.wid, p.beacon.read()[1], p.popen.returncode, _tail(p.log)) for p in gone]

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
        """Workers stopped (SIGSTOP, a debugger) for more than `age` seconds (Linux)."""
        now = time.monotonic()
        out = []
        for p in self.procs:
            if _state(p.popen.pid) in ("T", "t"):
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
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
        for p in self.procs:
            p.popen.wait()
        self.procs = []

    def close(self, grace: float = 1.0) -> None:
        """Stop every worker (see `stop`); remove their logs unless one of them died."""
        self.stop(grace)
        if not self._keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def _state(pid: int) -> str:
    """A process's state letter from /proc (R running, S sleeping, T stopped...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
