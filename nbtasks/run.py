"""One run of a job: take it over, start workers (or run inline), follow, stop."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import codec
from .config import Settings
from .errors import WorkerError
from .job import JobSpec
from .pool import WorkerPool
from .progress import Progress
from .store import Counts, Store

INLINE_TTL = 24 * 3600.0  # an inline run has no workers waiting on its heartbeat
INLINE_BATCH = 100


def run(store: Store, spec: JobSpec, cfg: Settings, func: Callable[[Any], Any], progress: bool = True) -> Counts:
    """Run every item of `spec` without a result; return the final counters.

    On KeyboardInterrupt the workers stop, every recorded result stays, and the
    interrupt propagates after one line saying how to resume.
    """
    token = uuid.uuid4().hex
    inline = cfg.processes == 0
    ttl = INLINE_TTL if inline else cfg.heartbeat_ttl
    counts = store.begin_run(spec.name, token, spec.total, ttl)
    bar = Progress(spec.name, counts, progress)
    pool = None if inline else WorkerPool(store.url, spec.name, token, cfg.processes, cfg.concurrency)
    try:
        if pool is None:
            counts = _run_inline(store, spec, token, func, bar)
        else:
            pool.start()
            counts = _follow(store, spec, token, cfg, pool, bar)
    except KeyboardInterrupt:
        _stop(store, spec, token, pool)
        counts = store.poll(spec.name, token, spec.total, ttl)
        bar.update(counts)
        print(
            f"nbtasks: interrupted; {counts.done} of {spec.total} results of job '{spec.name}' are "
            "stored. Run the same call again to resume.",
            file=sys.stderr,
        )
        raise
    finally:
        _stop(store, spec, token, pool)
        bar.close()
    return counts


def _stop(store: Store, spec: JobSpec, token: str, pool: WorkerPool | None) -> None:
    try:
        store.end_run(spec.name, token)  # workers see the owner gone, record, and leave
    finally:
        if pool is not None:
            pool.close()  # even when Redis is gone: no worker outlives the call


def _follow(store: Store, spec: JobSpec, token: str, cfg: Settings, pool: WorkerPool, bar: Progress) -> Counts:
    """Poll counters (refreshing the heartbeat) until every item is settled."""
    deaths = 0
    counts = store.poll(spec.name, token, spec.total, cfg.heartbeat_ttl)
    while counts.settled < spec.total:
        time.sleep(cfg.poll_interval)
        counts = store.poll(spec.name, token, spec.total, cfg.heartbeat_ttl)
        bar.update(counts)
        if counts.owner == "none":
            # Our heartbeat lapsed (the machine slept?): take the job back; live workers
            # go on, and items of those that left are queued again.
            store.begin_run(spec.name, token, spec.total, cfg.heartbeat_ttl)
            if not pool.procs:
                pool.start()
        elif counts.owner == "other":
            pool.stop()  # another caller took the job over; follow its progress
        for wid, code, tail in pool.dead():
            if fatal := store.fatal(spec.name):
                raise WorkerError(f"{fatal} Recorded results are kept.")
            store.requeue(spec.name, wid)
            deaths += 1
            if deaths > 3 + 2 * cfg.processes:
                raise WorkerError(
                    f"Worker processes of job '{spec.name}' keep dying (the last with exit code {code}); "
                    f"{counts.done} results are kept. Look for crashes in the function (a segfault, "
                    "os._exit, running out of memory), or try processes=0 to run it here. "
                    f"Worker logs: {pool.log_dir}" + (f"\n\nThe last one ended with:\n{tail}" if tail else "")
                )
            pool.spawn()
    return counts


def _run_inline(store: Store, spec: JobSpec, token: str, func: Callable[[Any], Any], bar: Progress) -> Counts:
    """Run in the caller with the same store calls. The first task that raises is
    recorded as failed and its exception propagates unchanged, so ``%debug`` lands in it."""
    counts = store.poll(spec.name, token, spec.total, INLINE_TTL)
    while items := store.claim(spec.name, token, "inline", INLINE_BATCH):
        outcomes: list[tuple[int, bool, bytes]] = []
        try:
            for index, payload in items:
                try:
                    value = func(codec.load(payload))
                except Exception as exc:
                    outcomes.append((index, False, codec.failure_payload(exc)))
                    raise
                outcomes.append((index, True, codec.dump(value)))
        finally:
            store.record(spec.name, "inline", outcomes)
            counts = store.poll(spec.name, token, spec.total, INLINE_TTL)
            bar.update(counts)
    return counts
