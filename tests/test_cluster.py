"""A job on a real three-node Redis Cluster started by the test: one hash tag per job."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import nbtasks
from nbtasks.store import PARTS, JobKeys

from .conftest import RedisServer, wait_until


def free_port() -> int:
    """A port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


@pytest.fixture
def cluster(server_bin: str, tmp_path: Path) -> Iterator[str]:
    nodes: list[RedisServer] = []
    ports = []
    try:
        for i in range(3):
            port = free_port()
            folder = tmp_path / f"node{i}"
            folder.mkdir()
            extra = ("--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes")
            nodes.append(RedisServer(folder, server_bin, *extra, "--cluster-config-file", str(folder / "nodes.conf")))
            ports.append(port)
        clients = [redis.Redis(port=p) for p in ports]
        for client, (first, last) in zip(clients, [(0, 5460), (5461, 10922), (10923, 16383)], strict=True):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        wait_until(lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients), 30, "the cluster")
        for client in clients:
            client.close()
        yield f"redis://127.0.0.1:{ports[0]}"
    finally:
        for node in nodes:
            node.stop()


def square(x: int) -> int:
    return x * x


def fails_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def test_jobs_run_on_a_cluster_with_every_key_of_a_job_in_one_slot(cluster: str) -> None:
    nbtasks.configure(redis_url=cluster)
    names = [f"cluster-{i}" for i in range(4)]
    for name in names:
        assert nbtasks.pmap(square, range(500), name=name, progress=False) == [x * x for x in range(500)]
    failed = nbtasks.pmap(fails_on_seven, range(20), name="cluster-failing", errors="return", progress=False)
    assert isinstance(failed[7], nbtasks.Failure) and failed[8] == 8
    assert {s.name: s.state for s in nbtasks.jobs()} == {
        **dict.fromkeys(names, "finished"),
        "cluster-failing": "failed",
    }

    client = redis.cluster.RedisCluster.from_url(cluster)
    slots = {name: {client.keyslot(JobKeys(name).prefix + part) for part in PARTS} for name in names}
    assert all(len(s) == 1 for s in slots.values()), "a job's keys span several slots"
    assert len({client.get_node_from_key(JobKeys(name).meta).name for name in names}) > 1, "jobs spread over nodes"

    job = nbtasks.pmap(square, range(300), name="cluster-bg", background=True, progress=False, concurrency=5)
    assert job.result(timeout=60) == [x * x for x in range(300)]
    nbtasks.reset("cluster-bg")
    assert not client.exists(JobKeys("cluster-bg").meta)
    client.close()
