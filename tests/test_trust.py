"""Trust: signed payloads, a private embedded server, TLS, ACL users, and names that
try to leave the key namespace."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis.crc import key_slot

import nbtasks
from nbtasks import server, trust
from nbtasks.store import JobKeys

from .conftest import RedisServer
from .stored import drop, payload, payloads, put
from .test_remote import places, service

SECRET = "a test secret, long and random enough: 6f1c0e1d"


class Marker:
    """A forged payload: unpickling it creates a file (an attacker's code running)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def square(x: int) -> int:
    return x * x


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NBTASKS_SECRET", SECRET)  # the workers inherit it
    return SECRET


def flip(blob: bytes, at: int = -1) -> bytes:
    data = bytearray(blob)
    data[at] ^= 0x01
    return bytes(data)


def test_payloads_are_signed_and_tampered_results_are_refused_unread(
    r: redis.Redis, secret: str, tmp_path: Path
) -> None:
    assert nbtasks.pmap(square, range(20), name="signed", progress=False) == [x * x for x in range(20)]
    nbtasks.pmap(square, range(20), name="other", progress=False)
    keys, other = JobKeys("signed"), JobKeys("other")
    assert all(payload(r, keys.results, i).startswith(trust.MAGIC) for i in range(20))
    assert r.get(keys.func).startswith(trust.MAGIC) and payload(r, keys.inputs, 0).startswith(trust.MAGIC)
    assert SECRET.encode() not in b"".join(payloads(r, keys.results).values()), "the secret itself is never stored"

    marker = tmp_path / "pwned"
    original = payload(r, keys.results, 3)
    forged_tag = trust.MAGIC + os.urandom(trust.TAG) + pickle.dumps(Marker(marker))
    tampered = {
        "a flipped bit": flip(original),
        "truncated": original[:-3],
        "another item's result": payload(r, keys.results, 4),
        "another job's result": payload(r, other.results, 3),
        "an unsigned forged pickle": pickle.dumps(Marker(marker)),
        "a forged pickle with a made-up tag": forged_tag,
    }
    for what, blob in tampered.items():
        put(r, keys.results, 3, blob)
        with pytest.raises(nbtasks.PayloadRejected, match=r"job 'signed' \(item 3\)") as caught:
            nbtasks.pmap(square, range(20), name="signed", progress=False)
        assert caught.value.index == 3, what
        assert not marker.exists(), f"{what}: the forged pickle ran"
    put(r, keys.results, 3, original)
    assert nbtasks.pmap(square, range(20), name="signed", progress=False)[3] == 9


def test_tampered_inputs_fail_once_without_running_or_retrying(r: redis.Redis, secret: str, tmp_path: Path) -> None:
    nbtasks.pmap(square, range(10), name="inputs", progress=False)
    nbtasks.pmap(square, range(10), name="elsewhere", progress=False)
    keys = JobKeys("inputs")
    marker = tmp_path / "pwned"
    forged = {
        1: flip(payload(r, keys.inputs, 1)),
        2: payload(r, keys.inputs, 2)[:-2],
        3: payload(r, keys.inputs, 8),  # replayed from another index
        4: payload(r, JobKeys("elsewhere").inputs, 4),  # replayed from another job, same index
        5: pickle.dumps(Marker(marker)),
    }
    for index, blob in forged.items():
        put(r, keys.inputs, index, blob)
        r.setbit(keys.done, index, 0)  # as if these had not run yet
        drop(r, keys.results, index)

    out = nbtasks.pmap(square, range(10), name="inputs", errors="return", retries=3, retry_delay=0.01, progress=False)
    assert not marker.exists(), "a forged input was unpickled"
    for index in range(10):
        if index in forged:
            failure = out[index]
            assert isinstance(failure, nbtasks.Failure), index
            assert failure.exc_type == "nbtasks.errors.PayloadRejected"
            assert f"job 'inputs' (item {index})" in failure.message
            assert failure.attempts == 1, "a rejected payload is not retried"
            assert failure.input == "(not shown: it failed its signature check)"
        else:
            assert out[index] == index * index


def test_an_input_pointed_at_another_inputs_result_or_a_moved_list_is_refused(r: redis.Redis, secret: str) -> None:
    nbtasks.pmap(square, range(10), name="mapped", progress=False)
    nbtasks.pmap(square, range(5), name="mapped", progress=False)
    keys = JobKeys("mapped")
    where = {digest: key for key in r.scan_iter(match=keys.index + "*") for digest in r.hkeys(key)}
    index, views = {d: r.hget(key, d) for d, key in where.items()}, r.hgetall(keys.views)
    assert len(index) == 10 and len(views) == 2
    # The index says which stored result belongs to an input: point one at another's.
    first, second = sorted(index)[:2]
    r.hset(where[first], first, index[second])
    r.delete(keys.views)  # (so that the lists are looked up input by input again)
    with pytest.raises(nbtasks.PayloadRejected, match="index entry was made for another input"):
        nbtasks.pmap(square, range(10), name="mapped", progress=False)
    r.hset(where[first], first, index[first])
    # A list's view swapped with another list's, then a flipped bit.
    (a, view_a), (b, view_b) = views.items()
    r.hset(keys.views, mapping={a: view_b, b: view_a})
    with pytest.raises(nbtasks.PayloadRejected, match="stored under another list"):
        nbtasks.pmap(square, range(10), name="mapped", progress=False)
    r.hset(keys.views, mapping={a: flip(view_a), b: flip(view_b)})
    with pytest.raises(nbtasks.PayloadRejected, match="signature does not match"):
        nbtasks.pmap(square, range(10), name="mapped", progress=False)
    r.hset(keys.views, mapping={a: view_a, b: view_b})
    assert nbtasks.pmap(square, range(10), name="mapped", progress=False) == [x * x for x in range(10)]


def test_a_tampered_function_never_runs(r: redis.Redis, secret: str, tmp_path: Path) -> None:
    nbtasks.pmap(square, range(10), name="function", progress=False)
    keys = JobKeys("function")
    r.setbit(keys.done, 9, 0)
    drop(r, keys.results, 9)
    marker = tmp_path / "pwned"
    r.set(keys.func, trust.MAGIC + os.urandom(trust.TAG) + pickle.dumps(Marker(marker)))
    job = nbtasks.Job("function").retry_failed(progress=False)  # runs the stored function
    with pytest.raises(nbtasks.WorkerError, match=r"Refused a payload of job 'function' \(the function\)"):
        job.result(timeout=60)
    assert not marker.exists()


def test_a_worker_with_another_secret_refuses_and_leaves_the_items(
    r: redis.Redis, redis_server, secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBT_LOG", str(tmp_path / "places"))
    from .test_remote import where

    job = nbtasks.pmap(where, range(200), name="secrets", background=True, processes=1, concurrency=5, progress=False)
    monkeypatch.setenv("NBTASKS_SECRET", "not the caller's secret")  # for the other machine only
    with service(redis_server.url, "--job", "secrets") as proc:
        monkeypatch.setenv("NBTASKS_SECRET", secret)
        assert len(job.result(timeout=60)) == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "refused job 'secrets'" in out and "signature does not match" in out
    assert places(tmp_path / "places")["remote"] == 0
    assert SECRET not in out


def test_a_key_file_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "secret"
    key.write_text("from a file\n")
    monkeypatch.delenv("NBTASKS_SECRET", raising=False)
    monkeypatch.setenv("NBTASKS_SECRET_FILE", str(key))
    key.chmod(0o644)
    with pytest.raises(nbtasks.ConfigError, match="chmod 600"):
        trust.load_secret()
    key.chmod(0o600)
    assert trust.load_secret() == b"from a file"


def test_a_redis_reachable_from_other_hosts_warns_without_a_secret(
    server_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no address but loopback")
    with socket.socket() as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    extra = ("--port", str(port), "--bind", address, "--protected-mode", "no")
    running = RedisServer(tmp_path, server_bin, *extra)
    try:
        url = f"redis://{address}:{port}/0"
        monkeypatch.delenv("NBTASKS_SECRET", raising=False)
        monkeypatch.setenv("NBTASKS_SECRET_FILE", "")
        with pytest.warns(nbtasks.SecurityWarning, match="can be reached from other hosts and no secret is set"):
            nbtasks.pmap(square, range(5), redis=url, progress=False)
        monkeypatch.setenv("NBTASKS_SECRET", SECRET)
        from nbtasks.store import connection

        connection._warned.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert nbtasks.pmap(square, range(5), redis=url, name="quiet", progress=False) == [0, 1, 4, 9, 16]
    finally:
        running.stop()


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


# -- the embedded server ------------------------------------------------------------


@pytest.fixture
def shared_home(server_bin: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """NBTASKS_HOME in a folder every user may enter, so that only nbtasks' own
    permissions keep another user out."""
    parent = Path(tempfile.mkdtemp(prefix="nbtasks-shared-"))
    parent.chmod(0o755)
    folder = parent / "home"
    monkeypatch.setenv("NBTASKS_HOME", str(folder))
    monkeypatch.setenv("NBTASKS_SERVER_BIN", server_bin)
    monkeypatch.delenv("NBTASKS_REDIS_URL", raising=False)
    from nbtasks import config

    monkeypatch.setattr(config, "_current", None)
    try:
        yield folder
    finally:
        server.stop(folder)
        shutil.rmtree(parent, ignore_errors=True)


def test_the_embedded_server_wants_its_password_which_only_its_owner_can_read(shared_home: Path) -> None:
    assert nbtasks.pmap(square, range(5), progress=False) == [0, 1, 4, 9, 16]
    for name in ("password", "server.conf"):
        assert stat.S_IMODE((shared_home / name).stat().st_mode) == 0o600
    password = (shared_home / "password").read_text().strip()
    assert len(password) >= 32
    state = server.status()
    assert state.pid is not None
    assert password not in " ".join(psutil.Process(state.pid).cmdline()), "password on a command line"
    anonymous = redis.Redis(unix_socket_path=str(shared_home / "redis.sock"))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    out = subprocess.run([sys.executable, "-m", "nbtasks", "status", "nope"], capture_output=True, text=True)
    assert out.returncode == 4 and password not in out.stderr and ":***@" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="making a second user needs root")
def test_another_local_user_cannot_reach_the_embedded_server(shared_home: Path) -> None:
    nbtasks.pmap(square, range(3), progress=False)
    user = "nbtasks-other"
    made = subprocess.run(["id", user], capture_output=True).returncode != 0
    if made:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    try:
        _probe_as(user, shared_home)
    finally:
        if made:
            subprocess.run(["userdel", user], capture_output=True)


def _probe_as(user: str, shared_home: Path) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python is not None
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
        "else:\n    print('connected')\n"
    )
    sock = str(shared_home / "redis.sock")
    other = subprocess.run(["runuser", "-u", user, "--", python, "-c", probe, sock], capture_output=True, text=True)
    assert other.stdout.strip() == "PermissionError", other.stderr
    # The harness can tell: the same probe as this user gets in.
    assert subprocess.run([python, "-c", probe, sock], capture_output=True, text=True).stdout.strip() == "connected"


# -- TLS and ACL users ------------------------------------------------------------------


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=nbtasks test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_a_job_runs_over_tls_and_an_untrusted_certificate_is_refused(server_bin: str, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = _certificates(certs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ("--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    extra += ("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    (tmp_path / "redis").mkdir()
    try:
        running = RedisServer(tmp_path / "redis", server_bin, *extra)
    except nbtasks.ConfigError:
        pytest.skip(f"{server_bin} was built without TLS")
    try:
        trusted = f"rediss://localhost:{port}/0?ssl_ca_certs={ca}"
        assert nbtasks.pmap(square, range(200), redis=trusted, progress=False) == [x * x for x in range(200)]
        with pytest.raises(nbtasks.RedisUnavailable, match="certificate verify failed"):
            nbtasks.pmap(square, range(5), redis=f"rediss://localhost:{port}/0", progress=False)
    finally:
        running.stop()


ACL_RULE = ("on", ">acl-test-password", "resetkeys", "~nbtasks:*", "resetchannels", "+@all", "-@dangerous")
NAMES = ["star*name", "two words", "new\nline", "{braces}", "x}:evil:{y", "%7B", "a:b:c"]


def echo(x: object) -> object:
    return x


def test_an_acl_user_limited_to_the_prefix_runs_jobs_whose_names_stay_inside(r: redis.Redis, redis_server) -> None:
    r.acl_setuser("nbtasks-acl", reset=True)
    r.execute_command("ACL", "SETUSER", "nbtasks-acl", *ACL_RULE)
    path = r.connection_pool.connection_kwargs["path"]
    url = f"unix://nbtasks-acl:acl-test-password@{path}?db=0"
    limited = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.set("outside", 1)  # the rule does confine it
    limited.close()

    inputs = ["*", "a b", "x\ny", "{tag}", "nbtasks:{other}:meta"]
    for name in NAMES:
        assert nbtasks.pmap(echo, inputs, name=name, redis=url, progress=False) == inputs
    assert {s.name for s in nbtasks.jobs(redis=url)} == set(NAMES)
    keys = [k.decode() for k in r.keys("*")]
    assert keys and all(k.startswith("nbtasks:") for k in keys), keys
    for name in NAMES:
        own = [k for k in keys if k.startswith(JobKeys(name).prefix)]
        assert own and len({key_slot(k.encode()) for k in own}) == 1, f"{name!r} spans several slots"
    nbtasks.reset("x}:evil:{y", redis=url)
    assert not r.exists(JobKeys("x}:evil:{y").meta) and r.exists(JobKeys("{braces}").meta)
    r.acl_deluser("nbtasks-acl")


def test_a_process_without_the_secret_cannot_read_a_signed_job(r: redis.Redis, secret: str, monkeypatch) -> None:
    nbtasks.pmap(square, range(5), name="sealed", progress=False)
    monkeypatch.delenv("NBTASKS_SECRET")
    monkeypatch.setenv("NBTASKS_SECRET_FILE", "")
    with pytest.raises(nbtasks.PayloadRejected, match="no secret is set here"):
        nbtasks.pmap(square, range(5), name="sealed", progress=False)


def test_a_script_job_is_signed_too(r: redis.Redis, redis_server, secret: str, tmp_path: Path) -> None:
    from .test_script import crawl

    (tmp_path / "lines.txt").write_text("a\nb\nc\n")
    assert crawl(tmp_path, redis_server.url, "add", str(tmp_path / "lines.txt")).returncode == 0
    assert crawl(tmp_path, redis_server.url, "add", "-", stdin="d\n").returncode == 0
    keys = JobKeys("crawl")
    assert all(payload(r, keys.inputs, i).startswith(trust.MAGIC) for i in range(4))
    run = crawl(tmp_path, redis_server.url, "run")
    assert run.returncode == 0 and "4 of 4 done, 0 failed" in run.stdout, run.stdout + run.stderr
