"""How a worker process runs its items: the seam between the worker loop (claim,
record, watch; `nbtasks.worker`) and the concurrency library that runs the user's
function. One module per backend:

    green      eventlet green threads; patches the standard library (the default)
    threaded   OS threads; patches nothing (where eventlet cannot patch a library)
    aio        an asyncio event loop, for ``async def`` functions

The worker loop itself uses only `threading`, `queue` and `time`: under the green
backend eventlet has patched those, so the same loop runs on green threads.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .base import Backend, Task

NAMES = ("eventlet", "threads", "asyncio")

__all__ = ["NAMES", "Backend", "Task", "choose", "load"]


def choose(func: Callable[..., Any], backend: str | None) -> str:
    """The backend for `func`: asyncio for ``async def`` functions, else eventlet (threads
    when eventlet is not installed); an explicit choice is checked against `func`."""
    coroutine = inspect.iscoroutinefunction(func)
    if backend is None:
        if coroutine:
            return "asyncio"
        return "eventlet" if _have_eventlet() else "threads"
    if backend not in NAMES:
        raise ConfigError(f"backend= must be one of {', '.join(NAMES)}, not {backend!r}.")
    if coroutine and backend != "asyncio":
        raise ConfigError(f"An async def function runs on backend='asyncio', not {backend!r}.")
    if not coroutine and backend == "asyncio":
        raise ConfigError("backend='asyncio' runs async def functions; this one is a plain function.")
    if backend == "eventlet" and not _have_eventlet():
        raise ConfigError("backend='eventlet' needs eventlet: pip install eventlet, or use backend='threads'.")
    return backend


def _have_eventlet() -> bool:
    try:
        return importlib.util.find_spec("eventlet") is not None
    except (ImportError, ValueError):
        return False


def load(name: str) -> Backend:
    """A fresh instance of the named backend (its module is imported only now)."""
    if name == "eventlet":
        from .green import GreenBackend

        return GreenBackend()
    if name == "threads":
        from .threaded import ThreadBackend

        return ThreadBackend()
    if name == "asyncio":
        from .aio import AsyncioBackend

        return AsyncioBackend()
    raise ConfigError(f"Unknown backend {name!r}.")
