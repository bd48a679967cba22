"""A job's identity, its definition in the store, and the gathering of its results."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import codec, trust
from .config import Policy
from .errors import ConfigError, Failure, JobMismatchError, NbtasksError, PayloadRejected, TaskError
from .store import Store

MAX_NAME = 200


@dataclass(frozen=True)
class JobSpec:
    """What the store holds for one job, as the caller knows it."""

    name: str
    total: int
    finished: bool  # every item has a recorded result
    policy: dict[str, Any] = field(default_factory=dict)  # Policy.numbers(), as stored

    @classmethod
    def of(cls, store: Store, name: str, meta: dict[str, str]) -> JobSpec:
        """The spec of a stored job, from its metadata."""
        total = int(meta["total"])
        policy = json.loads(meta.get("policy", "{}"))
        return cls(name, total, finished=store.done_count(name) >= total, policy=policy)


def fingerprint_inputs(iterable: Iterable[Any]) -> tuple[list[Any], str]:
    """The inputs as a list, and a hash of them in order (the inputs' part of a job's
    identity). One pickle of the whole list is fast; inputs plain pickle cannot take
    (lambdas, say) are hashed one by one, and one that nothing can pickle is an error."""
    items = list(iterable)
    try:
        return items, "list:" + hashlib.sha256(pickle.dumps(items, protocol=codec.PROTOCOL)).hexdigest()
    except Exception:  # noqa: BLE001 (any pickling error: the slow path names the culprit)
        digest = hashlib.sha256()
        for index, item in enumerate(items):
            data = codec.dump_input(item, index)
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return items, "items:" + digest.hexdigest()


def check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ConfigError(f"name= must be a non-empty string of at most {MAX_NAME} characters, not {name!r}.")


def define(
    store: Store,
    func: Callable[..., Any],
    func_payload: bytes,
    items: list[Any],
    inputs_digest: str,
    *,
    name: str | None,
    fresh: bool,
    policy: Policy,
) -> JobSpec:
    """Find or create the job for these inputs, and store what it lacks.

    Without a name, the job is the function's name, code and inputs: a re-run of the same
    call resumes it and an edited function gets a new job. With a name, the job survives
    edits of the code but not other inputs.
    """
    code_digest = codec.func_digest(func, func_payload)
    if name is None:
        name = f"{codec.func_label(func)}-{hashlib.sha256((code_digest + inputs_digest).encode()).hexdigest()[:12]}"
    total = len(items)
    meta = store.meta(name)
    if meta and fresh:
        store.delete(name)
        meta = {}
    if meta and meta.get("inputs") != inputs_digest:
        raise JobMismatchError(
            f"Job '{name}' already holds {meta.get('total', '?')} other inputs. Pass fresh=True to "
            "discard its results and start over, or choose another name=."
        )
    done = store.done_count(name) if meta else 0
    fields = {"total": total, "inputs": inputs_digest}
    numbers = _store_function(store, name, func, func_payload, code_digest, meta, done, total, policy, fields)
    if meta.get("ready") != "1":
        store.store_inputs(name, (codec.dump_input(item, index) for index, item in enumerate(items)))
    return JobSpec(name, total, finished=done == total, policy=numbers)


APPENDABLE = "appended"  # the inputs digest of a job that grows by appending


def append(
    store: Store, name: str, func: Callable[..., Any], func_payload: bytes, items: list[Any], policy: Policy
) -> JobSpec:
    """Find or create a job whose inputs grow by appending (a script's ``add``), store
    the function, and append `items` after the inputs it holds."""
    meta = store.meta(name)
    if meta and meta.get("inputs") != APPENDABLE:
        raise JobMismatchError(
            f"Job '{name}' was made by pmap with fixed inputs, so nothing can be appended to it; "
            "name the script's job otherwise with set_func(func, name=...)."
        )
    code_digest = codec.func_digest(func, func_payload)
    total = int(meta.get("total", 0))
    done = store.done_count(name) if meta else 0
    fields = {"inputs": APPENDABLE}
    numbers = _store_function(store, name, func, func_payload, code_digest, meta, done, total, policy, fields)
    if items or not meta:
        start = store.reserve_inputs(name, len(items))
        payloads = [codec.dump_input(item, start + offset) for offset, item in enumerate(items)]
        total = store.append_inputs(name, start, payloads)
    return JobSpec(name, total, finished=done >= total, policy=numbers)


def _store_function(
    store: Store,
    name: str,
    func: Callable[..., Any],
    func_payload: bytes,
    code_digest: str,
    meta: dict[str, str],
    done: int,
    total: int,
    policy: Policy,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """Store the function, the policy and `fields` in the job's metadata; return the
    policy as stored. Both are stored again at every call: a stored pickle is never
    trusted across Python versions or edits, and each call sets its own policy."""
    if meta and meta.get("code") != code_digest and done < total:
        print(
            f"nbtasks: the code of job '{name}' changed; its {done} finished results are kept and "
            f"the new code runs the other {total - done}.",
            file=sys.stderr,
        )
    numbers = policy.numbers()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    about = {"code": code_digest, "function": codec.func_label(func), "python": python, "policy": json.dumps(numbers)}
    store.define(name, {**fields, **about}, func_payload)
    return numbers


def gather(store: Store, spec: JobSpec, errors: str = "raise") -> list[Any]:
    """The results in input order. Failures raise one TaskError naming them all, or
    with ``errors="return"`` stand in the list as `Failure` objects."""
    failures = {f.index: f for f in load_failures(store, spec.name)}
    if failures and errors == "raise":
        raise TaskError(spec.name, spec.total, list(failures.values()))
    results = []
    for index, payload in enumerate(store.results(spec.name, spec.total)):
        if index in failures:
            results.append(failures[index])
            continue
        if payload is None:
            missing = spec.total - store.done_count(spec.name)
            raise NbtasksError(
                f"Job '{spec.name}' has no result for item {index} ({missing} missing in all); "
                "run the same call again to compute what is missing."
            )
        try:
            results.append(codec.load(payload))
        except Exception:
            if payload.startswith(trust.MAGIC):  # signed, and this process has no secret
                raise PayloadRejected(spec.name, index, "it is signed and no secret is set here") from None
            raise
    return results


def load_failures(store: Store, job: str) -> list[Failure]:
    """Every final failure of the job's last run, with its attempts, in input order."""
    raw = store.failures(job)
    indices = sorted(raw)
    inputs = store.inputs(job, indices)
    out = []
    for index, input_payload, (attempts, history) in zip(indices, inputs, store.attempts(job, indices), strict=True):
        info = codec.load(raw[index])
        if isinstance(input_payload, PayloadRejected):
            value: Any = "(not shown: it failed its signature check)"
        else:
            value = codec.load(input_payload) if input_payload is not None else None
        lines = tuple(history.splitlines())
        out.append(Failure(index=index, input=value, attempts=max(1, attempts, len(lines)), history=lines, **info))
    return out
