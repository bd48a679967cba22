"""CPU-bound numpy in `pmap(..., concurrency=1)` against a for-loop: each worker's BLAS
limited to cores // processes threads (`nbtasks.blas`), and not (the caller sets
OPENBLAS_NUM_THREADS and the others to the core count: every worker starts one BLAS
thread per core, as before the limit), in the same run.

    .venv/bin/python benchmarks/bench_numpy.py [--repeat 3] [--processes 2]

Workloads: 200 inversions of 200x200 matrices, and 100 tasks of 10 products of 300x300
matrices (matmul-heavy). Each task makes its matrix from its seed and returns a float,
so the time is the CPU work, not moving matrices through Redis; every call takes seeds
never used before, so pmap never returns stored results. A last row per workload times
as many no-op items: what pmap itself costs per item at concurrency=1.

The for-loop runs here, with numpy's default threads (one per core) and limited to one
(threadpoolctl). pmap is timed with its workers warm (one call of each kind first, as a
notebook's second call finds them), best of `repeat`. Two ratios, each to a loop's time
divided by the cores pmap uses, min(cores, processes): to the plain loop's (numpy as it
comes), and to the 1-thread loop's (the work of one core, shared perfectly: 1.00x).
Where the plain loop's BLAS already spreads over the cores (large products), the first
is out of reach of any split into processes; the second says how well pmap shares.

Uses a throwaway Redis-compatible server on a unix socket.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

import nbtasks
from nbtasks import blas
from nbtasks.pool import warm
from nbtasks.server import TemporaryServer

_seeds = itertools.count()


def fresh(n: int) -> list[int]:
    """n seeds never used before in this run."""
    return [next(_seeds) for _ in range(n)]


def invert(seed: int) -> float:
    a = np.random.default_rng(seed).standard_normal((200, 200))
    return float(np.linalg.inv(a).sum())


def multiply(seed: int) -> float:
    a = np.random.default_rng(seed).standard_normal((300, 300)) / 300**0.5
    b = a
    for _ in range(10):
        b = a @ b
    return float(b.sum())


def noop(seed: int) -> float:
    return 0.0


def best(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def caller_sets(threads: int | None) -> Iterator[None]:
    """The caller's environment with every thread variable set to `threads` (None: unset)."""
    saved = {name: os.environ.pop(name, None) for name in blas.VARIABLES}
    if threads is not None:
        os.environ.update(dict.fromkeys(blas.VARIABLES, str(threads)))
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def loop_threads(threads: int | None) -> contextlib.AbstractContextManager[object]:
    """This process's BLAS limited to `threads` (None: as it is)."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads)


def loaded_blas() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl is not installed"
    found = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)" for i in threadpool_info()]
    return ", ".join(found) or "none found"


def measure(
    func: Callable[[int], float], n: int, url: str, processes: int, repeat: int
) -> list[tuple[str, float | None]]:
    rows: list[tuple[str, float | None]] = []
    for threads, what in ((None, "default threads (one per core)"), (1, "BLAS limited to 1 thread")):
        try:
            with loop_threads(threads):
                rows.append((f"for-loop here, {what}", best(lambda: [func(s) for s in fresh(n)], repeat)))
        except ImportError:
            rows.append((f"for-loop here, {what}: needs threadpoolctl", None))
    share = blas.per_process(processes)
    limited = f"limited to {share} thread{'s' * (share > 1)} each"
    for setting, what in ((None, limited), (blas.cores(), "limit off (caller sets it)")):
        with caller_sets(setting):
            warm.close_all()  # no worker of the other setting: they start with this one
            nbtasks.pmap(func, fresh(2 * processes), processes=processes, concurrency=1, redis=url, progress=False)
            seconds = best(
                lambda: nbtasks.pmap(func, fresh(n), processes=processes, concurrency=1, redis=url, progress=False),
                repeat,
            )
        rows.append((f"pmap processes={processes} concurrency=1, BLAS {what}", seconds))
    floor = best(
        lambda: nbtasks.pmap(noop, fresh(n), processes=processes, concurrency=1, redis=url, progress=False), repeat
    )
    rows.append(("  pmap's own cost: as many no-op items, concurrency=1", floor))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    cores, processes = blas.cores(), args.processes
    used = min(cores, processes)
    nbtasks.configure(warm=60.0)
    workloads = [
        ("200 inversions, 200x200", invert, 200),
        ("100 x 10 matmuls, 300x300", multiply, 100),
    ]
    print(f"{cores} cores; pmap uses {used}; BLAS here: {loaded_blas()}")
    print(f"\n{'workload':26} {'':66} {'best s':>8}  {f'/ (loop / {used})':>15}  {f'/ (1-thread loop / {used})':>24}")
    with TemporaryServer() as url:
        for what, func, n in workloads:
            rows = measure(func, n, url, processes, args.repeat)
            loop, single = (seconds or float("nan") for _, seconds in rows[:2])
            for how, seconds in rows:
                if seconds is None:
                    print(f"{what:26} {how:66} {'-':>8}")
                    continue
                ratios = f"{seconds / (loop / used):14.2f}x  {seconds / (single / used):23.2f}x"
                print(f"{what:26} {how:66} {seconds:8.2f}  {ratios}")
    warm.close_all()
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f} (other processes share the cores)")


if __name__ == "__main__":
    main()
