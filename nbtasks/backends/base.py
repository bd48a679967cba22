"""The backend interface: what the worker loop asks of whatever runs the items."""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..pool.beacon import Beacon


@dataclass(slots=True)
class Task:
    """One claimed item: its index and its (verified) pickled input."""

    index: int
    payload: bytes


# begin(task) -> the argument for the user's function (unpickled); may raise.
# end(task, value, error) records the outcome and frees the item's slot; exactly once.
Begin = Callable[[Task], Any]
End = Callable[[Task, Any, BaseException | None], None]


class Backend(ABC):
    name: str

    def start(self, func: Callable[[Any], Any], timeout: float | None, begin: Begin, end: End) -> None:
        self.func, self.timeout, self.begin, self.end = func, timeout, begin, end

    @abstractmethod
    def submit(self, tasks: list[Task]) -> None:
        """Start running `tasks` (each calls `end` once, from any thread) and return."""

    def watch(self, beacon: Beacon) -> None:  # noqa: B027 (optional)
        """Keep `beacon` told which item holds the event loop (where that can be known)."""

    def stop(self) -> None:  # noqa: B027 (optional)
        """The run is over: release what `start` took."""

    @abstractmethod
    def soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` shortly in its own thread of control (safe from a signal handler)."""

    # The worker loop's per-item primitives. Threads need real ones; green threads,
    # which never preempt each other, have cheaper ones (see green).
    def semaphore(self, value: int) -> threading.Semaphore:
        return threading.Semaphore(value)

    def queue(self) -> queue.SimpleQueue[Any]:
        return queue.SimpleQueue()

    def lock(self) -> AbstractContextManager[Any]:
        return threading.Lock()

    def timed_out(self) -> TimeoutError:
        return TimeoutError(f"timed out after {self.timeout} s")
