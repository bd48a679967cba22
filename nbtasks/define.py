"""A call's job: found or created from the function's identity, its inputs stored and
indexed (each distinct input once), and the call's list made the job's current one.
Gathering the results back is `gather`'s."""

from __future__ import annotations

import hashlib
import itertools
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from . import blobs, codec, identity
from .errors import ConfigError, JobMismatchError
from .identity import Identity
from .policy import Policy, RunPolicy
from .store import APPENDABLE, BATCH, DISTINCT, INDEXED, JobRecord, Store, definition

MAX_NAME = 200
# Bytes of an input's digest a new job's index keeps: 96 bits keep collisions out of reach
# (a billion inputs: 6e-12) at 4 bytes an item less than all 16 (which older jobs keep).
INDEX_DIGEST = 12
INDEX_BATCH = 25_000  # inputs digested, looked up and stored at a time (about 20 MB of bookkeeping)


@dataclass
class Stream:
    """Inputs that come from an iterator with no length (a generator): read and stored a
    batch at a time, never held whole. `head`: the first batch, read already."""

    head: list[Any]
    rest: Iterator[Any]

    @classmethod
    def of(cls, items: Iterator[Any]) -> list[Any] | Stream:
        """A list when the iterator holds one batch or less, else a Stream."""
        head = list(itertools.islice(items, INDEX_BATCH))
        return head if len(head) < INDEX_BATCH else cls(head, items)

    def batches(self) -> Iterator[list[Any]]:
        yield self.head
        while batch := list(itertools.islice(self.rest, INDEX_BATCH)):
            yield batch


@dataclass(frozen=True)
class JobSpec:
    """What the store holds for one call of a job, as the caller knows it: the index
    of each of the call's inputs in the job (equal inputs share one), in list order."""

    name: str
    positions: Sequence[int]
    finished: bool  # every input of the call has a recorded result
    policy: RunPolicy = field(default_factory=RunPolicy)  # as stored
    distinct: int | None = None  # how many distinct inputs, when known (saves counting)
    list_digest: str = ""  # the list's digest, for a pmap call

    @cached_property
    def indices(self) -> Sequence[int]:
        """The call's distinct inputs, in order of first appearance: what a run runs (a
        range when they are consecutive, as a new job's are: the store counts those fast)."""
        if isinstance(self.positions, range):
            return self.positions
        return distinct(self.positions)

    @property
    def total(self) -> int:
        """How many distinct inputs the call has: what its progress counts."""
        return self.distinct if self.distinct is not None else len(self.indices)

    @classmethod
    def of(cls, store: Store, record: JobRecord) -> JobSpec:
        """The spec of a stored job's current list, from its metadata."""
        spec = cls(record.name, current_positions(store, record), finished=False, policy=record.policy)
        return replace(spec, finished=store.done_among(record.name, spec.indices) >= spec.total)


def distinct(positions: Sequence[int]) -> Sequence[int]:
    """The distinct indices of `positions` in order of first appearance, found with a
    bitmap (a set of a million ints would take 30 MB); a range when they are consecutive."""
    if not positions:
        return range(0)
    seen = bytearray((max(positions) >> 3) + 1)
    out = array("I")
    for i in positions:
        byte, bit = i >> 3, 1 << (i & 7)
        if not seen[byte] & bit:
            seen[byte] |= bit
            out.append(i)
    if out[-1] - out[0] == len(out) - 1 and all(b > a for a, b in zip(out, out[1:], strict=False)):
        return range(out[0], out[-1] + 1)
    return out


def current_positions(store: Store, record: JobRecord) -> Sequence[int]:
    """The indices of the job's current list (the last call's); a script's job, or one
    stored by an earlier nbtasks, is the list of all its inputs."""
    if record.list is not None:
        found = store.view(record.name, record.list)
        if found is not None:
            return found[0]
    return range(record.total)


def check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ConfigError(f"name= must be a non-empty string of at most {MAX_NAME} characters, not {name!r}.")


def define(
    store: Store,
    func: Callable[..., Any],
    dump: Callable[[], bytes | None],
    ident: Identity,
    items: list[Any] | Stream,
    *,
    name: str | None,
    fresh: bool,
    policy: Policy,
) -> JobSpec:
    """Find or create the job of the function, store what it lacks, and make `items`
    its current list. `dump` serializes the function (NotPicklableError), only when
    something may run.

    Without a name, the job is the function's identity: the same function (code, what
    it reads) finds its results again, whatever list they came in, and an edited one gets
    a new job. With a name, the job survives edits: finished results are kept.

    A Stream's inputs are digested and stored a batch at a time; its list is known by the
    digest of its inputs' digests, made as they go (a list's own digest would need it whole).
    """
    name, record = (name, store.meta(name)) if name is not None else _unnamed(store, func, ident)
    if record is not None and fresh:
        store.delete(name)
        record = None
    if record is not None and record.appendable:
        raise JobMismatchError(
            f"Job '{name}' is a script's job (its inputs were added with `add`), so pmap cannot use it; "
            "choose another name=."
        )
    if record is not None and record.format not in INDEXED:
        _upgrade(store, name, record.total)
    lazy = isinstance(items, Stream)
    digest = "" if isinstance(items, Stream) else identity.list_digest(items)  # (a Stream's: made as it is read)
    found = store.view(name, digest) if record is not None and not lazy else None
    width = record.index_digest if record is not None else INDEX_DIGEST
    head = _digests(_head(items), 0, width) if found is None else []  # checked before anything is stored
    # A list whose every result is stored runs nothing: no need to store the function
    # (a large captured array would be written again for nothing).
    payload = None if found is not None and found[2] else dump()
    stored = _store_function(store, name, func, payload, ident, policy, DISTINCT, width)
    if found is None:
        indexed, of_inputs = _index(store, name, items, head, width)
        digest = digest or of_inputs
        spec = JobSpec(name, indexed, False, stored, list_digest=digest)
        store.save_view(name, digest, spec.positions, spec.total)
        complete = False
    else:
        positions, distinct, complete = found
        spec = JobSpec(name, positions, False, stored, distinct, digest)
    done = spec.total if complete else store.done_among(name, spec.indices)
    store.use_view(name, digest, spec.total, done >= spec.total)
    if done >= spec.total and not complete:
        store.mark_complete(name, digest)
    if record is not None and record.code != ident.digest:
        _say_changed(record, codec.func_label(func), ident, done, spec.total)
    return replace(spec, finished=done >= spec.total)


def _unnamed(store: Store, func: Callable[..., Any], ident: Identity) -> tuple[str, JobRecord | None]:
    """The name and metadata of an unnamed job: the function's name and the start of its
    identity, longer in the unlikely case that another identity holds that name."""
    for length in (12, 24):
        name = f"{codec.func_label(func)}-{ident.digest[:length]}"
        record = store.meta(name)
        if record is None or record.code == ident.digest:
            return name, record
    name = f"{codec.func_label(func)}-{ident.digest}"
    return name, store.meta(name)


def _head(items: list[Any] | Stream) -> list[Any]:
    return items.head if isinstance(items, Stream) else items[:INDEX_BATCH]


def _index(
    store: Store, name: str, items: list[Any] | Stream, head: list[bytes], width: int
) -> tuple[Sequence[int], str]:
    """The index in the job of each item, storing those the job does not hold yet, each
    distinct one once; a batch at a time, so that no per-item structure but the result
    is held for the whole list. `head`: the digests of the first batch; `width`: their
    length in the job's index. Also a digest of the inputs' digests in order (a Stream's
    list digest).

    index.ADD finds the inputs held already, atomically, so two callers storing the same
    inputs at once share them. Look-ups first only spare sending those inputs again: a
    job that held nothing when the call began is not looked up. A batch is stored by a
    thread while the next one is digested (the server's work and ours overlap)."""
    looked_up = store.holds_inputs(name)
    positions = array("I")
    whole = hashlib.sha256(b"nbtasks stream\n")
    batches = items.batches() if isinstance(items, Stream) else _slices(items)
    sending: deque[tuple[Future[list[int]], list[bytes], list[int | None], list[bytes]]] = deque()

    def settle() -> None:  # the oldest batch sent: its positions, in list order
        future, digests, found, new = sending.popleft()
        added = dict(zip(new, future.result(), strict=True))
        positions.extend(index if index is not None else added[d] for d, index in zip(digests, found, strict=True))

    start = 0
    expect = len(items) if isinstance(items, list) else INDEX_BATCH  # (how large a new index is made)
    with ThreadPoolExecutor(1, thread_name_prefix="nbtasks-store") as sender:
        for batch in batches:
            digests = head if start == 0 else _digests(batch, start, width)
            whole.update(b"".join(digests))
            found: list[int | None] = store.lookup(name, digests) if looked_up else [None] * len(digests)
            new: dict[bytes, int] = {}  # digest -> where it first stands in the batch
            for offset, (digest, index) in enumerate(zip(digests, found, strict=True)):
                if index is None:
                    new.setdefault(digest, offset)
            firsts = list(new.values())

            def payload(j: int, firsts: list[int] = firsts, batch: list[Any] = batch, start: int = start) -> bytes:
                return codec.dump_input(batch[firsts[j]], start + firsts[j])

            calls = store.prepare_inputs(name, list(new), payload)
            sending.append((sender.submit(store.send_inputs, name, calls, expect), digests, found, list(new)))
            if len(sending) > 1:
                settle()
            start += len(batch)
        while sending:
            settle()
    # A new job's list: its range, rather than 4 bytes per item held through the run.
    if start and positions == array("I", range(positions[0], positions[0] + start)):
        return range(positions[0], positions[0] + start), "s" + whole.hexdigest()
    return positions, "s" + whole.hexdigest()


def _slices(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), INDEX_BATCH):
        yield items[start : start + INDEX_BATCH]


def _digests(items: list[Any], start: int, width: int) -> list[bytes]:
    """The digest of each input, its first `width` bytes; NotPicklableError for one
    nothing can pickle."""
    out = []
    walker = identity.Walker()
    for position, item in enumerate(items, start):
        try:
            out.append(identity.input_digest(item, walker)[:width])
        except identity.Unpicklable:
            codec.dump_input(item, position)  # raises NotPicklableError, naming the item
            raise
    return out


def _upgrade(store: Store, name: str, total: int) -> None:
    """Index the inputs of a job stored by an earlier nbtasks (one job per list), so that
    a named call can reuse its results."""
    walker = identity.Walker()
    for start in range(0, total, BATCH):
        indices = range(start, min(start + BATCH, total))
        payloads = store.inputs(name, list(indices))
        entries = {
            identity.input_digest(codec.load(p), walker): i
            for i, p in zip(indices, payloads, strict=True)
            if isinstance(p, bytes)
        }
        store.index_inputs(name, entries)
    store.upgraded(name, total)


def append(
    store: Store, name: str, func: Callable[..., Any], func_payload: bytes, items: list[Any], policy: Policy
) -> JobSpec:
    """Find or create a job whose inputs grow by appending (a script's ``add``), store
    the function, and append `items` after the inputs it holds."""
    record = store.meta(name)
    if record is not None and not record.appendable:
        raise JobMismatchError(
            f"Job '{name}' was made by pmap, so nothing can be appended to it; "
            "name the script's job otherwise with set_func(func, name=...)."
        )
    ident = identity.identify(func)
    total = record.total if record is not None else 0
    stored = _store_function(store, name, func, func_payload, ident, policy, APPENDABLE)
    done = store.done_count(name) if record is not None else 0
    if record is not None and record.code != ident.digest:
        _say_changed(record, codec.func_label(func), ident, done, total)
    if items or record is None:
        start = store.reserve_inputs(name, len(items))
        payloads = [codec.dump_input(item, start + offset) for offset, item in enumerate(items)]
        total = store.append_inputs(name, start, payloads)
    return JobSpec(name, range(total), finished=done >= total, policy=stored)


def _store_function(
    store: Store,
    name: str,
    func: Callable[..., Any],
    func_payload: bytes | None,
    ident: Identity,
    policy: Policy,
    inputs: str,
    index_digest: int | None = None,
) -> RunPolicy:
    """Store the function (unless None: nothing will run), its identity, the policy and
    the kind of its inputs in the job's metadata; return the policy as stored. Both are
    stored again at every call that runs: a stored pickle is never trusted across Python
    versions or edits, and each call sets its own policy."""
    stored = policy.stored()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    place = blobs.place_for(store.url)
    if place:
        blobs.open_blobs(place)  # a place that cannot be used says so here, not in a worker
    fields = definition(
        code=ident.digest,
        parts=ident.parts,
        function=codec.func_label(func),
        python=python,
        policy=stored,
        inputs=inputs,
        blobs=place,
        index_digest=index_digest,
    )
    store.define(name, fields, func_payload)
    return stored


def _say_changed(before: JobRecord, label: str, ident: Identity, done: int, total: int) -> None:
    """One line: what changed in a named job's function since its last call."""
    if before.function not in (None, label):
        changed = f"another function: {label} instead of {before.function}"
    else:
        changed = ", ".join(ident.changes(before.parts)) if before.parts is not None else "its function"
    rest = f"; the new code runs the other {total - done}" if done < total else ""
    print(
        f"nbtasks: job '{before.name}' changed since its last call ({changed}); "
        f"its {done} results for these inputs are kept{rest}.",
        file=sys.stderr,
    )
