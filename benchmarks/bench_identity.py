"""What a job's identity costs: the digest of the function (with what it reads) and of the
inputs, against the whole call, in the same run.

    .venv/bin/python benchmarks/bench_identity.py [--repeat 3] [--n 100000] [--against REF]

1. A 100,000-item call whose results are all stored (the same call again): the identity's
   share of the call, and the call against one pipelined read of the results (the floor).
2. The same inputs in another order (a list never seen, every input stored): each input's
   digest is computed and looked up.
3. A function that captures a 200 MB numpy array, called again on 10 stored items: the
   identity's share, and the serialized function (bytes a call produces anyway).

With ``--against REF`` (a commit, e.g. the one before identities), the same call again is
also timed with nbtasks as it was at REF, checked out in a temporary worktree and run in
its own process and server, for the ratio new / old.

Uses a throwaway Redis-compatible server on a unix socket.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import redis

import nbtasks
from nbtasks import codec, identity
from nbtasks.server import TemporaryServer
from nbtasks.store import JobKeys

big = np.zeros(25_000_000)  # 200 MB of float64


def noop(x: int) -> int:
    return x


def pick(i: int) -> float:
    return float(big[i])


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def floor(url: str, job: str, n: int) -> Callable[[], object]:
    """One pipelined read of the n stored results, as redis-py does it at best."""
    client = redis.Redis.from_url(url)
    key = JobKeys(job).results

    def read() -> object:
        pipe = client.pipeline(transaction=False)
        for start in range(0, n, 1000):
            pipe.hmget(key, list(range(start, min(start + 1000, n))))
        return [v for chunk in pipe.execute() for v in chunk]

    return read


# The measures taken with the code under test and, with --against, with an earlier commit.
MEASURES = """
import time, nbtasks, numpy as np, redis
from nbtasks.server import TemporaryServer
big = np.zeros(25_000_000)
def noop(x):
    return x
def pick(i):
    return float(big[i])
def best(call):
    times = []
    for _ in range({repeat}):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)
def again(func, items, url):
    nbtasks.pmap(func, items, redis=url, progress=False)
    return best(lambda: nbtasks.pmap(func, items, redis=url, progress=False))
def memory(url):
    client = redis.Redis.from_url(url)
    before = client.info("memory")["used_memory"]
    nbtasks.pmap(noop, range(200_000), redis=url, progress=False)
    return (client.info("memory")["used_memory"] - before) / 200_000
with TemporaryServer() as url:
    items = list(range({n}))
    first = best(lambda: nbtasks.pmap(noop, items, redis=url, fresh=True, progress=False))
    print(again(noop, items, url), again(pick, list(range(10)), url), first)
with TemporaryServer() as url:
    print(memory(url))
"""


def measures_at(ref: str | None, n: int, repeat: int) -> list[float]:
    """The same call again (n items; the 200 MB array), a first call of n new items and
    the Redis memory per finished item, in a process of its own: with the code here, or
    with nbtasks as it was at `ref` (a git worktree)."""
    code = MEASURES.format(n=n, repeat=repeat)
    if ref is None:
        return _measure(code, {})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="nbtasks-ref-") as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "-C", root, "worktree", "add", "-q", "--detach", tree, ref], check=True)
        try:
            return _measure(code, {"PYTHONPATH": tree})
        finally:
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", tree], check=True)


def _measure(code: str, env: dict[str, str]) -> list[float]:
    # Run from a folder of its own: `python -c` puts the working folder first on the
    # import path, where a checkout's own nbtasks would shadow the one under test.
    with tempfile.TemporaryDirectory(prefix="nbtasks-measure-") as here:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        )
    return [float(x) for x in out.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--against", metavar="REF", help="also time the same call again at this commit")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat
    rows: list[tuple[str, str, float, str]] = []
    with TemporaryServer() as url:
        items = list(range(n))
        nbtasks.pmap(noop, items, redis=url, progress=False)
        job = nbtasks.jobs(redis=url)[0].name
        again = best(lambda: nbtasks.pmap(noop, items, redis=url, progress=False), repeat)
        ident = best(lambda: (identity.identify(noop), identity.list_digest(items)), repeat)
        read = best(floor(url, job, n), repeat)
        shuffled = random.Random(1).sample(items, n)
        other_order = best(lambda: nbtasks.pmap(noop, shuffled, redis=url, progress=False), repeat)
        what = f"{n:,} stored items"
        rows += [
            (what, "one pipelined read of the results (floor)", read, "1.00x"),
            (what, "pmap, the same call again", again, f"{again / read:.2f}x"),
            (what, "  of which identity (function + list)", ident, f"{100 * ident / (again - ident):.1f} % added"),
            (what, "pmap, the same inputs shuffled", other_order, f"{other_order / read:.2f}x"),
        ]
        new = measures_at(None, n, repeat)
        old = measures_at(args.against, n, repeat) if args.against else None
        if old is not None:  # both measured the same way: each in a process of its own
            rows.append((what, "pmap, the same call again, in its own process", new[0], "1.00x"))
            rows.append((what, f"pmap, the same call again, at {args.against[:12]}", old[0], f"{new[0] / old[0]:.2f}x"))

        nbtasks.pmap(pick, range(10), redis=url, progress=False)
        call = best(lambda: nbtasks.pmap(pick, range(10), redis=url, progress=False), repeat)
        ident = best(lambda: identity.identify(pick), repeat)
        payload = best(lambda: codec.dump_function(pick), repeat)
        what = "a captured 200 MB array"
        rows += [
            (what, "pmap, the same call again (10 stored items)", call, "1.00x"),
            (what, "  of which identity (hashes the array once)", ident, f"{ident / call:.2f}x"),
            (what, "  the function's pickle (made when items run)", payload, f"{payload / call:.2f}x"),
        ]
        if old is not None:
            rows.append((what, "pmap, the same call again, in its own process", new[1], "1.00x"))
            rows.append((what, f"pmap, the same call again, at {args.against[:12]}", old[1], f"{new[1] / old[1]:.2f}x"))
    what = f"{n:,} new items"
    rows.append((what, "pmap, a first call (workers warm)", new[2], "1.00x"))
    if old is not None:
        rows.append((what, f"pmap, a first call, at {args.against[:12]}", old[2], f"{new[2] / old[2]:.2f}x"))
    print(f"\n{'workload':24} {'':46} {'best s':>8}  ratio (to the first row of the workload; 'at REF': new / old)")
    for workload, tool, seconds, ratio in rows:
        print(f"{workload:24} {tool:46} {seconds:8.3f}  {ratio}")
    against = f"; at {args.against[:12]}: {old[3]:.0f}" if old is not None else ""
    print(f"\nRedis memory per finished item of a 200,000-int job: {new[3]:.0f} bytes{against}")


if __name__ == "__main__":
    main()
