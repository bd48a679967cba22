"""A crawl: 2,000 pages of 108 KB fetched with requests from a local HTTP server that
answers each GET after 50 ms (its own process, asyncio, a listen backlog of 4,096, so
that 400 connections at once overflow nothing). Each page is HTML-like text made for its
URL (benchmarks/bench_pages.py), compressing like real HTML. The task is the one a
notebook would hold, ``requests.get(url).text``, the same for every tool:
ThreadPoolExecutor(400).map, ThreadPoolExecutor(64).map and `nbtasks.pmap` with its
defaults, each after one untimed call (threads made, workers warm, as in a notebook's
second cell), then best of `--repeat`. Prints wall seconds and the ratio of each to the
better executor (the target for pmap: within 1.1x).

    .venv/bin/python benchmarks/bench_crawl.py [--repeat 3] [--pages 2000] [--size 108] [--delay 0.05]
    .venv/bin/python benchmarks/bench_crawl.py --home DIR   # the embedded durable server in DIR

Uses a throwaway server (the one nbtasks would start) unless `--home` is given; with
`--home`, the job is deleted at the end, and the server stopped if this started it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests

HERE = Path(__file__).parent
JOB = "bench-crawl"


def fetch(url: str) -> str:
    """The task: one page, as text (the server says utf-8, so no charset guessing)."""
    response = requests.get(url, timeout=60)
    response.raise_for_status()
    return response.text


# -- the server (its own process: `bench_crawl.py --serve`) ------------------------------


def _response(body: str) -> bytes:
    data = body.encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


async def _handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Callable[[bytes], bytes], delay: float
) -> None:
    try:
        while True:  # keep-alive: one request after another on a connection
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1]
            await asyncio.sleep(delay)
            writer.write(answer(path))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()


async def _serve(pages: int, size: int, delay: float) -> None:
    from bench_pages import html_page

    # Made before the port is printed, so that serving costs no more than a send.
    made = {f"/page/{i}".encode(): _response(html_page(i, size)) for i in range(pages)}

    def answer(path: bytes) -> bytes:
        return made.get(path) or _response(html_page(zlib.crc32(path), size))

    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, answer, delay), "127.0.0.1", 0, backlog=4096, reuse_address=True
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


@contextmanager
def http_server(pages: int, kb: int, delay: float) -> Iterator[str]:
    """The server in a process of its own; yields its base URL."""
    cmd = [sys.executable, __file__, "--serve", "--pages", str(pages), "--size", str(kb), "--delay", str(delay)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the HTTP server did not start (exit code {proc.poll()})")
        port = int(line)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the client --------------------------------------------------------------------------


@contextmanager
def store(home: str | None) -> Iterator[None]:
    """A throwaway server for nbtasks, or (with `home`) the embedded durable one there."""
    import nbtasks
    import nbtasks.server

    if home is None:
        with nbtasks.server.TemporaryServer() as url:
            nbtasks.configure(redis_url=url)
            yield
        return
    folder = Path(home)
    was_running = nbtasks.server.status(folder).running
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            nbtasks.reset(JOB)
        if not was_running:
            nbtasks.server.stop(folder)


def close_warm_workers() -> None:
    """Let the warm workers of the last run go now rather than after `warm` seconds."""
    with contextlib.suppress(ImportError, AttributeError):
        from nbtasks.pool import warm

        warm.close_all()


def crawl(urls: list[str], expected: int, repeat: int) -> list[tuple[str, float]]:
    """(tool, best wall seconds) of each tool, every result checked."""
    from run import best  # (benchmarks/run.py: best of n timings; imports nbtasks)

    import nbtasks

    def checked(run: Callable[[], list[str]]) -> Callable[[], None]:
        def timed() -> None:
            out = run()
            assert len(out) == len(urls) and sum(map(len, out)) == expected, "incomplete results"

        return timed

    timings = []
    for threads in (400, 64):
        with ThreadPoolExecutor(threads) as pool:
            run = checked(functools.partial(lambda pool: list(pool.map(fetch, urls)), pool))
            run()  # threads made, as a notebook's second call would find them
            timings.append((f"ThreadPoolExecutor({threads}).map", best(run, repeat)))
    run = checked(lambda: nbtasks.pmap(fetch, urls, name=JOB, fresh=True, progress=False))
    run()  # warm workers, as in a notebook's second cell
    timings.append(("nbtasks.pmap, defaults, warm workers", best(run, repeat)))
    close_warm_workers()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=108, help="KB per page")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds the server takes per GET")
    parser.add_argument("--home", help="use the embedded durable server in this folder, not a throwaway one")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # (the server's own process)
    args = parser.parse_args()
    size = args.size << 10
    if args.serve:
        asyncio.run(_serve(args.pages, size, args.delay))
        return
    if args.home:
        os.environ["NBTASKS_HOME"] = str(Path(args.home).resolve())  # before nbtasks is imported
        os.environ.pop("NBTASKS_REDIS_URL", None)
    with http_server(args.pages, args.size, args.delay) as base, store(args.home):
        urls = [f"{base}/page/{i}" for i in range(args.pages)]
        timings = crawl(urls, args.pages * size, args.repeat)
    reference = min(t for tool, t in timings if tool.startswith("ThreadPool"))
    where = f"embedded server in {args.home}" if args.home else "throwaway server"
    print(f"\n{args.pages:,} pages of {args.size} KB, {args.delay * 1000:.0f} ms each ({where}), best of {args.repeat}")
    print(f"{'tool':38} {'wall s':>8} {'pages/s':>9} {'MB/s':>7} {'x best executor':>16}")
    for tool, seconds in timings:
        rate = args.pages / seconds
        print(f"{tool:38} {seconds:8.2f} {rate:9,.0f} {rate * size / 1e6:7.0f} {seconds / reference:16.2f}")


if __name__ == "__main__":
    main()
