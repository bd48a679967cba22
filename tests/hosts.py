"""Real HTTP servers on several loopback addresses (127.0.0.1, 127.0.0.2, ...: distinct
hosts to a crawler), each recording what a polite client is judged by: every request's
arrival and end, the requests in flight at once, and which process sent it; and the
task that crawls them (`fetch`)."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import nbtasks


def fetch(url: str) -> bytes:
    """What a crawl's task does: GET the page, saying which process asks (``?pid=``); a
    429 asks the host to pause."""
    try:
        with urllib.request.urlopen(f"{url}?pid={os.getpid()}", timeout=120) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            raise nbtasks.Backoff(exc.headers.get("Retry-After")) from None
        raise


@dataclass
class Visit:
    arrived: float  # time.time() at this server
    ended: float
    path: str
    sender: str  # the ?pid= the task sent
    status: int


@dataclass
class Host:
    """One server: `delay` seconds per answer; its first `refuse` requests get 429 with
    Retry-After: `retry_after`."""

    address: str
    delay: float = 0.0
    refuse: int = 0
    retry_after: str = "1"
    visits: list[Visit] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}/{path}"

    def peak_starts(self, window: float = 1.0) -> int:
        """The most requests that arrived within any `window` seconds."""
        times = sorted(v.arrived for v in self.visits)
        most, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= window:
                first += 1
            most = max(most, last - first + 1)
        return most

    def most_at_once(self, visits: list[Visit] | None = None) -> int:
        """The most of `visits` (default: all) in flight at one time, from their times."""
        visits = self.visits if visits is None else visits
        return max((sum(1 for w in visits if w.arrived <= v.arrived < w.ended) for v in visits), default=0)

    def answered(self) -> list[Visit]:
        return [v for v in self.visits if v.status == 200]

    def span(self) -> float:
        """Seconds from the first arrival to the last answer."""
        return max(v.ended for v in self.visits) - min(v.arrived for v in self.visits)


def _handler(host: Host) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: in flight = connections open

        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            arrived = time.time()
            query = parse_qs(urlsplit(self.path).query)
            sender = query.get("pid", [""])[0]
            with host.lock:
                host.in_flight += 1
                host.peak = max(host.peak, host.in_flight)
                number = len(host.visits)
                host.visits.append(Visit(arrived, arrived, urlsplit(self.path).path, sender, 0))  # (in flight)
            refused = number < host.refuse
            if not refused:
                time.sleep(float(query.get("delay", [host.delay])[0]))
            body = b"slow down" if refused else urlsplit(self.path).path.encode()
            status = 429 if refused else 200
            try:  # (a client killed mid-request is gone: nobody to answer)
                self.send_response(status)
                if refused:
                    self.send_header("Retry-After", host.retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                status = -1
            finally:
                with host.lock:
                    host.in_flight -= 1
                    host.visits[number] = Visit(arrived, time.time(), urlsplit(self.path).path, sender, status)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a crawl that is not polite must not be refused at accept


@contextmanager
def serving(*hosts: Host) -> Iterator[tuple[Host, ...]]:
    """Serve each host on its address (a free port each) until the block ends."""
    with ExitStack() as stack:
        for host in hosts:
            server = _Server((host.address, 0), _handler(host))
            host.port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
        yield hosts
