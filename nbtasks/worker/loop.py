"""One run of a job in a worker process: items claimed from the job's queue, run by a
backend (`nbtasks.backends`), their outcomes recorded in batches. The loop uses only
`threading`, `queue` and `time`; with the eventlet backend the standard library was
patched first (see `__main__`), so this same loop runs on green threads."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from .. import backends, codec, output
from ..backends import Backend, Task
from ..errors import BlobsUnavailable, ConnectionLost
from ..exits import WORKER_BROKEN, WORKER_CANNOT_RUN, WORKER_DONE, WORKER_REFUSED
from ..policy import RunPolicy
from ..pool.beacon import Beacon
from ..pool.warm import Control
from ..store import Outcome, Store
from .gate import Gate, backed_off
from .load import CannotRun, load

T = TypeVar("T")


class Worker:
    """One process's share of a run: items claimed from the job's queue, run by a
    backend, their outcomes recorded in batches.

    Helper threads (the recorder, the watchers) never end the process: they ask to
    `leave`, and the loop winds down (records what finished) and returns, with the exit
    code in `exit_code`; the process has one way out (see `__main__`)."""

    CLAIM_MAX = 1000  # items per claim; also bounds a Lua call's argument count
    AHEAD, AHEAD_TIME = 8, 0.02  # short items claimed beyond the free slots: at least 8, about 20 ms of them
    SHORT = 0.05  # seconds: items that take less, on average, are short
    GATHER = 0.005  # seconds the recorder waits for more outcomes of short items
    WATCH_INTERVAL = 0.25  # seconds between checks that the caller still owns the job
    OUTAGE_LIMIT = 300.0  # seconds a worker waits for Redis to come back
    START_WAIT = 60.0  # seconds a late warm-capable worker waits for the caller's word
    WORD_WAIT = 10.0  # seconds a warm-capable worker waits for the caller's word on how a run ended
    NOTICE = 0.1  # seconds at most before the loop notices it was asked to leave

    def __init__(
        self,
        store: Store,
        job: str,
        token: str,
        wid: str,
        concurrency: int,
        beacon: Beacon | None,
        control: Control | None = None,
        heartbeat: float | None = None,
        backend: Backend | None = None,
        caller: int | None = None,
    ) -> None:
        self.store, self.job, self.token, self.wid = store, job, token, wid
        self.beacon, self.control, self.heartbeat = beacon, control, heartbeat
        self.caller = caller  # the pid of the process that started this one, if it looks after it
        self.backend = backend or backends.load("eventlet")
        self.stopping = False  # SIGTERM: claim no more
        self.over = threading.Event()  # the caller said the run is complete
        self.leaving = threading.Event()  # asked to leave (see leave)
        self.exit_code: int | None = None  # set by the first `leave`
        self._requeue = False
        self.in_flight = 0  # items handed to the backend and not ended
        self.counting = self.backend.lock()  # backends end items from their own threads
        self.slots = self.backend.semaphore(concurrency)
        self.began: dict[int, float] = {}  # item -> when it began
        self.item_time = float("inf")  # moving average of items' durations (unknown yet)
        self.outcomes = self.backend.queue()  # Outcome, or None: the run is over
        self.recording = False
        self.policy = RunPolicy()
        self.retry_on: tuple[type[BaseException], ...] = (Exception,)
        self.gate = Gate(store, job, wid, self._retrying, self.over)  # claims (under per-key limits, if any)
        self.collector = output.Collector()  # (main sets the one that stdout and logging feed)
        self.sending = threading.Lock()  # output goes out in the order it was written

    def run(self) -> bool:
        """Work until the run is over; whether this process may take another run (the
        caller said the run is complete and nothing is left running here). False when it
        must leave: `exit_code` says how."""
        helpers = [self._helper(self._watch_control)] if self.control is not None else []
        if self._await_run():
            self._work(helpers)
        if self.leaving.is_set():
            return False  # (helpers are not joined: one may wait on the caller's socket)
        for helper in helpers:
            helper.join()
        self.backend.stop()
        return not self.in_flight and self.outcomes.empty()

    def leave(self, code: int = WORKER_DONE, requeue: bool = False) -> None:
        """Ask the loop to stop claiming, record what has finished and return; with
        `requeue`, unfinished claims go back now (else at the next run). From any thread;
        the first call sets the exit code."""
        if self.exit_code is None:
            self.exit_code, self._requeue = code, requeue
        self._requeue = self._requeue or requeue
        self.leaving.set()

    def _work(self, helpers: list[threading.Thread]) -> None:
        func = self._load_function()
        if func is None:
            return  # it cannot run here, and said why (see _fatal)
        self.backend.start(func, self.policy.timeout, self._begin, self._end)
        helpers += [self._helper(self._record_loop), self._helper(self._watch_owner), self._helper(self._output_loop)]
        if self.heartbeat is not None:
            # On another machine the caller cannot see this process: say it lives, in
            # Redis, before the first claim (an item claimed without it would go back).
            self.store.alive(self.job, self.wid, self.heartbeat)
            helpers.append(self._helper(self._say_alive))
            signal.signal(signal.SIGTERM, lambda *_: self.backend.soon(self._terminate))
        if self.beacon is not None:
            self.backend.watch(self.beacon)
            helpers.append(self._helper(self._tick))
        try:
            self._claim_loop()
        except ConnectionLost:
            if not self.leaving.is_set():
                raise  # Redis stayed away past OUTAGE_LIMIT
        if self.control is not None:
            # The caller always says how the run ended: "end" (complete, sent before the
            # owner key goes), "stop", or end of file; the watcher acts on it.
            self._pause(self.WORD_WAIT)
        if not self.over.is_set():
            self.leave()
        if self.leaving.is_set():
            self._wind_down()
            return
        # Helpers are stopped by their own checks, never killed: a green thread killed
        # inside a Redis call would leave half a reply on the shared connection.
        self.outcomes.put(None)

    def _pause(self, seconds: float) -> None:
        """Wait up to `seconds` for the run to end or for a request to leave."""
        deadline = time.monotonic() + seconds
        while not self.over.is_set() and not self.leaving.is_set() and time.monotonic() < deadline:
            self.leaving.wait(min(self.NOTICE, max(0.0, deadline - time.monotonic())))

    def _helper(self, loop: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._guard, args=(loop,), daemon=True)
        thread.start()
        return thread

    def _await_run(self) -> bool:
        """Whether the run is still ours to work on (the owner key holds our token). A
        warm-capable worker that started after its run was complete waits for the
        caller's "end" and returns False; any other worker leaves at once."""
        deadline = time.monotonic() + self.START_WAIT
        while self._retrying(self.store.owner, self.job) != self.token:
            if self.control is None or time.monotonic() > deadline:
                self.leave()  # the run is over, or someone else's now
                return False
            if self.over.wait(0.01):
                return False
        return True

    def _load_function(self) -> Callable[[Any], Any] | None:
        """The job's function, with its policy and logging taken on; None when it cannot
        run here (said in Redis: see `_fatal`)."""
        try:
            loaded = load(self.store, self.job)
        except CannotRun as exc:
            self._fatal(str(exc))
            return None
        self.policy, self.retry_on = loaded.policy, loaded.retry_on
        self.gate.limit(loaded.key, loaded.policy)
        output.apply_logging(loaded.logging)
        return loaded.func

    def _fatal(self, message: str) -> None:
        """Say in Redis why the job cannot run here, and leave."""
        if self.heartbeat is not None:
            # A worker on another machine refuses the job and leaves its items to others.
            who = f"{socket.gethostname()} (Python {sys.version_info.major}.{sys.version_info.minor})"
            self.store.refuse(self.job, who, message)
            print(f"nbtasks worker: refused job '{self.job}': {message} Its items are left to other workers.")
            self.leave(WORKER_REFUSED)
        else:
            self.store.set_fatal(self.job, f"A worker of job '{self.job}' stopped: {message}")
            self.leave(WORKER_CANNOT_RUN)

    def _say_alive(self) -> None:
        assert self.heartbeat is not None
        while not self.over.wait(self.heartbeat / 3):
            self._retrying(self.store.alive, self.job, self.wid, self.heartbeat)

    def _terminate(self) -> None:
        """SIGTERM: claim no more, record what finished, put the rest back, leave."""
        self.stopping = True
        self.leave(requeue=True)

    def _claim_loop(self) -> None:
        idle = 0.01
        rate = self.policy.rate
        waiting: deque[Task] = deque()  # claimed, not started (see _wanted)
        while not self.over.is_set() and not self.stopping and not self.leaving.is_set():
            free = self._take_slots()
            if free and rate:
                free = self._turns(free, rate)
            if not free:
                continue  # (every slot busy: look again whether to leave)
            if waiting and self.item_time > self.SHORT:
                # Items turned long: those claimed ahead go back, for idle workers to take.
                self._retrying(self.store.unclaim, self.job, self.wid, [t.index for t in waiting])
                waiting.clear()
            started, look = self._start(waiting, free), idle
            want = self._wanted(free - started, len(waiting), bool(rate or self.gate.key))
            if want > 0:
                # (On green threads the items just started run while this waits.)
                claimed = self.gate.claim(self.token, want, self.outcomes.put)
                if claimed is None:  # the caller let go of the job
                    return
                tasks, look = claimed
                waiting.extend(tasks)
                started += self._start(waiting, free - started)
            for _ in range(free - started):
                self.slots.release()
            if not started:
                self.gate.pause(min(idle, look))
                idle = min(idle * 2, 0.2)
                continue
            idle = 0.01

    def _take_slots(self) -> int:
        """The free slots, taken: at least one (waiting up to NOTICE for it), or 0."""
        if not self.slots.acquire(timeout=self.NOTICE):
            return 0
        free = 1
        while free < self.CLAIM_MAX and self.slots.acquire(blocking=False):
            free += 1
        return free

    def _wanted(self, free: int, waiting: int, rate: bool) -> int:
        """How many items to claim now: short ones, more than the free slots (each would pay a
        round trip); not long ones, which one process would hoard while others idle (those
        claimed ahead go back once items turn long), nor under limits (their turns and
        slots are taken as items are claimed)."""
        if rate or self.item_time > self.SHORT:
            return free
        ahead = int(self.AHEAD_TIME / max(self.item_time, 1e-6))  # (inf before the first ends: 0)
        ahead = min(max(ahead, self.AHEAD), self.CLAIM_MAX)
        if free == 0 and waiting > ahead // 2:
            return 0  # enough waits here: claim when it runs low
        return min(free + ahead - waiting, self.CLAIM_MAX)

    def _start(self, waiting: deque[Task], free: int) -> int:
        """Hand up to `free` waiting items to the backend; how many."""
        tasks = [waiting.popleft() for _ in range(min(free, len(waiting)))]
        if tasks:
            with self.counting:
                self.in_flight += len(tasks)
            self.backend.submit(tasks)
        return len(tasks)

    def _turns(self, want: int, rate: float) -> int:
        """How many of `want` items may start now under the job's shared rate limit;
        with none, wait for the next turn (the slots go back)."""
        granted, wait = self._retrying(self.store.take_turns, self.job, want, rate)
        for _ in range(want - granted):
            self.slots.release()
        if not granted:
            self.leaving.wait(wait)
        return granted

    def _begin(self, task: Task) -> Any:
        output.ITEM.set(task.index)  # in the task's own context: its lines carry its index
        self.began[task.index] = time.monotonic()
        return self.gate.load(task.index, task.payload)

    def _end(self, task: Task, value: Any, error: BaseException | None) -> None:
        """A backend ended an item (from any thread): queue its outcome, free its slot."""
        outcome, retry = None, True
        said = self.collector.finish(task.index)  # what this attempt printed: a failure carries it
        if (began := self.began.pop(task.index, None)) is not None:
            took = time.monotonic() - began
            self.item_time = took if self.item_time == float("inf") else 0.8 * self.item_time + 0.2 * took
        if error is None:
            try:
                outcome = Outcome(task.index, "1", codec.dump_result(value))
            except Exception as exc:  # ResultNotPicklable: the task's failure, whose message says it all
                error, retry = exc, False  # running it again would return the same kind of value
        if error is not None and not (outcome := backed_off(task.index, error)):
            kind = "r" if retry and isinstance(error, self.retry_on) else "0"
            outcome = Outcome(task.index, kind, codec.failure_payload(error, said), codec.failure_line(error))
        with self.counting:
            self.in_flight -= 1
        self.outcomes.put(outcome)
        self.slots.release()

    def _tick(self) -> None:
        while self.beacon is not None and not self.over.is_set():
            self.beacon.tick()
            self.over.wait(0.1)

    def _record_loop(self) -> None:
        # Whatever finished while the last round trip was in flight goes in the next one.
        stop = False
        while not stop:
            batch = [self.outcomes.get()]
            self.recording = True
            if self.item_time < self.SHORT and self.outcomes.empty():
                time.sleep(self.GATHER)  # short items: a few more end meanwhile, one round trip for all
            while len(batch) < self.CLAIM_MAX and not self.outcomes.empty():
                batch.append(self.outcomes.get_nowait())
            stop = None in batch  # the run is over (see run)
            batch = [outcome for outcome in batch if outcome is not None]
            self._send_output()  # an item's lines are stored before its result
            if batch:
                try:
                    policy = self.policy
                    self._retrying(self.store.record, self.job, self.wid, batch, policy.retries, policy.retry_delay)
                except BlobsUnavailable as exc:  # every worker would fail the same way: the caller says why
                    self._fatal(str(exc))
                    return
                self.gate.recorded.set()
            self.recording = False

    def _output_loop(self) -> None:
        """Send what tasks write as they write it, not only when they end."""
        while not self.over.wait(0.2):
            self._send_output()
        self._send_output()

    def _send_output(self) -> None:
        with self.sending:
            while lines := self.collector.take():
                self._retrying(self.store.append_output, self.job, self.wid, lines)

    def _watch_owner(self) -> None:
        while self._retrying(self.store.owner, self.job) == self.token:
            if self.over.wait(self.WATCH_INTERVAL) or self.leaving.is_set():
                return
        if not self.over.is_set():
            self.leave()

    def _watch_control(self) -> None:
        """The caller's word: "end" (the run is complete), "stop" (interrupted, cancelled,
        taken over) or end of file (it is gone)."""
        assert self.control is not None
        line = self.control.line(None)
        if line == b"end" and not self.in_flight and not self.recording and self.outcomes.empty():
            self.over.set()
            return
        self.leave()  # the caller is gone, or tasks still run: record what finished, then leave

    def _retrying(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`, waiting out a Redis outage (a restart, a failover): results
        finished meanwhile stay in memory and are recorded once it is back."""
        pause, waited = 0.05, 0.0
        while True:
            try:
                return call(*args)
            except ConnectionLost:
                if self.caller is not None and os.getppid() != self.caller:
                    self.leave()  # Redis is away and so is the caller: nobody would take our results
                if waited > self.OUTAGE_LIMIT or self.leaving.is_set():
                    raise
                time.sleep(pause)
                waited += pause
                pause = min(pause * 2, 1.0)

    def _guard(self, loop: Callable[[], None]) -> None:
        # A helper thread that failed would leave the process looking alive while it
        # records nothing: leave loudly instead, so the caller requeues and replaces us.
        try:
            loop()
        except ConnectionLost:
            if not self.leaving.is_set():  # (else: it was leaving anyway, Redis or not)
                traceback.print_exc()
                self.leave(WORKER_BROKEN)
        except Exception:
            traceback.print_exc()
            self.leave(WORKER_BROKEN)

    def _wind_down(self) -> None:
        """Before leaving: record what has finished (the recorder gets a second), send
        what tasks wrote last, and with a requeue put unfinished claims back now."""
        deadline = time.monotonic() + 1.0
        while (not self.outcomes.empty() or self.recording) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            self.store.append_output(self.job, self.wid, self.collector.take(output.PENDING_MAX))
            if self._requeue:
                self.store.requeue(self.job, self.wid)
        except ConnectionLost:
            pass  # Redis is away: the claims go back at the next run, or when the heartbeat lapses
