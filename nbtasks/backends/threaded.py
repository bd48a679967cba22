"""OS threads: for libraries that eventlet cannot patch (C extensions with their own
sockets), and the fallback when eventlet is not installed. Nothing is patched.

A thread cannot be stopped from outside, so a task past its timeout is recorded as
timed out and its slot freed at once; the thread runs on, and what it returns is
dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .base import Backend, Task


class ThreadBackend(Backend):
    name = "threads"

    def soon(self, fn: Callable[[], None]) -> None:
        threading.Thread(target=fn, daemon=True).start()

    def submit(self, tasks: list[Task]) -> None:
        for task in tasks:
            threading.Thread(target=self._run, args=(task,), name=f"nbtasks item {task.index}", daemon=True).start()

    def _run(self, task: Task) -> None:
        ended = threading.Lock()  # the first of the task and its timer ends the item

        def end(value: Any, error: BaseException | None) -> None:
            if ended.acquire(blocking=False):
                self.end(task, value, error)

        timer = None
        if self.timeout:
            timer = threading.Timer(self.timeout, end, args=(None, self.timed_out()))
            timer.daemon = True
            timer.start()
        try:
            value = self.func(self.begin(task))
        except BaseException as exc:  # a task's SystemExit is its failure, not ours
            end(None, exc)
        else:
            end(value, None)
        finally:
            if timer is not None:
                timer.cancel()
