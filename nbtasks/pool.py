"""Starts, watches and stops the worker processes of one run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class _Proc:
    wid: str
    popen: subprocess.Popen[bytes]


class WorkerPool:
    """`processes` fresh interpreters running ``python -m nbtasks.worker``.

    Fresh interpreters, not forks of the caller: a forked Jupyter kernel would carry its
    threads and sockets, and eventlet must patch the standard library before anything
    else is imported. Popen's fork is followed at once by exec, so it is safe inside a
    kernel. Each worker gets its own session: Jupyter's interrupt signals the kernel's
    whole process group, and the caller, not the signal, decides what workers do.
    """

    def __init__(self, url: str, job: str, token: str, processes: int, concurrency: int) -> None:
        self.url, self.job, self.token = url, job, token
        self.processes, self.concurrency = processes, concurrency
        self.procs: list[_Proc] = []
        self._started = 0

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
        cmd += ["--concurrency", str(self.concurrency)]
        popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(_Proc(wid, popen))

    def dead(self) -> list[tuple[str, int]]:
        """Workers that exited since the last call, with their exit codes."""
        gone = [(p.wid, code) for p in self.procs if (code := p.popen.poll()) is not None]
        self.procs = [p for p in self.procs if p.popen.returncode is None]
        return gone

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
