"""pmap against what users would pick instead, in the same run: prints a table of wall
times and ratios to each workload's reference.

    .venv/bin/python benchmarks/bench_pmap.py [--repeat 3]

Uses NBTASKS_REDIS_URL, else a throwaway server (as the demo does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import nbtasks
from nbtasks.server import TemporaryServer

IO_ITEMS, IO_WAIT, IN_FLIGHT = 10_000, 0.05, 1000
NOOP_ITEMS = 100_000


def wait_io(x: int) -> int:
    time.sleep(IO_WAIT)  # green in the workers: eventlet patches time.sleep
    return x


def noop(x: int) -> int:
    return x


async def _asyncio_ideal() -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(x: int) -> int:
        async with gate:
            await asyncio.sleep(IO_WAIT)
            return x

    await asyncio.gather(*(one(x) for x in range(IO_ITEMS)))


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    if url := os.environ.get("NBTASKS_REDIS_URL"):
        yield url
    else:
        with TemporaryServer() as url:
            yield url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    rows: list[tuple[str, str, float, int, float]] = []
    with _redis() as url:
        per_process = IN_FLIGHT // (os.cpu_count() or 1)

        def io_pmap() -> None:
            nbtasks.pmap(wait_io, range(IO_ITEMS), redis=url, fresh=True, concurrency=per_process, progress=False)

        def noop_pmap() -> None:
            nbtasks.pmap(noop, range(NOOP_ITEMS), redis=url, fresh=True, progress=False)

        def noop_pool() -> None:
            with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
                pool.map(noop, range(NOOP_ITEMS))

        def io_threads() -> None:
            with ThreadPoolExecutor(IN_FLIGHT) as ex:
                list(ex.map(wait_io, range(IO_ITEMS)))

        io_ref = best(lambda: asyncio.run(_asyncio_ideal()), repeat)
        workload = f"{IO_ITEMS:,} x {IO_WAIT * 1000:.0f} ms I/O, {IN_FLIGHT} in flight"
        rows.append((workload, "asyncio + semaphore (ideal)", io_ref, IO_ITEMS, 1.0))
        for label, fn in (("ThreadPoolExecutor(1000)", io_threads), ("nbtasks.pmap (workers included)", io_pmap)):
            t = best(fn, repeat)
            rows.append((workload, label, t, IO_ITEMS, t / io_ref))

        noop_ref = best(noop_pool, repeat)
        workload = f"{NOOP_ITEMS:,} no-op tasks"
        rows.append((workload, "multiprocessing.Pool.map (not durable)", noop_ref, NOOP_ITEMS, 1.0))
        t = best(noop_pmap, repeat)
        rows.append((workload, "nbtasks.pmap (durable, resumable)", t, NOOP_ITEMS, t / noop_ref))

    print(f"\n{'workload':34} {'tool':40} {'wall s':>8} {'items/s':>10} {'x ref':>7}")
    for workload, tool, seconds, items, ratio in rows:
        print(f"{workload:34} {tool:40} {seconds:8.3f} {items / seconds:10,.0f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
