"""Polite crawls as users run them: `pmap(fetch, urls, limit=Limit(...))` against three
real HTTP servers on 127.0.0.1, .2 and .3 (three hosts to a crawler), judged by what the
servers saw: requests in flight at once, starts in any one second, backoffs obeyed, and
limits kept across a worker killed mid-crawl and across every process of a job.

(The store's steps under limits run on both servers in test_limits; these crawls take
tens of seconds each, paced by their limits, so they run on the embedded one only.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

import nbtasks
from nbtasks.job import dashboard
from nbtasks.store import JobKeys, open_store

from .conftest import wait_until, worker_children
from .hosts import Host, fetch, serving
from .test_remote import ROOT, service

ONE_SERVER = True
POLITE = nbtasks.Limit(concurrency=4, rate="10/s")


def page(url: str) -> bytes:
    """What the servers answer for `url`: its path."""
    return ("/" + url.split("/", 3)[3]).encode()


def required(host: Host, items: int, concurrency: int, rate: float) -> float:
    """Seconds a host's share needs at least under its limits: its starts at `rate`, or
    its answers `concurrency` at a time, whichever is slower."""
    return max((items - 1) / rate, items * host.delay / concurrency)


def test_a_crawl_keeps_each_hosts_limits_and_hosts_run_side_by_side(r: redis.Redis) -> None:
    hosts = (Host("127.0.0.1", delay=0.05), Host("127.0.0.2", delay=0.3), Host("127.0.0.3", delay=0.45))
    with serving(*hosts):
        urls = [host.url(f"p{i}") for i in range(150) for host in hosts]
        began = time.time()
        pages = nbtasks.pmap(fetch, urls, limit=POLITE, progress=False)
        took = time.time() - began
    assert pages == [page(url) for url in urls]
    for host in hosts:
        assert len(host.answered()) == 150
        assert host.peak <= 4, f"{host.address}: {host.peak} requests at once"
        assert host.peak_starts() <= 11, f"{host.address}: {host.peak_starts()} starts within one second"
    assert hosts[2].peak == 4, "the slow host's share is bound by its concurrency: it had 4 at once"
    # Hosts run side by side: the crawl takes the slowest host's share, not the sum.
    start_up = min(v.arrived for host in hosts for v in host.visits) - began
    slowest = max(required(host, 150, 4, 10) for host in hosts)
    assert took <= start_up + slowest * 1.1 + 2.0, (took, start_up, slowest, [h.span() for h in hosts])


def test_a_host_that_answers_429_is_backed_off_and_nothing_fails(r: redis.Redis, redis_server) -> None:
    hosts = (Host("127.0.0.1", 0.05), Host("127.0.0.2", 0.05), Host("127.0.0.3", 0.05, refuse=20, retry_after="1"))
    with serving(*hosts):
        urls = [host.url(f"p{i}") for i in range(40) for host in hosts]
        job = nbtasks.pmap(fetch, urls, limit=POLITE, progress=False, background=True)
        # While it backs off, status and the dashboard say so (and show the busiest keys).
        wait_until(lambda: nbtasks.jobs()[0].backing_off, 30, "a key backing off in status")
        board = dashboard(open_store(redis_server.url), [job.name])
        wait_until(
            lambda: board.refresh() is not None and "backing off: 127.0.0.3" in board.rows[job.name].numbers.value,
            30,
            "the dashboard's row to show the key backing off",
        )
        shown = subprocess.run(
            [sys.executable, "-m", "nbtasks", "status", job.name, "--redis", redis_server.url],
            capture_output=True, text=True, cwd=ROOT, check=True,
        ).stdout  # fmt: skip
        pages = job.result()
    assert pages == [page(url) for url in urls]
    assert "backing off: 127.0.0.3 for" in shown and "busiest keys: " in shown, shown
    refusing = hosts[2]
    assert [v.status for v in refusing.visits].count(429) == 20 and len(refusing.answered()) == 40
    # After each 429 the host heard nothing for the second it asked for.
    arrivals = [v.arrived for v in refusing.visits]
    gaps = [after - before for before, after in zip(arrivals[:20], arrivals[1:21], strict=True)]
    assert min(gaps) >= 0.95, gaps
    # The other hosts went on meanwhile: done in their own share, long before host 3.
    for host in hosts[:2]:
        assert host.span() <= required(host, 40, 4, 10) + 1.5, host.span()
        assert max(v.ended for v in host.visits) < max(v.ended for v in refusing.visits) - 10
    assert job.counts().failed == 0 and r.hlen(JobKeys(job.name).attempts) == 0


def test_a_worker_killed_mid_crawl_gives_its_slots_back(r: redis.Redis) -> None:
    host = Host("127.0.0.2", delay=0.5)
    with serving(host):
        urls = [host.url(f"p{i}") for i in range(48)]
        job = nbtasks.pmap(fetch, urls, limit=nbtasks.Limit(concurrency=4), progress=False, background=True)

        def sender_in_flight() -> int | None:
            with host.lock:
                busy = {v.sender for v in host.visits if v.status == 0} & {str(p) for p in worker_children()}
            return int(busy.pop()) if busy else None

        wait_until(lambda: sender_in_flight() is not None and len(host.visits) >= 8, 30, "a worker mid-request")
        victim = sender_in_flight()
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        pages = job.result()
    assert pages == [page(url) for url in urls]
    # (The server finishes what the dead worker asked for on its own time: those requests
    # overlap the ones that took their slots, and are not counted.)
    living = [v for v in host.visits if v.sender != str(victim)]
    assert host.most_at_once(living) <= 4
    # Had its slots stayed taken, the crawl would have gone on with fewer at once.
    most = host.most_at_once([v for v in living if v.arrived > killed + 1.0])
    assert most == 4, f"at most {most} at once after the kill"
    assert r.hgetall(JobKeys(job.name).keyrun) == {}, "slots still counted as taken"


def test_every_process_of_a_job_and_a_joining_worker_share_the_limits(r: redis.Redis, redis_server) -> None:
    hosts = (Host("127.0.0.1", delay=0.3), Host("127.0.0.2", delay=0.02))
    limit = nbtasks.Limit(concurrency=4, rate="20/s")
    with serving(*hosts):
        urls = [host.url(f"p{i}") for i in range(120) for host in hosts]
        job = nbtasks.pmap(fetch, urls, limit=limit, name="shared-crawl", processes=2, progress=False, background=True)
        with service(redis_server.url, "--job", "shared-crawl"):
            # (the job's own workers are this process's children; the joining one is not)
            wait_until(
                lambda: {v.sender for h in hosts for v in h.visits} - {str(p) for p in worker_children()} - {""},
                60,
                "the joining worker's first request",
            )
            pages = job.result()
    assert pages == [page(url) for url in urls]
    senders = {v.sender for host in hosts for v in host.visits}
    assert len(senders) >= 3, senders
    for host in hosts:
        assert host.peak <= 4, f"{host.address}: {host.peak} at once"
        assert host.peak_starts() <= 21, f"{host.address}: {host.peak_starts()} starts within one second"


def test_imap_over_a_generator_keeps_the_limits_and_a_second_call_asks_nothing(r: redis.Redis) -> None:
    hosts = (Host("127.0.0.1", delay=0.15), Host("127.0.0.2", delay=0.15))
    limit = nbtasks.Limit(concurrency=2)

    def urls() -> Iterator[str]:  # read lazily, as from a file or a paginated API
        for i in range(20):
            for host in hosts:
                yield host.url(f"p{i}")

    with serving(*hosts):
        pages, answered_at_first = [], -1
        for got in nbtasks.imap(fetch, urls(), limit=limit, progress=False):
            if not pages:
                answered_at_first = sum(len(host.answered()) for host in hosts)
            pages.append(got)
        assert pages == [page(url) for url in urls()]
        assert 0 < answered_at_first < 40, "imap waited for the whole crawl before its first result"
        for host in hosts:
            assert len(host.answered()) == 20 and host.peak == 2, (host.address, host.peak)
        asked = sum(len(host.visits) for host in hosts)
        assert list(nbtasks.imap(fetch, urls(), limit=limit, progress=False)) == pages
        assert sum(len(host.visits) for host in hosts) == asked, "the same call again asked the hosts"


def test_a_script_crawls_under_its_limit(r: redis.Redis, redis_server, tmp_path) -> None:
    host = Host("127.0.0.3", delay=0.2)
    script = Path(__file__).parent / "scripts" / "polite.py"
    env = {**os.environ, "CRAWL_REDIS": redis_server.url}
    with serving(host):
        (tmp_path / "urls.txt").write_text("".join(host.url(f"p{i}") + "\n" for i in range(30)))
        for verb in (["add", str(tmp_path / "urls.txt")], ["run"]):
            done = subprocess.run([sys.executable, str(script), *verb], env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
    assert "30 of 30 done, 0 failed" in done.stdout
    assert len(host.answered()) == 30 and host.peak <= 2 and host.peak_starts() <= 21, host.peak
