"""The benchmark suite: nbtasks against what users would pick instead, each workload in
the same run, best of `--repeat`, as ratios to that workload's reference. Prints a table,
writes benchmarks/results/results.json and a chart (benchmarks/results/chart.png).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/run.py [--repeat 3] [--quick]

Uses a throwaway Redis-compatible server (the one nbtasks would start) on a unix socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

import nbtasks
from nbtasks.pool import warm
from nbtasks.server import TemporaryServer
from nbtasks.store import JobKeys

HERE = Path(__file__).parent
OUT = HERE / "results"
IO_WAIT = 0.05
Row = dict[str, object]


def wait_io(x: int) -> int:
    time.sleep(IO_WAIT)  # green in nbtasks' workers: eventlet patches time.sleep
    return x


def noop(x: int) -> int:
    return x


_sessions: dict[str, Any] = {}  # travels by value to each worker, so one session per process


def get(url: str) -> int:
    """GET with one requests.Session per process, pooled as large as the floor's."""
    if not _sessions:
        import requests

        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=500))
        _sessions["s"] = session
    return len(_sessions["s"].get(url, timeout=60).content)


def pmap_call(func: Callable[[int], object], items: object, url: str, **options: object) -> Callable[[], object]:
    """A fresh pmap run of `func` over `items`, ready to time."""
    return lambda: nbtasks.pmap(func, items, redis=url, fresh=True, progress=False, **options)  # type: ignore[arg-type]


def best(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> float:
    """The best of `repeat` timings of `fn`, each after an untimed `setup`."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cold_and_warm(fn: Callable[[], object], repeat: int) -> list[tuple[str, float]]:
    """nbtasks timed twice: with no warm worker (every process started in the timing),
    and with the workers of the previous call waiting."""
    cold = best(fn, repeat, setup=warm.close_all)
    fn()  # leaves warm workers
    return [("nbtasks.pmap, cold: workers started", cold), ("nbtasks.pmap, warm workers", best(fn, repeat))]


def rows(workload: str, items: int, timings: list[tuple[str, float]]) -> list[Row]:
    """Rows of one workload; the first timing is its reference."""
    ref = timings[0][1]
    return [
        {
            "workload": workload,
            "tool": tool,
            "seconds": round(t, 4),
            "items_per_s": round(items / t),
            "ratio": round(t / ref, 2),
        }
        for tool, t in timings
    ]


# -- 1. waiting on I/O -------------------------------------------------------------


async def _asyncio_ideal(n: int, in_flight: int) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def one(x: int) -> None:
        async with gate:
            await asyncio.sleep(IO_WAIT)

    await asyncio.gather(*(one(x) for x in range(n)))


def io_workload(url: str, n: int, repeat: int) -> list[Row]:
    from tqdm.contrib.concurrent import thread_map

    per_process = 1000 // 2
    sample = 200
    timings = [
        ("asyncio + semaphore(1000) (ideal)", best(lambda: asyncio.run(_asyncio_ideal(n, 1000)), repeat)),
        ("ThreadPoolExecutor(1000)", best(lambda: list(ThreadPoolExecutor(1000).map(wait_io, range(n))), repeat)),
        (
            f"tqdm thread_map defaults (on {sample}, extrapolated)",
            best(lambda: thread_map(wait_io, range(sample), disable=True), 1) * n / sample,
        ),
        *cold_and_warm(pmap_call(wait_io, range(n), url, concurrency=per_process), repeat),
    ]
    return rows(f"{n:,} x 50 ms I/O, 1,000 in flight", n, timings)


# -- 2. HTTP GETs with requests ----------------------------------------------------


@contextmanager
def http_server(delay: float) -> Iterator[str]:
    cmd = [sys.executable, str(HERE / "http_server.py"), "--delay", str(delay)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


EVENTLET_FLOOR = """
import sys, warnings
warnings.filterwarnings("ignore")
import eventlet
eventlet.monkey_patch()
import requests
urls = sys.stdin.read().split()
pool = eventlet.GreenPool(500)
session = requests.Session()
adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=500)
session.mount("http://", adapter)
list(pool.imap(lambda u: len(session.get(u, timeout=60).content), urls))
"""


AIOHTTP_FLOOR = """
import asyncio, sys
import aiohttp
async def main(urls):
    gate = asyncio.Semaphore(500)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500)) as session:
        async def one(u):
            async with gate, session.get(u) as response:
                return len(await response.read())
        await asyncio.gather(*(one(u) for u in urls))
asyncio.run(main(sys.stdin.read().split()))
"""


def _eventlet_floor(urls: list[str]) -> None:
    """The hand-written floor: 2 processes, each an eventlet pool of 500 over half."""
    _two_processes(EVENTLET_FLOOR, urls)


def _aiohttp_floor(urls: list[str]) -> None:
    """The async floor: 2 processes, each aiohttp with 500 requests in flight over half."""
    _two_processes(AIOHTTP_FLOOR, urls)


def _two_processes(program: str, urls: list[str]) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, text=True) for _ in range(2)]
    for i, proc in enumerate(procs):
        assert proc.stdin is not None
        proc.stdin.write("\n".join(urls[i::2]))
        proc.stdin.close()
    for proc in procs:
        proc.wait()


async def _aiohttp(urls: list[str]) -> None:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:

        async def one(u: str) -> int:
            async with session.get(u) as response:
                return len(await response.read())

        await asyncio.gather(*(one(u) for u in urls))


def http_workload(url: str, n: int, repeat: int) -> list[Row]:
    with http_server(IO_WAIT) as base:
        urls = [f"{base}/page/{i}" for i in range(n)]
        timings = [
            ("hand-written eventlet pool, 2 x 500 (floor)", best(lambda: _eventlet_floor(urls), repeat)),
            ("ThreadPoolExecutor(200) + requests", best(lambda: list(ThreadPoolExecutor(200).map(get, urls)), repeat)),
            ("aiohttp, 1,000 connections", best(lambda: asyncio.run(_aiohttp(urls)), repeat)),
            *cold_and_warm(pmap_call(get, urls, url, concurrency=500), repeat),
        ]
    return rows(f"{n:,} HTTP GETs (requests), 50 ms server", n, timings)


_aio_sessions: dict[str, Any] = {}  # travels by value: one session per worker run


async def aget(url: str) -> int:
    """GET with aiohttp, one session per worker process, 500 connections."""
    if not _aio_sessions:
        import aiohttp

        _aio_sessions["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500))
    async with _aio_sessions["s"].get(url) as response:
        return len(await response.read())


def async_http_workload(url: str, n: int, repeat: int) -> list[Row]:
    with http_server(IO_WAIT) as base:
        urls = [f"{base}/page/{i}" for i in range(n)]
        timings = [
            ("hand-written aiohttp, 2 x 500 (floor)", best(lambda: _aiohttp_floor(urls), repeat)),
            *cold_and_warm(pmap_call(aget, urls, url, concurrency=500), repeat),
        ]
    return rows(f"{n:,} HTTP GETs (async def, aiohttp), 50 ms server", n, timings)


# -- 3. no-op tasks, 4. a finished job again, 5. ten items ---------------------------


def noop_workload(url: str, n: int, repeat: int) -> list[Row]:
    """What a notebook user picks today for a map of many tiny tasks, each with 2 workers
    and its own defaults (joblib batches automatically; mpire and the executor get
    chunksize=1000, as the issue that set the target did)."""
    from joblib import Parallel, delayed
    from mpire import WorkerPool
    from tqdm.contrib.concurrent import process_map

    spawn = multiprocessing.get_context("spawn")

    def pool_map() -> None:
        with spawn.Pool(2) as pool:
            pool.map(noop, range(n))

    def executor_map() -> None:
        with ProcessPoolExecutor(2, mp_context=spawn) as ex:
            list(ex.map(noop, range(n), chunksize=1000))

    def joblib_map() -> None:
        Parallel(n_jobs=2)(delayed(noop)(i) for i in range(n))

    def mpire_map() -> None:
        with WorkerPool(n_jobs=2, start_method="spawn") as pool:
            pool.map(noop, range(n), chunk_size=1000, progress_bar=False)

    timings = [
        ("tqdm process_map defaults", best(lambda: process_map(noop, range(n), max_workers=2, disable=True), 1)),
        ("joblib Parallel(n_jobs=2)", best(joblib_map, repeat)),
        ("mpire WorkerPool(2), chunk_size=1000", best(mpire_map, repeat)),
        ("ProcessPoolExecutor(2), chunksize=1000", best(executor_map, repeat)),
        ("multiprocessing.Pool(2).map (not durable)", best(pool_map, repeat)),
        *cold_and_warm(pmap_call(noop, range(n), url), repeat),
    ]
    return rows(f"{n:,} no-op tasks", n, timings)


def redis_memory_workload(url: str, n: int) -> list[Row]:
    """Redis memory a finished job of `n` small ints takes: what deleting it frees."""
    client = redis.Redis.from_url(url)
    nbtasks.pmap(noop, range(n), name="memory", redis=url, fresh=True, progress=False)
    before = int(client.info("memory")["used_memory"])
    nbtasks.reset("memory", redis=url)
    freed = before - int(client.info("memory")["used_memory"])
    client.close()
    tool = f"nbtasks: {freed / n:.1f} bytes of Redis per item (x: to 40)"
    row: Row = {"workload": f"a finished job of {n:,} small ints", "tool": tool}
    budget = f"Redis per item, {n:,} small ints: {freed / n:.1f} B / 40 B"
    return [
        {**row, "seconds": 0, "items_per_s": 0, "ratio": round(freed / n / 40, 2), "bytes": freed, "budget": budget}
    ]


def millions_workload(n: int) -> list[Row]:
    """`n` no-ops from a generator through imap (benchmarks/bench_millions.py)."""
    from bench_millions import measure

    m = measure(n)
    workload = f"{n:,} no-ops from a generator through imap"
    base: Row = {"workload": workload, "seconds": round(m["seconds"], 1), "items_per_s": round(n / m["seconds"])}
    caller, peak = m["caller_growth"] / 1e6, m["redis_peak"] / 1e6
    return [
        {**base, "tool": f"nbtasks.imap, end to end (first result after {m['first']:.0f} s)", "ratio": 0},
        {
            **base,
            "tool": f"caller's peak memory growth: {caller:.0f} MB (x: to 300 MB)",
            "ratio": round(caller / 300, 2),
            "budget": f"caller's memory, {n:,} through imap: {caller:.0f} MB / 300 MB",
        },
        {
            **base,
            "tool": f"Redis peak memory: {peak:.0f} MB (x: to 1 GB)",
            "ratio": round(peak / 1000, 2),
            "budget": f"Redis memory, {n:,} through imap: {peak:.0f} MB / 1,000 MB",
        },
    ]


def noop_budgets(results: list[Row]) -> list[Row]:
    """The no-op targets as budgets: 15x faster than process_map, within 2x of joblib."""
    workload = next(str(r["workload"]) for r in results if str(r["workload"]).endswith("no-op tasks"))
    noops = {str(r["tool"]): float(r["seconds"]) for r in results if r["workload"] == workload}
    ours = min(t for tool, t in noops.items() if tool.startswith("nbtasks"))
    out: list[Row] = []
    for peer, times, label in (("tqdm process_map defaults", 1 / 15, "process_map / 15"), ("joblib", 2, "2 x joblib")):
        theirs = next(t for tool, t in noops.items() if tool.startswith(peer)) * times
        budget = f"{workload}: {ours:.2f} s / {theirs:.2f} s ({label})"
        out.append(
            {
                "workload": "budgets",
                "tool": budget,
                "seconds": 0,
                "items_per_s": 0,
                "ratio": round(ours / theirs, 2),
                "budget": budget,
            }
        )
    return out


def finished_workload(url: str, n: int, repeat: int) -> list[Row]:
    nbtasks.pmap(noop, range(n), name="finished", redis=url, fresh=True, progress=False)
    client = redis.Redis.from_url(url)
    key = JobKeys("finished").results

    def again() -> None:
        nbtasks.pmap(noop, range(n), name="finished", redis=url, progress=False)

    def floor() -> None:
        pipe = client.pipeline(transaction=False)
        for start in range(0, n, 1000):
            pipe.hmget(key, list(range(start, min(start + 1000, n))))
        [v for chunk in pipe.execute() for v in chunk]

    timings = [
        ("one pipelined read with redis-py (floor)", best(floor, repeat)),
        (
            "nbtasks.pmap, same call again",
            best(again, repeat),
        ),
    ]
    client.close()
    return rows(f"pmap again on a finished {n:,}-item job", n, timings)


def small_workload(url: str, repeat: int) -> list[Row]:
    def spawn_pool() -> None:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(noop, range(10)))

    timings = [
        ("ProcessPoolExecutor(2), spawn", best(spawn_pool, repeat)),
        *cold_and_warm(pmap_call(noop, range(10), url), repeat),
    ]
    return rows("10 items, end to end", 10, timings)


# -- 6. a million small inputs: the caller's memory ------------------------------------

MEMORY = """
import sys, tracemalloc, nbtasks
url, n = sys.argv[1], int(sys.argv[2])
tracemalloc.start()
out = nbtasks.pmap(abs, range(n), redis=url, fresh=True, progress=False)
peak = tracemalloc.get_traced_memory()[1]
size = sys.getsizeof(out) + sum(sys.getsizeof(x) for x in out)  # the list and its values
print(peak, size)
"""


def memory_workload(url: str, n: int) -> list[Row]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEMORY, url, str(n)], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    peak, size = map(int, out.stdout.split())
    return [
        {
            "workload": f"{n:,} small inputs",
            "tool": "result list (reference size)",
            "seconds": 0,
            "items_per_s": 0,
            "ratio": 1.0,
            "bytes": size,
        },
        {
            "workload": f"{n:,} small inputs",
            "tool": "nbtasks.pmap: caller's peak memory growth",
            "seconds": round(seconds, 2),
            "items_per_s": round(n / seconds),
            "ratio": round(peak / size, 2),
            "bytes": peak,
        },
    ]


# -- scaling, output -----------------------------------------------------------------


def scaling(url: str, n: int) -> list[Row]:
    out: list[Row] = []
    for processes in (1, 2):
        for concurrency in (10, 100, 1000):
            t = best(pmap_call(wait_io, range(n), url, processes=processes, concurrency=concurrency), 1)
            out.append({"processes": processes, "concurrency": concurrency, "items_per_s": round(n / t)})
    return out


def chart(results: list[Row], scale: list[Row], path: Path) -> None:
    """Each timed workload as ratios to its reference (log scale), and the scaling curve."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Timed workloads only (the memory one is a ratio of bytes, not of time).
    workloads = list(dict.fromkeys(str(r["workload"]) for r in results if r["ratio"] == 1.0 and r["seconds"]))
    fig, axes = plt.subplots(2, 4, figsize=(20, 7.5))
    flat = list(axes.flat)
    for ax, workload in zip(flat, workloads, strict=False):
        these = [r for r in results if r["workload"] == workload]
        colors = ["tab:orange" if str(r["tool"]).startswith("nbtasks") else "tab:gray" for r in these]
        ax.barh([str(r["tool"]) for r in these], [float(r["ratio"]) for r in these], color=colors)  # type: ignore[arg-type]
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(workload, fontsize=9)
        ax.set_xlabel("time / reference (lower is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.invert_yaxis()
    ax = flat[len(workloads)]
    for processes in (1, 2):
        points = [r for r in scale if r["processes"] == processes]
        ax.plot(
            [r["concurrency"] for r in points],
            [r["items_per_s"] for r in points],
            marker="o",
            label=f"{processes} process(es)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("green threads per process", fontsize=8)
    ax.set_ylabel("items/s (10,000 waits of 50 ms)", fontsize=8)
    ax.set_title("scaling", fontsize=9)
    ax.legend()
    budgets = [r for r in results if "budget" in r]
    if budgets:  # each target of the issue on per-item costs: measured / target
        ax = flat[len(workloads) + 1]
        ratios = [float(r["ratio"]) for r in budgets]  # type: ignore[arg-type]
        colors = ["tab:green" if ratio <= 1 else "tab:red" for ratio in ratios]
        ax.barh([str(r["budget"]) for r in budgets], ratios, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title("targets: measured / target (<= 1: met)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.invert_yaxis()
    for unused in flat[len(workloads) + 1 + bool(budgets) :]:
        unused.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, for a smoke run")
    parser.add_argument("--replot", action="store_true", help="only draw the chart again from results.json")
    parser.add_argument("--millions", type=int, default=10_000_000, help="items through imap (0: skip; minutes)")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((OUT / "results.json").read_text())
        chart(saved["results"], saved["scaling"], OUT / "chart.png")
        return
    scale = 10 if args.quick else 1
    OUT.mkdir(exist_ok=True)
    with TemporaryServer() as url:
        results = [
            *io_workload(url, 20_000 // scale, args.repeat),
            *http_workload(url, 5_000 // scale, args.repeat),
            *async_http_workload(url, 5_000 // scale, args.repeat),
            *noop_workload(url, 100_000 // scale, args.repeat),
            *finished_workload(url, 100_000 // scale, args.repeat),
            *small_workload(url, args.repeat),
            *memory_workload(url, 1_000_000 // scale),
            *redis_memory_workload(url, 200_000 // scale),
        ]
        results += noop_budgets(results)
        scale_rows = scaling(url, 10_000 // scale)
    if args.millions:  # (on a server of its own: its memory is measured)
        results += millions_workload(args.millions // scale)
    print(f"\n{'workload':42} {'tool':58} {'wall s':>8} {'items/s':>10} {'x ref':>7}")
    for r in results:
        print(f"{r['workload']!s:42} {r['tool']!s:58} {r['seconds']:>8} {r['items_per_s']:>10,} {r['ratio']:>7}")
    print(
        "\nscaling (10,000 x 50 ms):",
        ", ".join(f"{r['processes']}p x {r['concurrency']}: {r['items_per_s']:,}/s" for r in scale_rows),
    )
    (OUT / "results.json").write_text(
        json.dumps({"results": results, "scaling": scale_rows, "cpus": os.cpu_count()}, indent=2)
    )
    chart(results, scale_rows, OUT / "chart.png")
    print(f"\nwrote {OUT / 'results.json'} and {OUT / 'chart.png'}")


if __name__ == "__main__":
    main()
