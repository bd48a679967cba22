"""Results as they are recorded: in input order (`imap`, `Job.results`) or as they come
(`imap_unordered`), read from the store while the run goes on."""

from __future__ import annotations

import itertools
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from . import codec
from .define import JobSpec
from .errors import Failure, JobCancelled, PayloadLost, TaskError
from .gather import load_failures
from .store import Store

POLL = 0.05  # seconds between looks at what has been recorded, while nothing new is
FETCH = 1000  # results read at a time
WINDOW = 50_000  # positions looked at per look


def in_order(store: Store, spec: JobSpec, running: Callable[[], bool], errors: str = "raise") -> Iterator[Any]:
    """Each result of `spec`'s list in order, as soon as it and those before it are
    recorded; a final failure raises TaskError (or comes as its Failure with
    ``errors="return"``). `running` says whether a run may still record more."""
    for _, value in _stream(store, spec, running, errors, ordered=True):
        yield value


def as_completed(
    store: Store, spec: JobSpec, running: Callable[[], bool], errors: str = "raise"
) -> Iterator[tuple[int, Any]]:
    """(position, result) for every item of `spec`'s list, as they are recorded."""
    yield from _stream(store, spec, running, errors, ordered=False)


def _stream(
    store: Store, spec: JobSpec, running: Callable[[], bool], errors: str, ordered: bool
) -> Iterator[tuple[int, Any]]:
    """Memory stays bounded whatever the list's length: in order, a cursor; as they come,
    the positions of a window of WINDOW not yielded yet, in list order (workers take items
    in about that order, so those recorded first are near its start)."""
    positions = spec.positions
    total = len(positions)
    cursor = yielded = 0  # positions from `cursor` on not looked at yet
    front = array("I")  # positions looked at and not yielded yet (as they come)
    while yielded < total:
        live = running()  # (asked before looking: a run that ends meanwhile is seen next time)
        bitmap, failed = store.done_and_failed(spec.name)

        def settled(p: int, bitmap: bytes = bitmap, size: int = len(bitmap), failed: set[int] = failed) -> bool:
            index = positions[p]
            return bool(index >> 3 < size and bitmap[index >> 3] & (0x80 >> (index & 7))) or index in failed

        ready: list[int] = []
        if ordered:
            while cursor < total and len(ready) < WINDOW and settled(cursor):
                ready.append(cursor)
                cursor += 1
        else:
            more = range(cursor, min(total, cursor + WINDOW - len(front)))
            cursor = more.stop
            waiting = array("I")
            for p in itertools.chain(front, more):
                (ready if settled(p) else waiting).append(p)
            front = waiting
        if not ready:
            if not live:
                raise JobCancelled(
                    f"Job '{spec.name}' stopped with {yielded} of {total} results streamed; "
                    "the same call again resumes it."
                )
            time.sleep(POLL)
            continue
        yielded += len(ready)
        for start in range(0, len(ready), FETCH):
            yield from _values(store, spec, ready[start : start + FETCH], failed, errors)


def _values(store: Store, spec: JobSpec, ready: list[int], failed: set[int], errors: str) -> Iterator[tuple[int, Any]]:
    positions = spec.positions
    indices = [positions[p] for p in ready]
    broken = {i for i in indices if i in failed}
    failures = {f.index: f for f in load_failures(store, spec.name, positions)} if broken else {}
    recorded = store.results(spec.name, [i for i in indices if i not in broken])
    for p, index in zip(ready, indices, strict=True):
        if index in broken:
            failure = _failure_at(failures, p, index, positions)
            if errors == "raise":
                raise TaskError(spec.name, len(positions), [failure])
            yield p, failure
            continue
        payload = next(recorded)
        if isinstance(payload, PayloadLost):
            store.forget_results(spec.name, [index])
            raise payload
        if payload is None:  # (the bit says recorded: the server lost it meanwhile)
            raise JobCancelled(f"Job '{spec.name}' lost the result of item {p}; the same call again computes it.")
        yield p, codec.load(payload)


def _failure_at(failures: dict[int, Failure], position: int, index: int, positions: Any) -> Failure:
    """The failure of `index`, told at `position` (failures name an input's first place)."""
    for failure in failures.values():
        if positions[failure.index] == index:
            return failure if failure.index == position else _moved(failure, position)
    raise JobCancelled(f"Job item {position} failed, and its failure is no longer stored; call again.")


def _moved(failure: Failure, position: int) -> Failure:
    return replace(failure, index=position)
