"""eventlet green threads: the default for plain functions. The worker process has
patched the standard library before anything else was imported (see `nbtasks.worker`),
so sockets, `time.sleep` and the worker loop's own threads and queues are green.

A task that waits on the network yields to the others; its timeout is an
eventlet.Timeout. A task stuck in CPU or C code never yields: the greenlet trace keeps
the beacon told which item holds the loop, and the caller replaces the process.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import eventlet
import eventlet.queue
import eventlet.semaphore
import greenlet
from greenlet import GreenletExit

from ..beacon import IDLE, Beacon
from .base import Backend, Task

SYNC_STREAK = 200  # items in a row that never yielded before batches run in one green thread


class GreenBackend(Backend):
    name = "eventlet"

    def __init__(self) -> None:
        self.running: dict[greenlet.greenlet, int] = {}  # green thread -> the item it runs
        self.switches = 0  # green-thread switches seen by the trace
        self.streak = 0  # items in a row that ran without yielding
        self.beacon: Beacon | None = None

    def semaphore(self, value: int) -> Any:
        return eventlet.semaphore.Semaphore(value)

    def queue(self) -> Any:
        return eventlet.queue.LightQueue()

    def lock(self) -> AbstractContextManager[Any]:
        return nullcontext()  # green threads switch only where they wait

    def watch(self, beacon: Beacon) -> None:
        self.beacon = beacon
        greenlet.settrace(self._trace)

    def stop(self) -> None:
        greenlet.settrace(None)

    def soon(self, fn: Callable[[], None]) -> None:
        eventlet.spawn_n(fn)

    def submit(self, tasks: list[Task]) -> None:
        if self.streak >= SYNC_STREAK:
            eventlet.spawn_n(self._run_batch, tasks)
        else:
            for task in tasks:
                eventlet.spawn_n(self._run, task)

    def _run_batch(self, tasks: list[Task]) -> None:
        """Run a claimed batch one item after another in this one green thread: for a
        function that never waits, a green thread per item costs several times the
        work itself. The first item that does wait sends the rest back to one green
        thread each, so waits on the network still overlap."""
        for k, task in enumerate(tasks):
            if not self._run(task):
                for rest in tasks[k + 1 :]:
                    eventlet.spawn_n(self._run, rest)
                return
            if k % 100 == 99:
                eventlet.sleep(0)  # let the recorder and the watchers run

    def _run(self, task: Task) -> bool:
        """Run one item and end it; whether it ran without yielding."""
        me = greenlet.getcurrent()
        self.running[me] = task.index
        if self.beacon is not None:
            self.beacon.running(task.index)
        switches = self.switches
        value, error = None, None
        try:
            arg = self.begin(task)
            # A green timeout cuts waits on the network; a task stuck in CPU or C code
            # never yields, and the caller replaces its process instead.
            with eventlet.Timeout(self.timeout, self.timed_out()) if self.timeout else nullcontext():
                value = self.func(arg)
        except GreenletExit:
            raise
        except BaseException as exc:  # a task's SystemExit is its failure, not ours
            error = exc
        # Without the trace (no beacon) switches are not counted: never batch then.
        synchronous = self.beacon is not None and self.switches == switches
        self.streak = self.streak + 1 if synchronous else 0
        del self.running[me]
        self.end(task, value, error)
        return synchronous

    def _trace(self, event: str, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
        if event in ("switch", "throw") and self.beacon is not None:
            self.switches += 1
            self.beacon.running(self.running.get(args[1], IDLE))
