"""An asyncio event loop, for ``async def`` functions: the loop runs in a thread of
its own and the worker loop hands it items; up to `concurrency` coroutines are in
flight (the worker's slots). Nothing is patched. A timeout cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from .base import Backend, Task

T = TypeVar("T")


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


class LoopThread:
    """One private event loop in a thread of its own, for synchronous code to await on,
    even where an event loop already runs in this thread (a Jupyter kernel). Every
    coroutine it runs shares the loop, so a client that a module makes on first use and
    keeps (an aiohttp.ClientSession, an httpx.AsyncClient) serves them all. The thread
    starts with the first coroutine; `close` ends it as `asyncio.run` would end its
    loop (tasks left are cancelled, async generators and the executor shut down)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.closing: asyncio.Event | None = None

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await `coroutine` on the loop and return its value, or raise its exception."""
        future = asyncio.run_coroutine_threadsafe(_settled(coroutine), self._started())
        try:
            value, error = future.result()
        except BaseException:  # an interrupt while it runs: it is cancelled, then the loop closed
            future.cancel()
            raise
        if error is not None:
            raise error
        return cast(T, value)

    def close(self) -> None:
        if self.thread is None:
            return
        assert self.loop is not None and self.closing is not None
        self.loop.call_soon_threadsafe(self.closing.set)
        self.thread.join()
        self.thread = None

    def _started(self) -> asyncio.AbstractEventLoop:
        if self.thread is None:
            self.thread = threading.Thread(target=self._serve, name="nbtasks inline asyncio", daemon=True)
            self.thread.start()
            self.ready.wait()
        assert self.loop is not None
        return self.loop

    def _serve(self) -> None:
        try:
            with asyncio.Runner() as runner:
                self.loop = runner.get_loop()
                runner.run(self._until_closed())
        finally:
            self.ready.set()  # (should the loop fail to start, the caller must not wait forever)

    async def _until_closed(self) -> None:
        self.closing = asyncio.Event()
        self.ready.set()
        await self.closing.wait()


async def _settled(coroutine: Coroutine[Any, Any, T]) -> tuple[T | None, BaseException | None]:
    """The value or the exception of `coroutine`: a SystemExit or KeyboardInterrupt
    raised in a task would stop the loop itself, and nobody would hear of it."""
    try:
        return await coroutine, None
    except BaseException as exc:  # handed to the caller
        return None, exc
