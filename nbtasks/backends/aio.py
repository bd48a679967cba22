"""An asyncio event loop, for ``async def`` functions: the loop runs in a thread of
its own and the worker loop hands it items; up to `concurrency` coroutines are in
flight (the worker's slots). Nothing is patched. A timeout cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from .base import Backend, Task


class AsyncioBackend(Backend):
    name = "asyncio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="nbtasks asyncio", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def soon(self, fn: Callable[[], None]) -> None:
        threading.Thread(target=fn, daemon=True).start()

    def submit(self, tasks: list[Task]) -> None:
        for task in tasks:
            asyncio.run_coroutine_threadsafe(self._run(task), self.loop)

    async def _run(self, task: Task) -> None:
        value, error = None, None
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                value = await self.func(self.begin(task))
        except BaseException as exc:  # a task's SystemExit is its failure, not ours
            error = self.timed_out() if deadline.expired() else exc
        self.end(task, value, error)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Await `coroutine` from synchronous code, even where an event loop already runs
    in this thread (a Jupyter kernel): on a private loop in a thread of its own."""
    out: dict[str, Any] = {}

    def serve() -> None:
        try:
            out["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=serve, name="nbtasks inline asyncio")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")
