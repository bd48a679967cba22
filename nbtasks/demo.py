"""``python -m nbtasks.demo``: fetch pages from a slow local HTTP server, first with a
plain for-loop, then with `pmap`, then again to show that a finished job is not redone."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .api import pmap


class SlowHandler(BaseHTTPRequestHandler):
    """Answers with the request path after ``?delay=`` seconds, counting requests: all of
    them (`hits`) and those in flight at once (`peak`)."""

    lock = threading.Lock()
    hits = 0
    in_flight = 0
    peak = 0

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        cls = type(self)
        with cls.lock:
            cls.hits += 1
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        try:
            time.sleep(float(parse_qs(urlsplit(self.path).query).get("delay", ["0"])[0]))
            body = self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args: object) -> None:
        pass


class SlowServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: hundreds of green threads connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (its worker stopped by the stop button) is no error of
        # ours: the standard library would print a traceback for each into the cell.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def slow_server() -> Iterator[str]:
    """A `SlowServer` on 127.0.0.1 in a thread; yields its base URL."""
    server = SlowServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return str(response.read().decode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nbtasks demo", description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="pages to fetch (default 2000)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds the server waits per page")
    parser.add_argument("--sample", type=int, default=40, help="pages the for-loop fetches (then extrapolated)")
    args = parser.parse_args(argv)

    # No URL: pmap uses NBTASKS_REDIS_URL if set, else its own server (started if needed).
    with slow_server() as base:
        urls = [f"{base}/page/{i}?delay={args.delay}" for i in range(args.n)]
        sample = urls[: args.sample]
        start = time.perf_counter()
        expected = [fetch(url) for url in sample]
        loop = (time.perf_counter() - start) * args.n / len(sample)
        print(f"for-loop: {len(sample)} pages in {loop * len(sample) / args.n:.2f} s")

        SlowHandler.peak = 0
        start = time.perf_counter()
        pages = pmap(fetch, urls, fresh=True)
        parallel = time.perf_counter() - start
        assert pages[: len(expected)] == expected and len(pages) == args.n
        peak = SlowHandler.peak

        start = time.perf_counter()
        pmap(fetch, urls, progress=False)
        again = time.perf_counter() - start

    print()
    print(f"{args.n} pages, each answered after {args.delay * 1000:.0f} ms by a local HTTP server")
    print(f"  for-loop (extrapolated from {len(sample)})  {loop:8.2f} s")
    speedup = loop / parallel
    print(f"  nbtasks.pmap                    {parallel:8.2f} s   {speedup:6.1f}x faster, {peak} requests at once")
    print(f"  the same pmap call again        {again:8.2f} s   (finished job: stored results, nothing re-run)")


if __name__ == "__main__":
    main()
