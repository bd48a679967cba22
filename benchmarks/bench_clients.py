"""Which backend suits which HTTP client: the same GETs with requests, httpx and urllib on
the eventlet and threads backends, and with httpx.AsyncClient and aiohttp on asyncio,
against a ThreadPoolExecutor(100) with requests in this process (the baseline), all in
the same run, best of `--repeat`. Each other client also runs in this process, 100
requests at once (threads, or asyncio.gather), to tell what the client costs by itself
from what pmap adds.

    .venv/bin/pip install -e '.[test]'
    .venv/bin/python benchmarks/bench_clients.py [--n 300] [--delay 0.02] [--repeat 3]

Each pmap runs `processes` x `concurrency` requests at once (default 2 x 50), with one
client per worker process, made on first use (urllib has no client: a connection per
request). "cold" starts the worker processes inside the timing (no warm worker waits);
"warm" is a call while the previous call's workers still wait. The server is
benchmarks/http_server.py in a process of its own: it answers each GET after `--delay`.
Uses a throwaway Redis-compatible server on a unix socket.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbtasks
from nbtasks.pool import warm
from nbtasks.server import TemporaryServer

HERE = Path(__file__).parent

from run import http_server  # noqa: E402 (the suite's own: a server process, its base URL)

POOL = 100  # the baseline's threads
CONCURRENCY = 50  # per worker process; travels with the functions below (by value)

# One client per worker process: these functions travel by value (this is __main__), so
# each worker has its own empty dict and fills it on first use.
_clients: dict[str, Any] = {}


def with_requests(url: str) -> int:
    if "requests" not in _clients:
        import requests

        session = requests.Session()  # its pool holds as many connections as there are tasks at once
        session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=CONCURRENCY))
        _clients["requests"] = session
    return len(_clients["requests"].get(url, timeout=60).content)


def with_httpx(url: str) -> int:
    if "httpx" not in _clients:
        import httpx

        _clients["httpx"] = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=CONCURRENCY))
    return len(_clients["httpx"].get(url).content)


def with_urllib(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return len(response.read())


async def with_httpx_async(url: str) -> int:
    if "httpx" not in _clients:
        import httpx

        _clients["httpx"] = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=CONCURRENCY))
    return len((await _clients["httpx"].get(url)).content)


async def with_aiohttp(url: str) -> int:
    if "aiohttp" not in _clients:
        import aiohttp

        _clients["aiohttp"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))
    async with _clients["aiohttp"].get(url) as response:
        return len(await response.read())


CASES: list[tuple[str, str, Callable[[str], Any]]] = [
    ("requests", "eventlet", with_requests),
    ("requests", "threads", with_requests),
    ("httpx", "eventlet", with_httpx),
    ("httpx", "threads", with_httpx),
    ("urllib", "eventlet", with_urllib),
    ("urllib", "threads", with_urllib),
    ("httpx.AsyncClient", "asyncio", with_httpx_async),
    ("aiohttp", "asyncio", with_aiohttp),
]


def baseline(urls: list[str]) -> None:
    """ThreadPoolExecutor(100) + a requests Session with a pool of 100, in this process."""
    import requests

    with requests.Session() as session:
        session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL))
        with ThreadPoolExecutor(POOL) as pool:
            list(pool.map(lambda u: len(session.get(u, timeout=60).content), urls))


# The other clients the same way in this process, 100 requests at once: what each
# client costs by itself, to tell it from what pmap adds.


def threads_httpx(urls: list[str]) -> None:
    import httpx

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=POOL)) as client:
        with ThreadPoolExecutor(POOL) as pool:
            list(pool.map(lambda u: len(client.get(u).content), urls))


def threads_urllib(urls: list[str]) -> None:
    with ThreadPoolExecutor(POOL) as pool:
        list(pool.map(with_urllib, urls))


async def gather_httpx(urls: list[str]) -> None:
    import httpx

    gate = asyncio.Semaphore(POOL)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=POOL)) as client:

        async def one(u: str) -> int:
            async with gate:
                return len((await client.get(u)).content)

        await asyncio.gather(*(one(u) for u in urls))


async def gather_aiohttp(urls: list[str]) -> None:
    import aiohttp

    gate = asyncio.Semaphore(POOL)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL)) as session:

        async def one(u: str) -> int:
            async with gate, session.get(u) as response:
                return len(await response.read())

        await asyncio.gather(*(one(u) for u in urls))


REFERENCES: list[tuple[str, str, Callable[[list[str]], object]]] = [
    ("httpx", f"ThreadPoolExecutor({POOL}), in-process", threads_httpx),
    ("urllib", f"ThreadPoolExecutor({POOL}), in-process", threads_urllib),
    ("httpx.AsyncClient", f"asyncio.gather, {POOL} at once, in-process", lambda urls: asyncio.run(gather_httpx(urls))),
    ("aiohttp", f"asyncio.gather, {POOL} at once, in-process", lambda urls: asyncio.run(gather_aiohttp(urls))),
]


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


def cold_and_warm(call: Callable[[], object], repeat: int) -> tuple[float, float]:
    cold = best(call, repeat, setup=warm.close_all)
    call()  # leaves warm workers
    return cold, best(call, repeat)


Row = tuple[str, str, float, float | None]  # client, where it runs, seconds (cold), seconds warm


def measure(args: argparse.Namespace) -> list[Row]:
    """The baseline first, then the in-process references, then pmap on each backend."""
    rows: list[Row] = []
    with TemporaryServer() as redis_url, http_server(args.delay) as site:
        urls = [f"{site}/page/{i}" for i in range(args.n)]
        rows.append(
            ("requests", f"ThreadPoolExecutor({POOL}), in-process", best(lambda: baseline(urls), args.repeat), None)
        )
        for client, how, run in REFERENCES:
            rows.append((client, how, best(functools.partial(run, urls), args.repeat), None))
        for client, backend, func in CASES:

            def call(func: Callable[[str], Any] = func, backend: str = backend) -> object:
                return nbtasks.pmap(
                    func, urls, backend=backend, processes=args.processes, concurrency=CONCURRENCY,
                    redis=redis_url, fresh=True, progress=False,
                )  # fmt: skip

            cold, warm = cold_and_warm(call, args.repeat)
            rows.append((client, f"pmap, backend={backend!r}", cold, warm))
        warm.close_all()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="GETs per run")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds the server waits before each answer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    rows = measure(args)
    reference = rows[0][2]
    ideal = args.n * args.delay / min(POOL, args.processes * CONCURRENCY)
    print(
        f"\n{args.n} GETs, the server answers each after {args.delay * 1000:.0f} ms (100 at once: {ideal:.2f} s at "
        f"best); pmap: {args.processes} processes x {CONCURRENCY}, one client per process; best of {args.repeat}; "
        "cold: worker processes started in the timing, warm: the previous call's workers waiting; "
        "x base: to the first row\n"
    )
    print(f"{'client':18} {'runs on':42} {'cold s':>8} {'x base':>7} {'warm s':>8} {'x base':>7}")
    for client, where, seconds, warm_s in rows:
        then = "" if warm_s is None else f"{warm_s:8.3f} {warm_s / reference:7.2f}"
        print(f"{client:18} {where:42} {seconds:8.3f} {seconds / reference:7.2f} {then}")


if __name__ == "__main__":
    main()
