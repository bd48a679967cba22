"""Another machine, for real: a worker in its own network namespace, joined to this one
by a veth pair (both made here, removed after), takes part in a job; cutting its link
gives its items back and the job completes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks.store import JobKeys

from .conftest import RedisServer, wait_until
from .test_cluster import free_port
from .test_remote import ROOT, places, remote_wids, where  # noqa: F401 (where travels by reference)

ONE_SERVER = True  # (see conftest): a worker on another host, not the server, is under test

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
)


@dataclass
class Link:
    namespace: str
    host_side: str
    host_ip: str


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def link() -> Iterator[Link]:
    n = os.getpid() % 200 + 20
    ns, host_side, ns_side = f"nbtasks-{os.getpid()}", f"nbth{os.getpid()}"[:15], f"nbtn{os.getpid()}"[:15]
    host_ip, ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
    try:
        ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
        ip("link", "set", ns_side, "netns", ns)
        ip("addr", "add", f"{host_ip}/24", "dev", host_side)
        ip("link", "set", host_side, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/24", "dev", ns_side)
        ip("netns", "exec", ns, "ip", "link", "set", ns_side, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield Link(ns, host_side, host_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def tcp_server(link: Link, server_bin: str, tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """The suite's kind of server, also listening on the host's end of the link."""
    port = free_port()
    (tmp_path / "redis").mkdir()
    # No password: it listens only on the link this test made.
    extra = ("--port", str(port), "--bind", link.host_ip, "--protected-mode", "no")
    server = RedisServer(tmp_path / "redis", server_bin, *extra)
    try:
        yield server, f"redis://{link.host_ip}:{port}/0"
    finally:
        server.stop()


def test_a_worker_on_another_host_joins_and_a_cut_link_gives_its_items_back(
    link: Link, tcp_server: tuple[RedisServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, remote_url = tcp_server
    log = tmp_path / "places"
    monkeypatch.setenv("NBT_LOG", str(log))
    nbtasks.configure(redis_url=server.url)  # this host: the unix socket
    local = redis.Redis.from_url(server.url)
    job = nbtasks.pmap(where, range(600), name="netns", background=True, processes=1, concurrency=5, progress=False)
    cmd = ["ip", "netns", "exec", link.namespace, sys.executable, "-m", "nbtasks", "worker", "--redis", remote_url]
    cmd += ["--job", "netns", "--processes", "1", "--concurrency", "5", "--heartbeat", "2"]
    env = {**os.environ, "NBT_WHERE": "remote"}
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as far:
        try:
            wait_until(lambda: places(log)["remote"] >= 20, 60, "the worker in the other namespace at work")
            wids = remote_wids(local, "netns")
            assert len(wids) == 1
            ip("link", "set", link.host_side, "down")  # the cable is cut: no reset, just silence
            cut_at = places(log)["remote"]
            results = Counter(job.result(timeout=90))
            assert results.total() == 600 and results["remote"] >= 20 and results["local"] > 0
            assert not local.sismember(JobKeys("netns").workers, wids[0]), "the silent worker was not dropped"
            assert not local.exists(JobKeys("netns").claims(wids[0])), "its items did not go back"
            assert places(log)["remote"] <= cut_at + 5, "the far worker kept recording after the cut"
        finally:
            far.send_signal(signal.SIGKILL)
            for pid in _in_namespace(link.namespace):
                os.kill(pid, signal.SIGKILL)
    local.close()


def _in_namespace(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30)
    return [int(p) for p in out.stdout.split()]
