"""What store operations hand over: a stored job's metadata, typed (`JobRecord`); a
snapshot of a job's counters; one attempt's outcome on its way to being recorded.

The metadata hash (``nbtasks:{job}:meta``) holds strings; this module is where they
become numbers, flags and the policy. Its field names:

    format        the store format the job was written in (see keys.FORMAT)
    inputs        "distinct" (a pmap job) or "appended" (a script's job)
    total         distinct inputs of the current list (what progress counts)
    list          digest of the current list (its view holds the indices)
    ready         "1" once the job's inputs are stored: workers may claim
    code, parts   the function's identity digest, and the digests of its parts (JSON)
    function      the function's label (its name)
    python        the Python version that stored the function ("3.11")
    policy        the RunPolicy (JSON)
    logging       the caller's logging configuration (JSON), applied in workers
    epoch         tells this incarnation of the job from one stored again
    created, started, ended      times (seconds since the epoch)
    used                         when a call last stored the job's definition (any pmap or add)
    done_at_start                results recorded when the current run began
    workers                      live workers of the current run, as its caller counts them
    blobs         where its caller keeps large payloads (a folder or URL; none: all in Redis)
    blob_bytes    bytes of its large payloads written there
    ix_digest     bytes of each input's digest its index keeps (none: 16)
    ix_level, ix_split, ix_count  where the index's buckets stand (see index.ADD)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..codec import Raw
from ..errors import PayloadRejected
from ..policy import RunPolicy

DISTINCT = "distinct"  # the inputs kind of a pmap job: each distinct input stored once
APPENDABLE = "appended"  # the inputs kind of a job that grows by appending (a script's)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt of one item gave: kind "1" a result, "r" a failure that may be
    retried, "0" a final failure; `line` is the failure in one line, for the history."""

    index: int
    kind: str
    payload: bytes | Raw  # a pickle; a large bytes result may come as itself (see codec.Raw)
    line: str = ""


@dataclass(frozen=True)
class KeyedClaim:
    """A claim under per-key limits: items that start (their key let them), items whose
    key is to be found (see `Store.admit`), seconds until a waiting key may start one
    (None: none is due), and how many items wait for their keys."""

    started: list[tuple[int, bytes | PayloadRejected]]
    fresh: list[tuple[int, bytes | PayloadRejected]]
    wake: float | None
    held: int


@dataclass(frozen=True)
class KeyStates:
    """What status shows of a job's limit keys: the busiest (key, running, waiting) and
    those backing off (key, seconds left, backoffs in a row)."""

    busiest: list[tuple[str, int, int]]
    backing_off: list[tuple[str, float, int]]


@dataclass(frozen=True)
class Counts:
    """A snapshot of a job's counters."""

    total: int
    done: int
    failed: int
    running: int = 0
    owner: str = "us"  # who runs the job: "us", "other" (another caller), "none", "cancel"
    retrying: int = 0  # failed attempts waiting for their retry
    epoch: str | None = None  # which incarnation of the job the server holds

    @property
    def settled(self) -> int:
        return self.done + self.failed


@dataclass(frozen=True)
class JobRecord:
    """A stored job's metadata, typed. `parse` is the one place its strings are read."""

    name: str
    format: str = ""
    inputs: str = DISTINCT
    total: int = 0
    list: str | None = None
    ready: bool = False
    code: str = ""
    parts: dict[str, str] | None = None
    function: str | None = None  # the function's label
    python: str | None = None
    policy: RunPolicy = field(default_factory=RunPolicy)
    logging: dict[str, Any] = field(default_factory=dict)
    epoch: str | None = None
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    used: float | None = None
    index_buckets: int = 0  # how many hashes the index of its inputs is split in (see index.ADD)
    done_at_start: int | None = None
    workers: int = 0
    blobs: str | None = None
    blob_bytes: int = 0
    index_digest: int = 16

    @property
    def last_used(self) -> float | None:
        """When the job was last called or run (seconds since the epoch), if known."""
        times = [t for t in (self.created, self.started, self.ended, self.used) if t is not None]
        return max(times) if times else None

    @property
    def appendable(self) -> bool:
        """A script's job, whose inputs grow by appending."""
        return self.inputs == APPENDABLE

    @classmethod
    def parse(cls, name: str, meta: dict[str, str]) -> JobRecord | None:
        """The record of a job's metadata hash (decoded); None when there is no job."""
        if not meta:
            return None

        def number(key: str) -> float | None:
            return float(meta[key]) if meta.get(key) else None

        done_at_start = meta.get("done_at_start")
        return cls(
            name=name,
            format=meta.get("format", ""),
            inputs=meta.get("inputs", DISTINCT),
            total=int(meta.get("total") or 0),
            list=meta.get("list"),
            ready=meta.get("ready") == "1",
            code=meta.get("code", ""),
            parts=json.loads(meta["parts"]) if meta.get("parts") else None,
            function=meta.get("function"),
            python=meta.get("python"),
            policy=RunPolicy.from_json(meta.get("policy")),
            logging=json.loads(meta["logging"]) if meta.get("logging") else {},
            epoch=meta.get("epoch"),
            created=number("created"),
            started=number("started"),
            ended=number("ended"),
            used=number("used"),
            index_buckets=2 ** int(meta.get("ix_level") or 0) + int(meta.get("ix_split") or 0),
            done_at_start=int(done_at_start) if done_at_start else None,
            workers=int(meta.get("workers") or 0),
            blobs=meta.get("blobs") or None,
            blob_bytes=int(meta.get("blob_bytes") or 0),
            index_digest=int(meta.get("ix_digest") or 16),
        )


def definition(
    *,
    code: str,
    parts: dict[str, str],
    function: str,
    python: str,
    policy: RunPolicy,
    inputs: str,
    blobs: str,
    index_digest: int | None = None,
) -> dict[str, str]:
    """The metadata fields a call stores about its job's function (see `JobRecord`)."""
    return {
        **({"ix_digest": str(index_digest)} if index_digest is not None else {}),
        "blobs": blobs,
        "code": code,
        "parts": json.dumps(parts),
        "function": function,
        "python": python,
        "policy": policy.to_json(),
        "inputs": inputs,
    }


def decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A hash as redis-py returns it (bytes), as text."""
    return {k.decode(): v.decode() for k, v in raw.items()}
