"""Large results: pmap against ProcessPoolExecutor(2).map in the same run, for results
of 1 MB and 20 MB (incompressible bytes, as a fetched image or archive would be); and 300
pages of 1 MB of text that all arrive after 0.5 s (so they end together and are recorded
in large batches), against ThreadPoolExecutor(300). Best of `--repeat`, as ratios to the
executor; prints a table.

    .venv/bin/python benchmarks/bench_payloads.py [--repeat 3]

Uses a throwaway server (the one nbtasks would start) on a unix socket; workers are warm
after a first untimed call, as in a notebook's second cell.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from run import best  # (benchmarks/run.py: best of n timings)

import nbtasks
from nbtasks.pool import warm
from nbtasks.server import TemporaryServer

WORKLOADS = [(300, 1 << 20), (5, 20 << 20)]  # (items, bytes per result)


def payload(i: int, size: int) -> bytes:
    return os.urandom(size)


async def apayload(i: int, size: int) -> bytes:
    return os.urandom(size)


BACKENDS = [("eventlet", payload), ("threads", payload), ("asyncio", apayload)]


def page(i: int) -> str:
    time.sleep(0.5)  # the server's answer (green in nbtasks' workers)
    return f"<p>item {i}</p>" * (1 << 16)  # about 1 MB of text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with TemporaryServer() as url, ProcessPoolExecutor(2) as pool:
        nbtasks.configure(redis_url=url, processes=2, warm=60)
        for n, size in WORKLOADS:
            label = f"{n} x {size >> 20} MB"

            def executor(n: int = n, size: int = size) -> None:
                assert sum(map(len, pool.map(functools.partial(payload, size=size), range(n)))) == n * size

            executor()
            reference = best(executor, args.repeat)
            rows.append((label, "ProcessPoolExecutor(2).map", reference, 1.0))
            for backend, task in BACKENDS:

                def pmap(n: int = n, size: int = size, backend: str = backend, task: Any = task) -> None:
                    # (distinct inputs: a job stores, and runs, each distinct input once)
                    call = functools.partial(task, size=size)
                    out = nbtasks.pmap(call, range(n), fresh=True, progress=False, backend=backend)
                    assert sum(map(len, out)) == n * size

                pmap()  # warm workers, as in a notebook's second call
                seconds = best(pmap, args.repeat)
                rows.append((label, f"nbtasks.pmap, {backend}", seconds, seconds / reference))
        with ThreadPoolExecutor(300) as threads:
            reference = best(lambda: list(threads.map(page, range(300))), args.repeat)
        rows.append(("300 pages", "ThreadPoolExecutor(300).map", reference, 1.0))
        seconds = best(lambda: nbtasks.pmap(page, range(300), fresh=True, progress=False), args.repeat)
        rows.append(("300 pages", "nbtasks.pmap, warm workers", seconds, seconds / reference))
        warm.close_all()
    print(f"{'workload':14} {'tool':28} {'wall s':>8} {'x ref':>7}")
    for label, tool, seconds, ratio in rows:
        print(f"{label:14} {tool:28} {seconds:8.2f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
