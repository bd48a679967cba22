"""A polite crawl, judged at the servers: three hosts (HTTP servers on 127.0.0.1, .2 and
.3, answering after 0.05 s, 0.3 s and 0.45 s; tests/hosts.py) crawled by `pmap` with
``limit=Limit(concurrency=4, rate="10/s")``, then once more with one host answering 429
(Retry-After: 1) to its first 20 requests, and once without a limit (the baseline: what
the same crawl does to the servers with the defaults). Per host it prints what its server
saw: requests, the most at once, the most starts within one second, the time from its
first request to its last answer, and that time as a ratio of the least its limits allow
(its starts at the rate, or its answers 4 at a time, whichever is slower).

    .venv/bin/python benchmarks/bench_polite.py [--pages 150] [--json FILE]

Runs against a throwaway server (the one nbtasks would start), stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # (tests.hosts: the recording servers)

import nbtasks  # noqa: E402
import nbtasks.server  # noqa: E402
from tests.hosts import Host, fetch, serving  # noqa: E402

CONCURRENCY, RATE = 4, 10.0


def crawl(pages: int, limit: nbtasks.Limit | None, refuse: int = 0) -> tuple[float, list[Host], int]:
    """One crawl of `pages` per host: seconds, the hosts as their servers saw it, failures."""
    hosts = [Host("127.0.0.1", 0.05), Host("127.0.0.2", 0.3), Host("127.0.0.3", 0.45, refuse=refuse)]
    with serving(*hosts):
        urls = [host.url(f"p{i}") for i in range(pages) for host in hosts]
        began = time.time()
        got = nbtasks.pmap(fetch, urls, limit=limit, fresh=True, progress=False, errors="return")
        took = time.time() - began
    return took, hosts, sum(isinstance(g, nbtasks.Failure) for g in got)


def least(host: Host, pages: int) -> float:
    return max((pages - 1) / RATE, pages * host.delay / CONCURRENCY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=150, help="pages per host (default 150)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    limit = nbtasks.Limit(concurrency=CONCURRENCY, rate=f"{RATE:g}/s")
    rows, figures = [], []
    runs = (("Limit(4, 10/s)", limit, 0), ("  + 429 x 20", limit, 20), ("no limit", None, 0))
    with nbtasks.server.TemporaryServer() as url:
        nbtasks.configure(redis_url=url)
        crawls = [(name, *crawl(args.pages, chosen, refuse)) for name, chosen, refuse in runs]
    for name, took, hosts, failed in crawls:
        for host in hosts:
            ratio = host.span() / least(host, args.pages)
            refused = sum(v.status == 429 for v in host.visits)
            row = [name, host.address, len(host.visits), refused, host.peak, host.peak_starts(), host.span(), ratio]
            rows.append(row)
            names = ("crawl", "host", "requests", "refused", "at_once", "starts_1s", "span", "ratio")
            figures.append(dict(zip(names, row, strict=True)))
        rows.append([name, "whole crawl", "", "", "", "", took, f"{failed} failed"])
        figures.append({"crawl": name, "host": "all", "span": took, "failed": failed})
    header = ["crawl", "host", "requests", "429", "most at once", "most starts in 1 s", "span s", "span / least"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in row))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
