"""The results of a call, gathered back in input order, and the failures of a job's
last run (each with its input, attempts and remote traceback)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import psutil

from . import codec, trust
from .define import JobSpec, current_positions
from .errors import Failure, NbtasksError, PayloadLost, PayloadRejected, TaskError
from .job_status import size_text
from .store import Store


def gather(store: Store, spec: JobSpec, errors: str = "raise") -> list[Any]:
    """The results in input order. Failures raise one TaskError naming them all, or
    with ``errors="return"`` stand in the list as `Failure` objects."""
    failures = _failures(store, spec.name, spec.positions)
    if failures and errors == "raise":
        raise TaskError(spec.name, len(spec.positions), sorted(failures.values(), key=lambda f: f.index))
    results = []
    lost: dict[int, PayloadLost] = {}
    payloads = store.results(spec.name, spec.positions)
    for position, (index, payload) in enumerate(zip(spec.positions, payloads, strict=True)):
        if index in failures:
            results.append(failures[index])
            continue
        if isinstance(payload, PayloadLost):
            lost.setdefault(index, payload)
            continue
        if payload is None:
            if spec.list_digest:
                store.mark_complete(spec.name, spec.list_digest, False)  # the store lost some
            missing = spec.total - store.done_among(spec.name, spec.indices)
            raise MissingResults(
                f"Job '{spec.name}' has no result for item {position} ({missing} missing in all); "
                "run the same call again to compute what is missing."
            )
        try:
            results.append(codec.load(payload))
        except Exception:
            if isinstance(payload, bytes) and payload.startswith(trust.MAGIC):  # signed, and this process has no secret
                raise PayloadRejected(spec.name, index, "it is signed and no secret is set here") from None
            raise
    if lost:
        _forget(store, spec, lost)
    return results


def _forget(store: Store, spec: JobSpec, lost: dict[int, PayloadLost]) -> None:
    """Results whose bytes outside Redis are gone or altered: forgotten, so that the next
    call runs their items again; PayloadLost names the first (and how many)."""
    store.forget_results(spec.name, list(lost))
    if spec.list_digest:
        store.mark_complete(spec.name, spec.list_digest, False)
    first = next(iter(lost.values()))
    if len(lost) > 1:
        first.args = (f"{first.args[0]} So do {len(lost) - 1:,} more results of this call, lost the same way.",)
    raise first


SMALL_RESULT = 64  # bytes a result takes in the caller at least: a small object and its list slot
_warned: set[str] = set()  # jobs this process said it about


def warn_if_too_large(store: Store, spec: JobSpec) -> None:
    """Before a call gathers a list in memory: say once per job when its results would
    take more than half of the memory available, and point to imap. Their size is
    estimated from the job's recorded results (their stored bytes), else SMALL_RESULT."""
    count = len(spec.positions)
    if spec.name in _warned or count * SMALL_RESULT < available_memory() / 64:
        return  # (far below: no round trip)
    record = store.meta(spec.name)
    done = store.done_count(spec.name) if record is not None else 0
    each = max(SMALL_RESULT, store.sizes([record])[0] // done) if record is not None and done else SMALL_RESULT
    if count * each <= available_memory() / 2:
        return
    _warned.add(spec.name)
    print(
        f"nbtasks: job '{spec.name}' will hold about {size_text(count * each)} of results in this process "
        f"({count:,} of about {size_text(each)}), over half of the memory available. "
        "nbtasks.imap(...) takes the same arguments and yields them one at a time.",
        file=sys.stderr,
    )


def available_memory() -> int:
    return int(psutil.virtual_memory().available)


class MissingResults(NbtasksError):
    """The store lost results it had (a server back without its last writes)."""


def load_failures(store: Store, job: str, positions: Sequence[int] | None = None) -> list[Failure]:
    """Every final failure of the job's last run, in the order of its list (the job's
    current one unless given); a failure's `index` is its input's position there."""
    if positions is None:
        record = store.meta(job)
        positions = current_positions(store, record) if record is not None else range(0)
    return sorted(_failures(store, job, positions).values(), key=lambda f: f.index)


def _failures(store: Store, job: str, positions: Sequence[int]) -> dict[int, Failure]:
    """The failures of the inputs at `positions`, by their index in the job."""
    raw = store.failures(job)
    if not raw:
        return {}
    where: dict[int, int] = {}  # index in the job -> first position in the list
    for position, index in enumerate(positions):
        if index in raw and index not in where:
            where[index] = position
    indices = list(where)
    inputs = store.inputs(job, indices)
    out = {}
    for index, input_payload, (attempts, history) in zip(indices, inputs, store.attempts(job, indices), strict=True):
        info = codec.load(raw[index])
        if isinstance(input_payload, PayloadRejected):
            value: Any = "(not shown: it failed its signature check)"
        else:
            value = codec.load(input_payload) if input_payload is not None else None
        lines = tuple(history.splitlines())
        attempts = max(1, attempts, len(lines))
        out[index] = Failure(index=where[index], input=value, attempts=attempts, history=lines, **info)
    return out
