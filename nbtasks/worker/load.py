"""What a worker loads before it runs a job: the job's function, its policy and the
caller's logging, or why the job cannot run in this process."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import codec
from ..errors import PayloadRejected
from ..policy import RunPolicy
from ..store import Store


class CannotRun(Exception):
    """The job cannot run in this process; the message says why."""


@dataclass(frozen=True)
class Loaded:
    func: Callable[[Any], Any]
    retry_on: tuple[type[BaseException], ...]
    key: Callable[[Any], Any] | None  # the key function of the job's Limit
    policy: RunPolicy
    logging: dict[str, Any]


def load(store: Store, job: str) -> Loaded:
    """The job's function and what runs it; CannotRun, saying why, when it cannot run here."""
    record = store.meta(job)
    if record is None:
        raise CannotRun("the job is not in the store any more (was it reset?).")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if record.python not in (None, here):
        raise CannotRun(f"the job was stored by Python {record.python} and this worker runs Python {here}.")
    try:
        payload = store.function(job)
    except PayloadRejected as exc:
        raise CannotRun(str(exc)) from None
    if payload is None:
        raise CannotRun("the job has no stored function (was it reset?).")
    try:
        func, retry_on, key = codec.load_function(payload)
    except Exception as exc:
        raise CannotRun(
            f"the function could not be loaded here: {type(exc).__name__}: {exc}. Install what it needs "
            "where the workers run, or send your own module by value with nbtasks.ship(module)."
        ) from None
    return Loaded(func, retry_on, key, record.policy, record.logging)
