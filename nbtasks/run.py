"""One run of a job: take it over, start workers (or run inline), follow, stop.

A `Run` is begun in the caller's thread (so its progress bar shows in the calling cell),
then followed there (`pmap`) or in a background thread (`Job`).
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import codec, interrupt, output
from .backends.aio import LoopThread
from .config import Settings
from .define import JobSpec
from .errors import ConnectionLost, JobCancelled, JobLost, PayloadRejected
from .limits import BACKOFF_FIRST, Backoff
from .pool.processes import WorkerPool
from .pool.supervisor import Supervisor
from .progress import Progress
from .store import Counts, JobRecord, Outcome, Store, safe_url

INLINE_TTL = 24 * 3600.0  # an inline run has no workers waiting on its heartbeat
INLINE_BATCH = 100


_loops: list[LoopThread] = []


def _inline_loop() -> LoopThread:
    """The event loop of async def items run here (processes=0): one for the process, as
    a worker has, so that a client a function makes on first use and keeps in a global
    (an aiohttp.ClientSession, an httpx.AsyncClient) serves every item of every call."""
    if not _loops:
        _loops.append(LoopThread())
        atexit.register(_loops[0].close)
    return _loops[0]


def _epoch(record: JobRecord | None) -> str | None:
    return record.epoch if record is not None else None


class _Stop(Exception):
    """Raised inside the follow loop when the run is asked to stop."""


class Run:
    """Every item of a job that has no result, run once more."""

    def __init__(
        self,
        store: Store,
        spec: JobSpec,
        cfg: Settings,
        func: Callable[[Any], Any] | None,
        progress: bool = True,
        resume_hint: str = "Run the same call again to resume.",
        echo: Callable[[str, bool], None] | None = None,
        background: bool = False,
    ) -> None:
        self.store, self.spec, self.cfg, self.func = store, spec, cfg, func
        self.resume_hint = resume_hint
        self.token = uuid.uuid4().hex
        self.inline = cfg.processes == 0
        self.ttl = INLINE_TTL if self.inline else cfg.heartbeat_ttl
        # Workers log as the caller does (level, format), from the first item on; what
        # they write is shown from here on (taken before any item is queued).
        store.note(spec.name, logging=json.dumps(output.logging_config()))
        cursor = store.output_cursor(spec.name)
        self.counts = store.begin_run(spec.name, self.token, spec.indices, self.ttl)
        self._epoch = _epoch(store.meta(spec.name))  # (before the bar: a failed start shows none)
        self.bar = Progress(spec.name, self.counts, progress, shared=background)
        self.echo = output.Echo(store, spec.name, echo or self.bar.write, cursor)
        self._outage_since: float | None = None
        self._polls = 0
        self._complete = False
        self._cancelled_for: str | None = None  # "reset": the job is being deleted
        self.pool = None
        if not self.inline:
            self.pool = WorkerPool(
                store.url, spec.name, self.token, cfg.processes, cfg.concurrency, cfg.warm, spec.policy.backend
            )
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
            with interrupt.held():
                message = self._stopped("interrupted" if isinstance(exc, KeyboardInterrupt) else "cancelled")
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise JobCancelled(message.removeprefix("nbtasks: ")) from None
        finally:
            with interrupt.held():
                self._stop()
                with contextlib.suppress(ConnectionLost):
                    self.echo.pump()  # the last lines: stored before the results that ended the run
                self.echo.close()
                self.bar.close()

    def _stopped(self, what: str) -> str:
        """Stop the workers, show the bar as stopped and print the one line that says
        what is kept and how to go on; return that line."""
        self._stop()
        try:
            self.counts = self.store.poll(self.spec.name, self.token, self.spec.total, self.ttl)
        except ConnectionLost:
            pass  # Redis is gone: report the last counts seen
        self.bar.update(self.counts)
        self.bar.stopped()
        message = (
            f"nbtasks: {what}; {self.counts.done} of {self.spec.total} results of job '{self.spec.name}' "
            f"are stored. {self.resume_hint}"
        )
        if self._cancelled_for == "reset":
            message = f"nbtasks: cancelled; job '{self.spec.name}' is being deleted (nbtasks.reset)."
        with contextlib.suppress(ConnectionLost):
            self.echo.pump()  # the tasks' last lines come before the one line
        self.bar.close()  # so that a terminal's bar line ends before the one line
        print(message, file=sys.stderr)
        return message

    def _stop(self) -> None:
        if self._complete and self.pool is not None:
            self.pool.keep_warm()  # told before the owner key goes, so they wait rather than leave
        try:
            self.store.end_run(self.spec.name, self.token)  # workers see the owner gone and leave
        except ConnectionLost:
            pass  # Redis is gone: the workers are killed below, and the owner key expires
        finally:
            if self.pool is not None:
                # Even when Redis is gone, no worker outlives the call. Once every item is
                # recorded there is nothing left for them to save: no need to wait.
                self.pool.close(grace=0.0 if self._complete else 1.0)

    def _follow(self, pool: WorkerPool, stop: threading.Event) -> Counts:
        """Poll counters (refreshing the heartbeat) and look after the workers until
        every item is settled, riding out a Redis outage (restart, failover)."""
        supervisor = Supervisor(self.store, self.spec, self.cfg, pool)
        pause = self.cfg.poll_interval
        while True:
            if stop.is_set():
                raise _Stop
            try:
                if self._outage_since is not None:
                    if stop.wait(pause):
                        raise _Stop
                    self._recover(supervisor)
                else:
                    self.store.wait_finished(self.spec.name, pause)  # a poll's pause, or less
                if self._step(pool, supervisor):
                    self._complete = True
                    return self.counts
                pause = self.cfg.poll_interval
            except ConnectionLost as exc:
                pause = self._in_outage(exc, pause)

    def _step(self, pool: WorkerPool, supervisor: Supervisor) -> bool:
        """One poll; True once every item is settled (checked against the bitmap)."""
        name, total = self.spec.name, self.spec.total
        counts = self.store.poll(name, self.token, total, self.ttl, len(pool.procs))
        self._check_epoch(counts.epoch)
        self.counts = counts
        self.bar.update(counts)
        self.echo.pump()
        if counts.owner == "cancel":
            self._cancelled_for = self.store.cancel_reason(name)
            raise _Stop
        if counts.owner == "none":
            # Our heartbeat lapsed (the machine slept?): take the job back; live workers
            # go on, and items of those that left are queued again.
            self.store.begin_run(name, self.token, self.spec.indices, self.ttl, resume=True)
            supervisor.top_up()
        elif counts.owner == "other":
            pool.stop()  # another caller took the job over; follow its progress
        supervisor.check(counts.done)
        # The counters decide when to look; the bitmap decides. (Now and then it is
        # read anyway, so that no drift of the counters can stall a run.)
        self._polls += 1
        if counts.settled < total and self._polls % 20:
            return False
        if self.store.settled(name, self.spec.indices) >= total:
            if counts.settled < total:
                # Settled between the poll and this look: the bar ends on the final counts.
                self.counts = self.store.poll(name, self.token, total, self.ttl, len(pool.procs))
                self.bar.update(self.counts)
            return True
        if counts.settled < total or counts.owner != "us":
            return False  # (another caller's counters count its own list, not ours)
        # The counters say done but the bitmap disagrees (the server lost its last
        # second of writes): queue what is missing again rather than report holes.
        self.store.begin_run(name, self.token, self.spec.indices, self.ttl, resume=True)
        supervisor.top_up()
        return False

    def _in_outage(self, exc: ConnectionLost, pause: float) -> float:
        """Redis does not answer: say so on the bar, restart the embedded server if it
        is ours, and wait longer each time, up to the settings' outage_limit."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        self.bar.note("Redis unreachable, retrying")
        if now - self._outage_since > self.cfg.outage_limit:
            raise ConnectionLost(safe_url(self.store.url), exc.cause, lasted=self.cfg.outage_limit) from None
        if self.store.revive is not None:
            try:
                self.store.revive()
            except Exception:  # noqa: BLE001 (not started yet: the next round tries again)
                pass
        return min(pause * 2, 2.0)

    def _check_epoch(self, epoch: str | None) -> None:
        """The server must still hold this incarnation of the job, or nothing it says
        about the job can be trusted (it restarted empty, or the job was reset)."""
        if epoch != self._epoch:
            raise JobLost(
                f"Redis at {safe_url(self.store.url)} no longer holds job '{self.spec.name}' as this run "
                "stored it (restarted without its data, or reset). Run the same call again to start over."
            )

    def _recover(self, supervisor: Supervisor) -> None:
        """Redis is back: check it still holds the job, queue again whatever it lost or
        whatever dead workers held, and bring the pool back to size."""
        self._check_epoch(_epoch(self.store.meta(self.spec.name)))
        self.store.begin_run(self.spec.name, self.token, self.spec.indices, self.ttl, resume=True)
        supervisor.top_up()
        self._outage_since = None
        self.bar.note(None)

    def _run_inline(self, func: Callable[[Any], Any]) -> Counts:
        """Run in the caller with the same store calls. The first task that raises is
        recorded as failed and its exception propagates unchanged, so ``%debug`` lands in it.
        An async def function's items share one event loop (see `_inline_loop`)."""
        name, total = self.spec.name, self.spec.total
        while items := self.store.claim(name, self.token, "inline", INLINE_BATCH):
            outcomes: list[Outcome] = []
            try:
                for index, payload in items:
                    try:
                        if isinstance(payload, PayloadRejected):
                            raise payload  # never unpickled, never run
                        value = _call_inline(func, codec.load(payload))
                        data = codec.dump_result(value)
                    except Exception as exc:
                        outcomes.append(Outcome(index, "0", codec.failure_payload(exc), codec.failure_line(exc)))
                        raise
                    outcomes.append(Outcome(index, "1", data))
            finally:
                self.store.record(name, "inline", outcomes)
                self.counts = self.store.poll(name, self.token, total, self.ttl)
                self.bar.update(self.counts)
        return self.counts


def _call_inline(func: Callable[[Any], Any], arg: Any) -> Any:
    """`func(arg)` here; a task that asks to back off waits as asked and runs again."""
    while True:
        try:
            value = func(arg)
            return _inline_loop().run(value) if inspect.iscoroutine(value) else value  # (async def)
        except Backoff as exc:
            time.sleep(exc.seconds if exc.seconds is not None else BACKOFF_FIRST)
