"""`nbtasks worker`: a machine lends its processes to the jobs that callers run.

It looks for runs under way (a caller holds the job's owner key), and starts worker
processes for them, the same ``python -m nbtasks.worker`` a caller starts, in remote
mode: they say in Redis that they live (the caller cannot see another machine's
processes, so their items go back once that lapses), and SIGTERM makes them put their
unfinished items back. A worker process leaves when its run ends; this loop then looks
for the next one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass

from .. import blas
from ..exits import WORKER_REFUSED
from ..store import Store, safe_url

LOOK_EVERY = 0.5  # seconds between looks for runs that need workers
STOP_GRACE = 30.0  # seconds worker processes get to put their items back on SIGTERM


@dataclass
class _Child:
    job: str
    code: str
    wid: str
    popen: subprocess.Popen[bytes]


class Service:
    def __init__(
        self, store: Store, processes: int, concurrency: int, job: str | None = None, heartbeat: float = 6.0
    ) -> None:
        self.store, self.processes, self.concurrency = store, processes, concurrency
        self.job, self.heartbeat = job, heartbeat
        self.children: list[_Child] = []
        self.refused: set[tuple[str, str]] = set()  # (job, code digest) this machine cannot run
        self.stop = threading.Event()
        self.python = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.host = socket.gethostname()

    def serve(self) -> int:
        """Lend processes until SIGTERM or Ctrl-C; then every worker puts its unfinished
        items back before this returns."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        which = f"job '{self.job}'" if self.job else "any job"
        self._say(f"serving {which} from {safe_url(self.store.url)} with {self.processes} x {self.concurrency}")
        while not self.stop.is_set():
            self._reap()
            while len(self.children) < self.processes and (run := self._next_run()):
                self._start(*run)
            self.stop.wait(LOOK_EVERY)
        self._shut_down()
        return 0

    def _next_run(self) -> tuple[str, str, str, str] | None:
        """The run with the most waiting items that this machine can take: job, token,
        code, backend."""
        best: tuple[int, str, str, str, str] | None = None
        mine = {c.job for c in self.children}
        for name, token, record, waiting in self.store.runs():
            if (self.job and name != self.job) or not record.ready or waiting == 0:
                continue
            code = record.code
            if (name, code) in self.refused:
                continue
            if record.python not in (None, self.python):
                self._refuse(
                    name,
                    code,
                    f"it was stored by Python {record.python} and this worker runs Python "
                    f"{self.python}; start `nbtasks worker` with Python {record.python}.",
                )
                continue
            # Spread over runs: a job this machine already serves counts for less.
            score = waiting // (2 if name in mine else 1)
            if best is None or score > best[0]:
                best = (score, name, token, code, record.policy.backend)
        return best[1:] if best else None

    def _refuse(self, job: str, code: str, why: str) -> None:
        self.refused.add((job, code))
        self.store.refuse(job, f"{self.host} (Python {self.python})", why)
        self._say(f"refused job '{job}': {why} Its items are left to other workers.")

    def _start(self, job: str, token: str, code: str, backend: str) -> None:
        wid = f"{self.host}:{uuid.uuid4().hex[:8]}"  # never like a caller's own (token-n)
        cmd = [sys.executable, "-m", "nbtasks.worker", "--job", job, "--token", token, "--wid", wid]
        cmd += ["--concurrency", str(self.concurrency), "--heartbeat", str(self.heartbeat), "--backend", backend]
        env = {**os.environ, **blas.limits(os.environ, self.processes)}  # BLAS threads: see blas
        env |= {"NBTASKS_REDIS_URL": self.store.url, "NBTASKS_SYS_PATH": os.getcwd()}
        # Its own session: Ctrl-C here reaches this loop, which stops the workers in order.
        popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        if job not in {c.job for c in self.children}:
            self._say(f"joined job '{job}'")
        self.children.append(_Child(job, code, wid, popen))

    def _reap(self) -> None:
        for child in [c for c in self.children if c.popen.poll() is not None]:
            self.children.remove(child)
            code = child.popen.returncode
            if code == WORKER_REFUSED:
                self.refused.add((child.job, child.code))  # it said why
            elif code != 0:
                # It died (a crash, the OOM killer): its items go back at once rather
                # than when its heartbeat lapses.
                self.store.requeue(child.job, child.wid)
                self._say(f"a worker process of job '{child.job}' died (exit code {code}); its items went back")

    def _shut_down(self) -> None:
        self._say("stopping: unfinished items go back to their jobs")
        for child in self.children:
            if child.popen.poll() is None:
                child.popen.terminate()
        for child in self.children:
            try:
                child.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
                self.store.requeue(child.job, child.wid)
        self.children = []

    def _say(self, message: str) -> None:
        print(f"nbtasks worker: {message}", flush=True)
