"""Looks after the worker processes of a run, from the caller (which runs no user code):
replaces the dead, the stuck and the frozen, and puts their items back.

Liveness is the process itself (and its beacon), never a heartbeat written by the
worker: a green-thread heartbeat starves while a task blocks the loop, and a false
"dead" would run a live task twice.
"""

from __future__ import annotations

import signal

from .. import codec
from ..config import Settings
from ..define import JobSpec
from ..errors import WorkerError
from ..store import Outcome, Store
from .processes import WorkerPool

DEATHS_LIMIT = 3  # times a worker may die running an item before it is recorded as failed
STUCK_GRACE = 2.0  # seconds past its timeout before a task that never yields is stopped
REMOTE_EVERY = 10  # checks (polls) between looks at the heartbeats of other machines' workers


class Supervisor:
    def __init__(self, store: Store, spec: JobSpec, cfg: Settings, pool: WorkerPool) -> None:
        self.store, self.spec, self.cfg, self.pool = store, spec, cfg, pool
        self._killed: set[str] = set()  # workers we stopped for a stuck task
        self._frozen: set[str] = set()  # workers stopped (SIGSTOP) whose items went back
        self._idle_deaths = 0  # workers that died holding no item since the last progress
        self._done = 0
        self._checks = 0

    def check(self, done: int) -> None:
        """One round: replace stuck, frozen and dead workers."""
        if done > self._done:  # progress: earlier deaths were not a worker that cannot start
            self._done, self._idle_deaths = done, 0
        if self.spec.policy.timeout is not None:
            self._replace_stuck()
        self._replace_frozen()
        self._replace_dead(done)
        self._checks += 1
        if self._checks % REMOTE_EVERY == 0:
            self._drop_lost_remote()

    def _drop_lost_remote(self) -> None:
        """Workers of `nbtasks worker` on other machines whose heartbeat lapsed (a cut
        link, a dead host): their items go back to the queue."""
        ours = f"{self.pool.token[:8]}-"
        self.store.lost_workers(self.spec.name, local=lambda wid: wid.startswith(ours))

    def top_up(self) -> None:
        """Start workers until the pool has its size again (after an outage)."""
        while len([p for p in self.pool.procs if p.wid not in self._frozen]) < self.cfg.processes:
            self.pool.spawn()

    def _replace_stuck(self) -> None:
        """A task past its timeout that never yields (CPU, C code) blocks its whole
        worker: record the attempt as timed out and replace the process."""
        policy = self.spec.policy
        timeout = policy.timeout
        assert timeout is not None
        for wid, index in self.pool.blocked(timeout + STUCK_GRACE):
            exc = TimeoutError(f"timed out after {timeout} s (stuck in CPU or C code: its worker was replaced)")
            kind = "r" if policy.retry_timeouts else "0"
            outcome = Outcome(index, kind, codec.failure_payload(exc), codec.failure_line(exc))
            self.store.record(self.spec.name, wid, [outcome], policy.retries, policy.retry_delay)
            self.pool.kill(wid)
            self._killed.add(wid)

    def _replace_frozen(self) -> None:
        """A worker stopped (SIGSTOP, a debugger) longer than the heartbeat's lifetime
        gives its items back; if it wakes, what it records late is idempotent."""
        for wid in self.pool.frozen(self.cfg.heartbeat_ttl):
            if wid not in self._frozen:
                self._frozen.add(wid)
                self.store.requeue(self.spec.name, wid)
                self.pool.spawn()

    def _replace_dead(self, done: int) -> None:
        """Replace workers that died and put their items back in the queue. The item a
        worker was executing when it died (its beacon says which) is blamed: an input
        that kills its worker (a segfault, os._exit, the OOM killer) is recorded as
        failed after DEATHS_LIMIT deaths, so it cannot stall the job."""
        name = self.spec.name
        for wid, running, code, tail in self.pool.dead():
            if fatal := self.store.fatal(name):
                raise WorkerError(f"{fatal} Recorded results are kept.")
            if wid in self._killed or wid in self._frozen:
                self.store.requeue(name, wid)
                if wid in self._frozen:
                    continue  # already replaced
            else:
                how = _how(code)
                message = f"its worker process died while running it ({how}), {DEATHS_LIMIT} times"
                payload = codec.failure_record("WorkerDied", message, tail)
                if self.store.bury(name, wid, running, DEATHS_LIMIT, payload, f"WorkerDied: {how}") == 0:
                    self._idle_deaths += 1
                if self._idle_deaths > 3 + 2 * self.cfg.processes:
                    raise WorkerError(
                        f"Worker processes of job '{name}' keep dying before they run anything (the last "
                        f"with {how}); {done} results are kept. Worker logs: {self.pool.log_dir}"
                        + (f"\n\nThe last one ended with:\n{tail}" if tail else "")
                    )
            self.pool.spawn()


def _how(code: int) -> str:
    """How a process ended, from its exit code."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"
