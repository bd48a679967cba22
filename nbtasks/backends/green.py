"""eventlet green threads: the default for plain functions. The worker process has
patched the standard library before anything else was imported (see `nbtasks.worker`),
so sockets, `time.sleep` and the worker loop's own threads and queues are green.

A task that waits on the network yields to the others; its timeout is an
eventlet.Timeout. A task stuck in CPU or C code never yields: the greenlet trace keeps
the beacon told which item holds the loop, and the caller replaces the process.

A task may run an event loop of its own (``asyncio.run()``, ``loop.run_until_complete``):
under the patch its selector waits through eventlet, so the loop yields to the other
green threads like any socket. asyncio keeps one running loop per OS thread, which the
green threads share; the trace hands each green thread its own as it switches in.
"""

from __future__ import annotations

from asyncio import AbstractEventLoop, _get_running_loop, _set_running_loop
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import eventlet
import eventlet.queue
import eventlet.semaphore
import eventlet.tpool
import greenlet
from greenlet import GreenletExit

from .. import blobs
from ..pool.beacon import IDLE, Beacon
from .base import Backend, Begin, End, Task

SYNC_STREAK = 200  # items in a row that never yielded before batches run in one green thread


class GreenBackend(Backend):
    name = "eventlet"

    def __init__(self) -> None:
        self.running: dict[greenlet.greenlet, int] = {}  # green thread -> the item it runs
        self.switches = 0  # green-thread switches seen by the trace
        self.streak = 0  # items in a row that ran without yielding
        self.beacon: Beacon | None = None
        self.loops: dict[greenlet.greenlet, AbstractEventLoop] = {}  # switched-out green thread -> its running loop

    def semaphore(self, value: int) -> Any:
        return eventlet.semaphore.Semaphore(value)

    def queue(self) -> Any:
        return eventlet.queue.LightQueue()

    def lock(self) -> AbstractContextManager[Any]:
        return nullcontext()  # green threads switch only where they wait

    def start(self, func: Callable[[Any], Any], timeout: float | None, begin: Begin, end: End) -> None:
        super().start(func, timeout, begin, end)
        greenlet.settrace(self._trace)
        blobs.blocking = eventlet.tpool.execute  # a large payload's write and fsync: off the hub

    def watch(self, beacon: Beacon) -> None:
        self.beacon = beacon

    def stop(self) -> None:
        greenlet.settrace(None)
        # Loops of green threads that outlive the run (an fsspec I/O thread, used again by
        # the next run of a warm worker) are kept; the others' go.
        self.loops = {g: loop for g, loop in self.loops.items() if not g.dead}

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
        # Events are "switch" and "throw": either hands the OS thread to args[1].
        loop = _get_running_loop()
        if loop is not None or self.loops:
            self._hand_over(loop, *args)
        if self.beacon is not None:
            self.switches += 1
            self.beacon.running(self.running.get(args[1], IDLE))

    def _hand_over(self, loop: AbstractEventLoop | None, origin: greenlet.greenlet, target: greenlet.greenlet) -> None:
        """asyncio's running loop belongs to the OS thread, which the green threads
        share: keep `origin`'s, and make `target`'s (or none) the running one. Without
        this, a second green thread in asyncio.run() would find the first one's loop
        running and refuse."""
        if loop is not None and not origin.dead:
            self.loops[origin] = loop
        resumed = self.loops.pop(target, None)
        if resumed is not loop:
            _set_running_loop(resumed)
