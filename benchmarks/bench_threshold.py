"""Where should a payload leave Redis? For results of each size (incompressible bytes),
the same pmap with every result kept in Redis (blobs="none") and with every result of
that size kept in a folder beside the server, in the same run: wall time (best of
`--repeat`, warm workers) and the server memory each result takes. NBTASKS_BLOB_MIN
(default: BLOB_MIN in nbtasks/store/payloads.py) is the smallest size from which the folder is no slower.

    .venv/bin/python benchmarks/bench_threshold.py [--repeat 3] [--megabytes 64]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path

import redis
from run import best  # (benchmarks/run.py: best of n timings)

import nbtasks
from nbtasks.pool import warm
from nbtasks.server import TemporaryServer

SIZES = [1 << 10, 2 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20]


def result(i: int, size: int) -> bytes:
    return os.urandom(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=64, help="bytes of results per call")
    args = parser.parse_args()
    rows = []
    with TemporaryServer() as url, tempfile.TemporaryDirectory(dir=Path.home()) as folder:
        client = redis.Redis.from_url(url)
        nbtasks.configure(redis_url=url, processes=2, warm=60)
        for size in SIZES:
            n = min(8000, (args.megabytes << 20) // size)
            row: list[float] = []
            for place in ("none", folder):
                nbtasks.configure(blobs=place)
                warm.close_all()  # fresh workers: they read NBTASKS_BLOB_MIN at start
                os.environ["NBTASKS_BLOB_MIN"] = str(size)

                def call(n: int = n, size: int = size) -> None:
                    task = functools.partial(result, size=size)
                    out = nbtasks.pmap(task, range(n), fresh=True, progress=False, name="threshold")
                    assert len(out) == n and len(out[0]) == size

                call()  # warm workers
                row.append(best(call, args.repeat))
                nbtasks.reset("threshold")
                after = int(client.info("memory")["used_memory"])
                call()
                used = int(client.info("memory")["used_memory"]) - after
                row.append(max(0, used) / n)
            rows.append((size, n, *row))
        warm.close_all()
        client.close()
    head = ("size", "items", "redis s", "folder s", "ratio", "redis B/item", "folder B/item")
    print("{:>8} {:>6} {:>8} {:>9} {:>6} {:>13} {:>14}".format(*head))
    for size, n, t_redis, m_redis, t_folder, m_folder in rows:
        cells = (f"{size >> 10}KB", n, f"{t_redis:.3f}", f"{t_folder:.3f}", f"{t_folder / t_redis:.2f}")
        print("{:>8} {:>6} {:>8} {:>9} {:>6} {:>13.0f} {:>14.0f}".format(*cells, m_redis, m_folder))


if __name__ == "__main__":
    main()
