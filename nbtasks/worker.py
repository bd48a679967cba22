"""The worker process: patch, load the function, claim, run, record.

Started as a fresh interpreter (``python -m nbtasks.worker``) by the caller, never forked
from it, and never imported by the caller: this is the only module that imports eventlet.
"""

from __future__ import annotations

import warnings

if __name__ == "__main__":
    # eventlet must patch the standard library before redis-py (or anything that opens
    # sockets) is imported; its deprecation notice is for library authors, not users.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import os

    # eventlet's own resolver imports dnspython, a third of a worker's start-up; the
    # system resolver in eventlet's thread pool (see _green_resolver) is as concurrent.
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    import eventlet

    eventlet.monkey_patch()

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn, TypeVar  # noqa: E402

import eventlet  # noqa: E402
import eventlet.event  # noqa: E402
import eventlet.queue  # noqa: E402
import eventlet.semaphore  # noqa: E402
import greenlet  # noqa: E402
from greenlet import GreenletExit  # noqa: E402

from . import codec  # noqa: E402
from .beacon import IDLE, Beacon  # noqa: E402
from .errors import PayloadRejected  # noqa: E402
from .exits import EXIT_REFUSED  # noqa: E402
from .standby import Assignment, Control, Modules  # noqa: E402
from .store import TRANSIENT, Outcome, Store  # noqa: E402
from .trust import Signer  # noqa: E402

T = TypeVar("T")


def _green_resolver() -> None:
    """Name lookups in eventlet's thread pool: the system resolver (with /etc/hosts and
    nsswitch) waits in a real thread while the other green threads go on."""
    if os.environ.get("EVENTLET_NO_GREENDNS") != "yes":
        return  # eventlet's own green resolver is in place
    import eventlet.green.socket
    from eventlet import tpool

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "getnameinfo"):
        lookup = functools.partial(tpool.execute, getattr(socket, name))
        setattr(socket, name, lookup)
        setattr(eventlet.green.socket, name, lookup)  # its create_connection looks here


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nbtasks.worker")
    parser.add_argument("--job", required=True)
    parser.add_argument("--token", required=True, help="the caller's run token")
    parser.add_argument("--wid", required=True, help="this worker's id")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--beacon", type=Path, help="shared memory the caller reads to spot stuck tasks")
    parser.add_argument("--control", type=int, help="file descriptor of the caller's socket (warm workers)")
    parser.add_argument("--warm", type=float, default=0.0, help="seconds to wait for another run")
    parser.add_argument(
        "--heartbeat", type=float, help="a worker of `nbtasks worker`: say it lives in Redis every so many seconds"
    )
    args = parser.parse_args(argv)
    # The first run comes with the command line; later ones (warm) over the control socket.
    assignment: Assignment | None = Assignment(
        args.job,
        args.token,
        args.wid,
        args.concurrency,
        str(args.beacon or ""),
        os.environ["NBTASKS_REDIS_URL"],
        os.environ.get("NBTASKS_SYS_PATH", "").split(os.pathsep),  # functions from the caller's modules
    )
    control = Control(args.control) if args.control is not None else None
    modules = Modules()
    stores: dict[str, Store] = {}
    while assignment is not None:
        assignment.apply()
        store = stores.get(assignment.url) or stores.setdefault(assignment.url, Store.connect(assignment.url))
        store.signer = Signer.from_environment()  # the caller's secret, as the assignment set it
        try:
            beacon = Beacon(Path(assignment.beacon)) if assignment.beacon else None
        except FileNotFoundError:
            beacon = None  # started so late that its run is already complete
        a, began = assignment, time.time()
        worker = Worker(store, a.job, a.token, a.wid, a.concurrency, beacon, control, args.heartbeat)
        reusable = worker.run()
        if beacon is not None:
            beacon.close()
        if not reusable or control is None:
            break
        modules.note(began)
        assignment = control.next_assignment(args.warm, stale=modules.changed)
    os._exit(0)


class Worker:
    """One process's share of a run: a green-thread pool fed from the job's queue."""

    CLAIM_MAX = 1000  # items per claim; also bounds a Lua call's argument count
    WATCH_INTERVAL = 0.25  # seconds between checks that the caller still owns the job
    OUTAGE_LIMIT = 300.0  # seconds a worker waits for Redis to come back
    SYNC_STREAK = 200  # items in a row that never yielded before batches run in one green thread

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
    ) -> None:
        self.store, self.job, self.token, self.wid = store, job, token, wid
        self.beacon, self.control, self.heartbeat = beacon, control, heartbeat
        self.stopping = False  # SIGTERM: claim no more
        self.over = eventlet.event.Event()  # the caller said the run is complete
        self.tasks: dict[greenlet.greenlet, int] = {}  # green thread -> the item it runs
        self.switches = 0  # green-thread switches seen by the trace
        self.streak = 0  # items in a row that ran without yielding
        self.slots = eventlet.semaphore.Semaphore(concurrency)
        self.outcomes: eventlet.queue.LightQueue = eventlet.queue.LightQueue()
        self.recording = False
        self.policy: dict[str, Any] = {}
        self.retry_on: tuple[type[BaseException], ...] = (Exception,)

    def run(self) -> bool:
        """Work until the run is over; whether this process may take another run (the
        caller said the run is complete and nothing is left running here)."""
        func = self._load_function()
        helpers = [eventlet.spawn(self._guard, self._record_loop), eventlet.spawn(self._guard, self._watch_owner)]
        if self.heartbeat is not None:
            # On another machine the caller cannot see this process: say it lives, in
            # Redis, before the first claim (an item claimed without it would go back).
            self.store.alive(self.job, self.wid, self.heartbeat)
            helpers.append(eventlet.spawn(self._guard, self._say_alive))
            signal.signal(signal.SIGTERM, lambda *_: eventlet.spawn_n(self._terminate))
        if self.beacon is not None:
            greenlet.settrace(self._trace)
            helpers.append(eventlet.spawn(self._guard, self._tick))
        if self.control is not None:
            helpers.append(eventlet.spawn(self._guard, self._watch_control))
        self._claim_loop(func)
        if self.control is not None:
            # A complete run's "end" is sent before the owner key goes: when the claims
            # stopped first, it is already in the socket, a loop turn away.
            self.over.wait(0.1)
        if not self.over.ready():
            self._exit()
        # Helpers are stopped by their own checks, never killed: a green thread killed
        # inside a Redis call would leave half a reply on the shared connection.
        self.outcomes.put(None)
        for helper in helpers:
            helper.wait()
        greenlet.settrace(None)
        return not self.tasks and self.outcomes.empty()

    def _load_function(self) -> Callable[[Any], Any]:
        meta = self.store.meta(self.job)
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        if meta.get("python") not in (None, here):
            self._fatal(f"the job was stored by Python {meta['python']} and this worker runs Python {here}.")
        try:
            payload = self.store.function(self.job)
        except PayloadRejected as exc:
            self._fatal(str(exc))
        if payload is None:
            self._fatal("the job has no stored function (was it reset?).")
        self.policy = json.loads(meta.get("policy", "{}"))
        try:
            func, self.retry_on = codec.load_function(payload)
        except Exception as exc:
            self._fatal(
                f"the function could not be loaded here: {type(exc).__name__}: {exc}. Install what it needs "
                "where the workers run, or send your own module by value with nbtasks.ship(module)."
            )
        return func

    def _fatal(self, message: str) -> NoReturn:
        if self.heartbeat is not None:
            # A worker on another machine refuses the job and leaves its items to others.
            who = f"{socket.gethostname()} (Python {sys.version_info.major}.{sys.version_info.minor})"
            self.store.refuse(self.job, who, message)
            print(f"nbtasks worker: refused job '{self.job}': {message} Its items are left to other workers.")
            sys.exit(EXIT_REFUSED)
        self.store.set_fatal(self.job, f"A worker of job '{self.job}' stopped: {message}")
        sys.exit(3)

    def _say_alive(self) -> None:
        assert self.heartbeat is not None
        while not self.over.wait(self.heartbeat / 3):
            self._retrying(self.store.alive, self.job, self.wid, self.heartbeat)

    def _terminate(self) -> None:
        """SIGTERM: claim no more, record what finished, put the rest back, leave."""
        self.stopping = True
        self._exit(requeue=True)

    def _claim_loop(self, func: Callable[[Any], Any]) -> None:
        idle = 0.01
        rate = self.policy.get("rate")
        while not self.over.ready() and not self.stopping:
            self.slots.acquire()
            want = 1
            while want < self.CLAIM_MAX and self.slots.acquire(blocking=False):
                want += 1
            if rate:
                want = self._turns(want, rate)
                if not want:
                    continue
            items = self._retrying(self.store.claim, self.job, self.token, self.wid, want)
            if items is None:  # the caller let go of the job
                return
            for _ in range(want - len(items)):
                self.slots.release()
            if not items:
                self.over.wait(idle)
                idle = min(idle * 2, 0.2)
                continue
            idle = 0.01
            if self.streak >= self.SYNC_STREAK:
                eventlet.spawn_n(self._run_batch, func, items)
            else:
                for index, payload in items:
                    eventlet.spawn_n(self._execute, func, index, payload)

    def _turns(self, want: int, rate: float) -> int:
        """How many of `want` items may start now under the job's shared rate limit;
        with none, wait for the next turn (the slots go back)."""
        granted, wait = self._retrying(self.store.take_turns, self.job, want, rate)
        for _ in range(want - granted):
            self.slots.release()
        if not granted:
            eventlet.sleep(wait)
        return granted

    def _run_batch(self, func: Callable[[Any], Any], items: list[tuple[int, bytes | PayloadRejected]]) -> None:
        """Run a claimed batch one item after another in this one green thread: for a
        function that never waits, a green thread per item costs several times the
        work itself. The first item that does wait sends the rest back to one green
        thread each, so waits on the network still overlap."""
        for k, (index, payload) in enumerate(items):
            if not self._execute(func, index, payload):
                for rest in items[k + 1 :]:
                    eventlet.spawn_n(self._execute, func, *rest)
                return
            if k % 100 == 99:
                eventlet.sleep(0)  # let the recorder and the watcher run

    def _execute(self, func: Callable[[Any], Any], index: int, payload: bytes | PayloadRejected) -> bool:
        """Run one item and queue its outcome; whether it ran without yielding."""
        if isinstance(payload, PayloadRejected):
            # Never unpickled, never run, never retried: recorded once as a final failure.
            print(f"nbtasks: {payload}", file=sys.stderr)
            self.outcomes.put(Outcome(index, "0", codec.failure_payload(payload), codec.failure_line(payload)))
            self.slots.release()
            return True
        timeout = self.policy.get("timeout")
        self.tasks[greenlet.getcurrent()] = index
        if self.beacon is not None:
            self.beacon.running(index)
        switches = self.switches
        try:
            # A green timeout cuts waits on the network; a task stuck in CPU or C code
            # never yields, and the caller replaces its process instead.
            with eventlet.Timeout(timeout, TimeoutError(f"timed out after {timeout} s")) if timeout else nullcontext():
                value = func(codec.load(payload))
            outcome = Outcome(index, "1", codec.dump(value))
        except GreenletExit:
            raise
        except BaseException as exc:  # a task's SystemExit is its failure, not ours
            kind = "r" if isinstance(exc, self.retry_on) else "0"
            outcome = Outcome(index, kind, codec.failure_payload(exc), codec.failure_line(exc))
        # Without the trace (no beacon) switches are not counted: never batch then.
        synchronous = self.beacon is not None and self.switches == switches
        self.streak = self.streak + 1 if synchronous else 0
        del self.tasks[greenlet.getcurrent()]
        self.outcomes.put(outcome)
        self.slots.release()
        return synchronous

    def _trace(self, event: str, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
        if event in ("switch", "throw") and self.beacon is not None:
            self.switches += 1
            self.beacon.running(self.tasks.get(args[1], IDLE))

    def _tick(self) -> None:
        while self.beacon is not None and not self.over.ready():
            self.beacon.tick()
            self.over.wait(0.1)

    def _record_loop(self) -> None:
        # Whatever finished while the last round trip was in flight goes in the next one.
        stop = False
        while not stop:
            batch = [self.outcomes.get()]
            self.recording = True
            while len(batch) < self.CLAIM_MAX and not self.outcomes.empty():
                batch.append(self.outcomes.get_nowait())
            stop = None in batch  # the run is over (see run)
            batch = [outcome for outcome in batch if outcome is not None]
            retries, delay = self.policy.get("retries", 0), self.policy.get("retry_delay", 0.0)
            if batch:
                self._retrying(self.store.record, self.job, self.wid, batch, retries, delay)
            self.recording = False

    def _watch_owner(self) -> None:
        while self._retrying(self.store.owner, self.job) == self.token:
            if self.over.wait(self.WATCH_INTERVAL):
                return
        if not self.over.ready():
            self._exit()

    def _watch_control(self) -> None:
        """The caller's word: "end" (the run is complete) or end of file (it is gone)."""
        assert self.control is not None
        line = self.control.line(None)
        if line == b"end" and not self.tasks and not self.recording and self.outcomes.empty():
            self.over.send(True)
            return
        self._exit()  # the caller is gone, or tasks still run: record what finished, then leave

    def _retrying(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`, waiting out a Redis outage (a restart, a failover): results
        finished meanwhile stay in memory and are recorded once it is back."""
        pause, waited = 0.05, 0.0
        while True:
            try:
                return call(*args)
            except TRANSIENT:
                if waited > self.OUTAGE_LIMIT:
                    raise
                eventlet.sleep(pause)
                waited += pause
                pause = min(pause * 2, 1.0)

    def _guard(self, loop: Callable[[], None]) -> None:
        # A helper green thread that dies would leave the process looking alive while
        # it records nothing: die loudly instead, so the caller requeues and replaces us.
        try:
            loop()
        except Exception:
            traceback.print_exc()
            os._exit(1)

    def _exit(self, requeue: bool = False) -> None:
        """Record what has finished, then leave; unfinished claims go back now with
        `requeue`, else at the next run."""
        for _ in range(100):
            if self.outcomes.empty() and not self.recording:
                break
            eventlet.sleep(0.01)
        if requeue:
            self.store.requeue(self.job, self.wid)
        os._exit(0)


if __name__ == "__main__":
    _green_resolver()
    main()
