"""One run of a job: take it over, start workers (or run inline), follow, stop.

A `Run` is begun in the caller's thread (so its progress bar shows in the calling cell),
then followed there (`pmap`) or in a background thread (`Job`).
"""

from __future__ import annotations

import signal
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from . import codec
from .config import Settings
from .errors import JobCancelled, WorkerError
from .job import JobSpec
from .pool import WorkerPool
from .progress import Progress
from .store import Counts, Outcome, Store

INLINE_TTL = 24 * 3600.0  # an inline run has no workers waiting on its heartbeat
INLINE_BATCH = 100
DEATHS_LIMIT = 3  # times a worker may die running an item before it is recorded as failed
STUCK_GRACE = 2.0  # seconds past its timeout before a task that never yields is stopped


class _Stop(Exception):
    """Raised inside the follow loop when the run is asked to stop."""


class Run:
    """Every item of a job that has no result, run once more."""

    def __init__(
        self, store: Store, spec: JobSpec, cfg: Settings, func: Callable[[Any], Any] | None, progress: bool = True
    ) -> None:
        self.store, self.spec, self.cfg, self.func = store, spec, cfg, func
        self.token = uuid.uuid4().hex
        self.inline = cfg.processes == 0
        self.ttl = INLINE_TTL if self.inline else cfg.heartbeat_ttl
        self.counts = store.begin_run(spec.name, self.token, spec.total, self.ttl)
        self.bar = Progress(spec.name, self.counts, progress)
        self._killed: set[str] = set()  # workers we stopped for a stuck task
        self._idle_deaths = 0  # workers that died holding no item
        self.pool = None
        if not self.inline:
            self.pool = WorkerPool(store.url, spec.name, self.token, cfg.processes, cfg.concurrency)
            self.pool.start()

    def follow(self, stop: threading.Event | None = None) -> Counts:
        """Follow the run until every item is settled; return the final counters.

        On KeyboardInterrupt (or `stop`, or a cancel from elsewhere) the workers stop,
        every recorded result stays, and one line says how to resume; then the interrupt
        propagates, or JobCancelled is raised.
        """
        try:
            if self.pool is None:
                assert self.func is not None, "an inline run needs the function"
                return self._run_inline(self.func)
            return self._follow(self.pool, stop or threading.Event())
        except (KeyboardInterrupt, _Stop) as exc:
            self._stop()
            self.counts = self.store.poll(self.spec.name, self.token, self.spec.total, self.ttl)
            self.bar.update(self.counts)
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "cancelled"
            message = (
                f"nbtasks: {what}; {self.counts.done} of {self.spec.total} results of job '{self.spec.name}' "
                "are stored. Run the same call again to resume."
            )
            print(message, file=sys.stderr)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise JobCancelled(message.removeprefix("nbtasks: ")) from None
        finally:
            self._stop()
            self.bar.close()

    def _stop(self) -> None:
        try:
            self.store.end_run(self.spec.name, self.token)  # workers see the owner gone and leave
        finally:
            if self.pool is not None:
                self.pool.close()  # even when Redis is gone: no worker outlives the call

    def _follow(self, pool: WorkerPool, stop: threading.Event) -> Counts:
        """Poll counters (refreshing the heartbeat) until every item is settled, and
        look after the workers: replace the dead and the stuck."""
        counts = self.counts
        while counts.settled < self.spec.total:
            if stop.wait(self.cfg.poll_interval):
                raise _Stop
            counts = self.counts = self.store.poll(
                self.spec.name, self.token, self.spec.total, self.ttl, len(pool.procs)
            )
            self.bar.update(counts)
            self._check_owner(pool, counts)
            if self.spec.policy.get("timeout"):
                self._replace_stuck(pool)
            self._replace_dead(pool)
        return counts

    def _check_owner(self, pool: WorkerPool, counts: Counts) -> None:
        if counts.owner == "cancel":
            raise _Stop
        if counts.owner == "none":
            # Our heartbeat lapsed (the machine slept?): take the job back; live workers
            # go on, and items of those that left are queued again.
            self.store.begin_run(self.spec.name, self.token, self.spec.total, self.ttl)
            if not pool.procs:
                pool.start()
        elif counts.owner == "other":
            pool.stop()  # another caller took the job over; follow its progress

    def _replace_stuck(self, pool: WorkerPool) -> None:
        """A task past its timeout that never yields (CPU, C code) blocks its whole
        worker: record the attempt as timed out and replace the process."""
        policy = self.spec.policy
        timeout = policy["timeout"]
        for wid, index in pool.blocked(timeout + STUCK_GRACE):
            exc = TimeoutError(f"timed out after {timeout} s (stuck in CPU or C code: its worker was replaced)")
            kind = "r" if policy.get("retry_timeouts") else "0"
            outcome = Outcome(index, kind, codec.failure_payload(exc), codec.failure_line(exc))
            self.store.record(self.spec.name, wid, [outcome], policy.get("retries", 0), policy.get("retry_delay", 0))
            pool.kill(wid)
            self._killed.add(wid)

    def _replace_dead(self, pool: WorkerPool) -> None:
        """Replace workers that died and put their items back in the queue. The item a
        worker was executing when it died (its beacon says which) is blamed: an input
        that kills its worker (a segfault, os._exit, the OOM killer) is recorded as
        failed after DEATHS_LIMIT deaths, so it cannot stall the job."""
        name = self.spec.name
        for wid, running, code, tail in pool.dead():
            if fatal := self.store.fatal(name):
                raise WorkerError(f"{fatal} Recorded results are kept.")
            if wid in self._killed:
                self.store.requeue(name, wid)
            else:
                how = _how(code)
                message = f"its worker process died while running it ({how}), {DEATHS_LIMIT} times"
                payload = codec.failure_record("WorkerDied", message, tail)
                if self.store.bury(name, wid, running, DEATHS_LIMIT, payload, f"WorkerDied: {how}") == 0:
                    self._idle_deaths += 1
                if self._idle_deaths > 3 + 2 * self.cfg.processes:
                    raise WorkerError(
                        f"Worker processes of job '{name}' keep dying before they run anything (the last "
                        f"with {how}); {self.counts.done} results are kept. Worker logs: {pool.log_dir}"
                        + (f"\n\nThe last one ended with:\n{tail}" if tail else "")
                    )
            pool.spawn()

    def _run_inline(self, func: Callable[[Any], Any]) -> Counts:
        """Run in the caller with the same store calls. The first task that raises is
        recorded as failed and its exception propagates unchanged, so ``%debug`` lands in it."""
        name, total = self.spec.name, self.spec.total
        while items := self.store.claim(name, self.token, "inline", INLINE_BATCH):
            outcomes: list[Outcome] = []
            try:
                for index, payload in items:
                    try:
                        value = func(codec.load(payload))
                    except Exception as exc:
                        outcomes.append(Outcome(index, "0", codec.failure_payload(exc), codec.failure_line(exc)))
                        raise
                    outcomes.append(Outcome(index, "1", codec.dump(value)))
            finally:
                self.store.record(name, "inline", outcomes)
                self.counts = self.store.poll(name, self.token, total, self.ttl)
                self.bar.update(self.counts)
        return self.counts


def run(store: Store, spec: JobSpec, cfg: Settings, func: Callable[[Any], Any] | None, progress: bool = True) -> Counts:
    """Begin a run and follow it here."""
    return Run(store, spec, cfg, func, progress).follow()


def _how(code: int) -> str:
    """How a process ended, from its exit code."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"
