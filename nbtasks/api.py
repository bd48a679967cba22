"""`pmap`: validate the call, then define the job, run it and gather it. No Redis calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import redis

from . import codec, job, server
from .config import settings
from .errors import RedisUnavailable
from .run import run
from .store import RedisError, Store, safe_url

T = TypeVar("T")
R = TypeVar("R")

_stores: dict[str, Store] = {}


def pmap(
    func: Callable[[T], R],
    iterable: Iterable[T],
    *,
    name: str | None = None,
    processes: int | None = None,
    concurrency: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    redis: str | redis.Redis | None = None,
) -> list[R]:
    """Equivalent of ``list(map(func, iterable))``, run in parallel and resumable.

    Inputs, the function and every result are kept in Redis, so calling the same
    ``pmap`` again after an interrupt, a crash or a kernel restart runs only what has no
    result yet; on a finished job it returns the stored results at once.

    Args:
        func: called with one item at a time; functions, lambdas and closures defined
            in a notebook work.
        iterable: the inputs, any picklable values.
        name: a job name that survives edits of ``func``; by default the job is named
            after the function, its source and the inputs.
        processes: worker processes (default: the CPU count); 0 runs every item here,
            one by one, and lets the first exception through unchanged (for ``%debug``).
        concurrency: green threads per worker process (default 200, suited to network
            work); 1 for CPU-bound functions.
        fresh: discard the job's stored results and start over.
        progress: show a progress bar (a widget in Jupyter, text in a terminal).
        redis: a URL or a ``redis.Redis`` client; else ``configure(redis_url=...)``,
            else ``NBTASKS_REDIS_URL``, else nbtasks' own server (see `nbtasks.server`).

    Raises:
        TaskError: some items raised; the others' results are kept and the same call
            retries only the failed ones.
    """
    if not callable(func):
        raise TypeError(f"pmap() takes the function first, then the inputs; got {type(func).__name__} first.")
    try:
        items = iter(iterable)
    except TypeError:
        raise TypeError(
            f"pmap() needs an iterable of inputs (a list, a range, a generator...), not {type(iterable).__name__}."
        ) from None
    if name is not None:
        job.check_name(name)
    cfg = settings().replace(processes=processes, concurrency=concurrency)
    func_payload = codec.dump_function(func)
    payloads, digest = job.serialize_inputs(items)
    if not payloads:
        return []
    store = connect(redis if redis is not None else cfg.redis_url)
    try:
        spec = job.define(store, func, func_payload, payloads, digest, name=name, fresh=fresh)
        del payloads  # the store has them; don't hold them through the run
        if not spec.finished:
            run(store, spec, cfg, func, progress)
        return job.gather(store, spec)
    except RedisError as exc:
        raise RedisUnavailable(
            f"Lost Redis at {safe_url(store.url)} ({exc}). Every result recorded before is kept: "
            "run the same call again once the server is back."
        ) from exc


def connect(target: str | redis.Redis | None) -> Store:
    """A store for a URL or client (reused across calls for the same URL); with
    neither, the embedded server, started if it is not running."""
    if target is None:
        target = server.ensure()
    if not isinstance(target, str):
        return Store.connect(target)
    store = _stores.get(target)
    if store is None:
        store = _stores[target] = Store.connect(target)
    else:
        store.check()
    return store
