"""The worker loop in this process, on the threads backend, against the real server: a run
claimed, run and recorded, and how a worker leaves (its exit codes), with no process of
its own in the way. And the same exit code from a real ``python -m nbtasks.worker``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import redis

from nbtasks import backends, codec, identity
from nbtasks.define import define
from nbtasks.exits import WORKER_CANNOT_RUN, WORKER_DONE
from nbtasks.gather import gather
from nbtasks.policy import Policy
from nbtasks.store import JobKeys, open_store
from nbtasks.worker.loop import Worker

from .conftest import RedisServer, wait_until

ONE_SERVER = True  # (see conftest): the loop, not the server, is under test


def square(x: int) -> int:
    return x * x


def _job(url: str, name: str, n: int, func=square):  # type: ignore[no-untyped-def]
    store = open_store(url)
    policy = Policy(backend="threads")
    dump = lambda: codec.dump_function(func, policy.retry_on)  # noqa: E731
    spec = define(store, func, dump, identity.identify(func), list(range(n)), name=name, fresh=False, policy=policy)
    token = uuid.uuid4().hex
    store.begin_run(name, token, spec.indices, 60.0)
    return store, spec, token


def _start(worker: Worker) -> tuple[threading.Thread, list[bool]]:
    returned: list[bool] = []
    thread = threading.Thread(target=lambda: returned.append(worker.run()), daemon=True)
    thread.start()
    return thread, returned


def test_the_loop_runs_a_run_here_and_returns_once_the_caller_lets_go(r: redis.Redis, redis_server) -> None:
    store, spec, token = _job(redis_server.url, "here", 300)
    worker = Worker(store, "here", token, "here-0", 8, None, backend=backends.load("threads"))
    thread, returned = _start(worker)
    wait_until(lambda: store.done_count("here") == 300, 60, "every item recorded")
    assert thread.is_alive(), "the loop waits for the caller while it owns the job"
    store.end_run("here", token)  # the caller lets go: the owner watcher asks the loop to leave
    thread.join(30)
    assert not thread.is_alive() and returned == [False]
    assert worker.exit_code == WORKER_DONE
    assert gather(store, spec) == [x * x for x in range(300)]


GATE = threading.Event()


def held(x: int) -> int:
    GATE.wait(60)
    return x


def test_leaving_with_a_requeue_puts_the_claims_of_running_items_back(r: redis.Redis, redis_server) -> None:
    GATE.clear()
    store, _, token = _job(redis_server.url, "requeued", 50, held)
    worker = Worker(store, "requeued", token, "requeued-0", 4, None, backend=backends.load("threads"))
    thread, returned = _start(worker)
    claims = JobKeys("requeued").claims("requeued-0")
    wait_until(lambda: r.hlen(claims) == 4, 30, "four items running")
    worker.leave(requeue=True)  # as SIGTERM does, from another thread
    thread.join(30)
    GATE.set()  # (the four tasks end; their worker has left)
    assert returned == [False] and worker.exit_code == WORKER_DONE
    assert r.hlen(claims) == 0 and r.llen(JobKeys("requeued").queue) == 50, "the running four went back"


def test_a_job_that_cannot_run_here_says_why_and_leaves_with_its_own_code(r: redis.Redis, redis_server) -> None:
    store, _, token = _job(redis_server.url, "elsewhere", 10)
    store.note("elsewhere", python="2.7")
    worker = Worker(store, "elsewhere", token, "elsewhere-0", 4, None, backend=backends.load("threads"))
    assert worker.run() is False
    assert worker.exit_code == WORKER_CANNOT_RUN
    assert "stored by Python 2.7" in (store.fatal("elsewhere") or "")


def test_a_worker_process_exits_with_that_code_not_the_commands_server_code(r: redis.Redis, redis_server) -> None:
    store, _, token = _job(redis_server.url, "elsewhere", 10)
    store.note("elsewhere", python="2.7")
    cmd = [sys.executable, "-m", "nbtasks.worker", "--job", "elsewhere", "--token", token, "--wid", "w-0"]
    cmd += ["--concurrency", "2", "--backend", "threads"]
    env = {**os.environ, "NBTASKS_REDIS_URL": redis_server.url}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == WORKER_CANNOT_RUN, done.stderr
    assert "stored by Python 2.7" in (store.fatal("elsewhere") or "")


def test_a_worker_whose_caller_and_redis_are_both_gone_leaves_at_once(tmp_path, server_bin: str) -> None:
    GATE.clear()
    own = RedisServer(tmp_path / "redis", server_bin)
    try:
        store, _, token = _job(own.url, "orphan", 50, held)
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        worker = Worker(store, "orphan", token, "orphan-0", 4, None, backend=backends.load("threads"))
        worker.caller = int(gone.stdout)  # a caller that has ended: this process's parent is not it
        thread, returned = _start(worker)
        claims = JobKeys("orphan").claims("orphan-0")
        wait_until(lambda: store.client.hlen(claims) == 4, 30, "four items running")
        own.stop()
        thread.join(30)  # (it would wait Worker.OUTAGE_LIMIT, 300 s, for a Redis with a caller)
        assert not thread.is_alive() and returned == [False] and worker.exit_code == WORKER_DONE
    finally:
        GATE.set()
        own.stop()


GREEN_SENDALL = """
from nbtasks.worker.__main__ import _patch
_patch()  # as a worker process starts: eventlet, and its sendall made linear
import os, socket, eventlet
from eventlet.greenio.base import GreenSocket
a, b = socket.socketpair()
assert isinstance(a, GreenSocket)
data = os.urandom(64 << 20)  # far more than a socket buffer: many partial sends
def read():
    parts, n = [], 0
    while n < len(data):
        part = b.recv(1 << 20)
        parts.append(part)
        n += len(part)
    return b"".join(parts)
reader = eventlet.spawn(read)
a.sendall(data)
a.sendall(b"")  # nothing to send is fine too
print(reader.wait() == data)
"""


def test_a_workers_green_sendall_sends_a_large_buffer_whole_and_in_order() -> None:
    done = subprocess.run([sys.executable, "-c", GREEN_SENDALL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
