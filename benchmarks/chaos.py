"""The chaos test: a job of short network-like tasks while workers are SIGKILLed every
second, the Redis server is killed and restarted twice, and the calling process is
killed and started again once. Then, Jepsen-style, every execution logged by the tasks
is checked against what Redis recorded and what the caller returned.

    .venv/bin/python benchmarks/chaos.py [-n 20000] [--json results.json]

The test suite runs `run_chaos` at a small scale (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import redis

from nbtasks import server
from nbtasks.store import JobKeys
from nbtasks.store.chunks import open_chunk

CALLER = """
import json, os, random, sys, time
import nbtasks

url, n, log, concurrency, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]

def task(i):
    time.sleep(((i * 7919) % 41 + 10) / 1000)  # 10 to 50 ms of waiting, as on a network
    run = f"{os.getpid()}-{random.getrandbits(40)}"
    with open(log, "a") as f:  # one short O_APPEND write per execution
        f.write(f"{i} {run}\\n")
    return i * i, run

results = nbtasks.pmap(task, range(n), name="chaos", redis=url, concurrency=concurrency, progress=False)
with open(out, "w") as f:
    json.dump(results, f)
"""


@dataclass
class Report:
    tasks: int
    seconds: float
    workers_killed: int
    redis_restarts: int
    caller_kills: int
    caller_failures: int  # caller runs that ended in an error and were started again
    caller_errors: list[str]  # the last line each of those printed
    lost: int  # items without a result in what the caller returned
    wrong: int  # results that are not f(i), or that no logged execution produced
    recorded_twice: int  # counter increments beyond the items with a done bit
    results_without_bit: int  # stored results whose done bit is not set, or the reverse
    packed: int  # results the store holds packed in chunks (see nbtasks.store.chunks)
    executions: int
    duplicate_executions: int  # executions beyond one per item (at least once: allowed)


def run_chaos(n: int, folder: Path, concurrency: int = 20, kill_every: float = 1.0) -> Report:
    """Run the job under chaos in `folder`; events are placed by progress, so a slow
    machine sees the same story, only slower."""
    redis_dir, log, out, script = folder / "redis", folder / "executions.log", folder / "out.json", folder / "caller.py"
    script.write_text(CALLER)
    extra = ["--appendonly", "yes", "--appendfsync", "everysec"]
    proc = server.launch(redis_dir, extra=extra)
    url = server.url_for(redis_dir)
    client = redis.Redis.from_url(url, socket_timeout=2)
    caller_cmd = [sys.executable, str(script), url, str(n), str(log), str(concurrency), str(out)]
    caller = subprocess.Popen(caller_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    restarts_at, caller_kill_at = [0.25, 0.6], 0.45
    counts = Counter[str]()
    errors: list[str] = []
    started = last_kill = time.monotonic()
    try:
        while True:
            if caller.poll() is not None:
                _, err = caller.communicate()
                if caller.returncode == 0:
                    break
                counts["caller_failures"] += 1
                errors.append((err.decode().strip().splitlines() or ["?"])[-1])
                caller = subprocess.Popen(caller_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.05)
            done = _done(client) / n
            if time.monotonic() - last_kill >= kill_every and _kill_a_worker():
                counts["workers_killed"] += 1
                last_kill = time.monotonic()
            if restarts_at and done >= restarts_at[0]:
                restarts_at.pop(0)
                proc.kill()
                proc.wait()
                proc = server.launch(redis_dir, extra=extra)
                counts["redis_restarts"] += 1
            if caller_kill_at and done >= caller_kill_at:
                caller_kill_at = 0
                caller.kill()
                caller.communicate()
                caller = subprocess.Popen(caller_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                counts["caller_kills"] += 1
        seconds = time.monotonic() - started
        return _check(client, n, log, out, seconds, counts, errors)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.communicate()
        client.close()
        proc.kill()
        proc.wait()


def _done(client: redis.Redis) -> int:
    try:
        return int(client.bitcount(JobKeys("chaos").done))
    except redis.RedisError:
        return 0  # restarting


def _kill_a_worker() -> bool:
    pids = []
    for proc in psutil.process_iter():
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        if "nbtasks.worker" in argv and "chaos" in argv:
            pids.append(proc.pid)
    if not pids:
        return False
    try:
        os.kill(random.choice(pids), signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def stored_results(client: redis.Redis, key: str) -> tuple[int, int]:
    """How many results the hash `key` holds: in all, and of those, packed in chunks."""
    own = packed = 0
    for name, value in client.hscan_iter(key):
        if name.startswith(b"c"):
            packed += sum(p is not None for p in open_chunk(value))
        else:
            own += 1
    return own + packed, packed


def _check(
    client: redis.Redis, n: int, log: Path, out: Path, seconds: float, counts: Counter[str], errors: list[str]
) -> Report:
    runs: dict[int, set[str]] = {}
    executions = 0
    for line in log.read_text().splitlines():
        index, run = line.split()
        runs.setdefault(int(index), set()).add(run)
        executions += 1
    results = json.loads(out.read_text())
    lost = n - len(results) + sum(1 for r in results if r is None)
    wrong = sum(1 for i, r in enumerate(results) if r is not None and (r[0] != i * i or r[1] not in runs.get(i, ())))
    k = JobKeys("chaos")
    bits = int(client.bitcount(k.done))
    recorded_twice = int(client.hget(k.counts, "done") or 0) - bits
    stored, packed = stored_results(client, k.results)
    results_without_bit = stored - bits
    return Report(
        tasks=n,
        seconds=round(seconds, 1),
        workers_killed=counts["workers_killed"],
        redis_restarts=counts["redis_restarts"],
        caller_kills=counts["caller_kills"],
        caller_failures=counts["caller_failures"],
        caller_errors=errors,
        lost=lost,
        wrong=wrong,
        recorded_twice=recorded_twice,
        results_without_bit=results_without_bit,
        packed=packed,
        executions=executions,
        duplicate_executions=executions - len(runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000, help="tasks (default 20,000)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbtasks-chaos-") as tmp:
        report = run_chaos(args.n, Path(tmp))
    for field, value in asdict(report).items():
        print(f"{field:22} {value}")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
