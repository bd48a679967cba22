"""Millions of items through `imap` from a generator: the time, the caller's memory and
the server's, as the issue on per-item costs set them (10 million no-ops: the caller
grows by at most 300 MB, Redis holds at most 1 GB).

    .venv/bin/python benchmarks/bench_millions.py [--items 10000000]

Uses a throwaway server (the one nbtasks would start) on a unix socket. The caller's
resident memory is sampled every 20 ms by a thread; Redis's is its used_memory_peak.
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil
import redis

import nbtasks
from nbtasks.server import TemporaryServer


def noop(x: int) -> int:
    return x


def measure(n: int) -> dict[str, float]:
    """Map `n` no-ops from a generator through imap on a throwaway server: seconds in all,
    to the first result, the caller's peak RSS growth and Redis's peak and final memory
    (bytes above the empty server's)."""
    me = psutil.Process()
    with TemporaryServer() as url:
        client = redis.Redis.from_url(url)
        server_start = int(client.info("memory")["used_memory"])
        start_rss = peak_rss = me.memory_info().rss
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_rss
            while not done.wait(0.02):
                peak_rss = max(peak_rss, me.memory_info().rss)

        threading.Thread(target=sample, daemon=True).start()
        started = time.perf_counter()
        first = 0.0
        count = 0
        for count, result in enumerate(nbtasks.imap(noop, (i for i in range(n)), redis=url, progress=False), 1):
            if count == 1:
                first = time.perf_counter() - started
            assert result == count - 1
        seconds = time.perf_counter() - started
        done.set()
        memory = client.info("memory")
        client.close()
    assert count == n
    return {
        "seconds": seconds,
        "first": first,
        "caller_growth": peak_rss - start_rss,
        "redis_peak": int(memory["used_memory_peak"]) - server_start,
        "redis_after": int(memory["used_memory"]) - server_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000_000)
    n = parser.parse_args().items
    m = measure(n)
    rows = [
        ("items", f"{n:,}"),
        ("time, end to end", f"{m['seconds']:.1f} s ({n / m['seconds']:,.0f} items/s)"),
        ("first result after", f"{m['first']:.1f} s (the inputs are stored first)"),
        ("caller's peak memory growth", f"{m['caller_growth'] / 2**20:.0f} MiB (target <= 300 MB)"),
        ("Redis used_memory, peak", f"{m['redis_peak'] / 2**20:.0f} MiB (target <= 1 GB)"),
        ("Redis used_memory, finished job", f"{m['redis_after'] / 2**20:.0f} MiB"),
    ]
    for name, value in rows:
        print(f"{name:34} {value}")


if __name__ == "__main__":
    main()
