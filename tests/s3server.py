"""A throwaway S3-compatible server for tests: moto's server in a process of its own.

    with moto_s3("test-bucket") as (endpoint_url, env):
        subprocess.run([...], env={**os.environ, **env})  # s3fs/boto3 in the child find it
        # or, in this process: monkeypatch.setenv for each item of env, then
        # fsspec.filesystem("s3", skip_instance_cache=True) (see below)

The server binds port 0 itself and reports the port it got (no race for a "free" port),
then one HTTP request confirms that it answers: no fixed sleeps. It runs in its own
process group, dies with its stdin (so with the test process, however that ends), and is
killed on exit. Its state is in memory: a new server starts empty.

`env` points s3fs (through aiobotocore) and boto3 at the server with environment
variables alone, so child processes inherit it: botocore reads AWS_ENDPOINT_URL_S3 (and
AWS_ENDPOINT_URL) when a client is made. Gotchas:
- fsspec caches S3FileSystem instances by their arguments, and the endpoint is not one of
  them here: an instance made in this process for an earlier server keeps that server's
  (dead) endpoint, and retries for ~16 s. Use skip_instance_cache=True in this process,
  or S3FileSystem.clear_instance_cache(). Fresh processes have no such cache.
- s3fs caches listings: after an ls/find/du of a prefix, what another process writes
  under it stays invisible (exists() False, cat_file() FileNotFoundError) until
  fs.invalidate_cache(), or use_listings_cache=False (FSSPEC_S3_USE_LISTINGS_CACHE=false
  in a child's environment: fsspec reads FSSPEC_* variables once, when it is imported).
- moto checks bucket names as S3 does: 3 to 63 characters, lower case.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, NamedTuple

# The server: moto's ThreadedMotoServer on port 0, in a process of its own; it prints the
# port once the socket listens, and exits when its stdin closes (the parent ended).
_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server(NamedTuple):
    endpoint_url: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # set these (in a child's environment) for s3fs and boto3


def s3_env(endpoint_url: str) -> dict[str, str]:
    """The environment variables that point s3fs, aiobotocore and boto3 at `endpoint_url`."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint_url, "AWS_ENDPOINT_URL_S3": endpoint_url}


@contextmanager
def moto_s3(bucket: str | None = "test-bucket", timeout: float = 30.0) -> Iterator[S3Server]:
    """Start moto's server on 127.0.0.1, create `bucket` (unless None), and yield its
    endpoint and the environment for it; the server is killed on exit."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,  # its own process group, killed whole on exit
        )
        try:
            endpoint_url = f"http://127.0.0.1:{_read_port(proc, log, time.monotonic() + timeout)}"
            _wait_until_answers(endpoint_url, time.monotonic() + timeout)
            if bucket is not None:
                create_bucket(endpoint_url, bucket)
            yield S3Server(endpoint_url, s3_env(endpoint_url))
        finally:
            _stop(proc)


def create_bucket(endpoint_url: str, bucket: str) -> None:
    """A plain PUT: moto takes unsigned requests (as the default account's)."""
    request = urllib.request.Request(f"{endpoint_url}/{bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _read_port(proc: subprocess.Popen[str], log: IO[bytes], deadline: float) -> int:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        log.seek(0)
        stderr = log.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"moto server did not start (exit code {proc.poll()}): {line!r}\n{stderr}")
    return int(line)


def _wait_until_answers(endpoint_url: str, deadline: float) -> None:
    """GET / (ListBuckets) until it answers: at once, as the port is printed once the
    socket listens; the loop only guards against a slow first request."""
    delay = 0.01
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint_url}/", timeout=5) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _stop(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()  # (closing stdin alone ends the server)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.returncode is None:
        proc.wait()
