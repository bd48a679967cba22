"""Per-key limits from a worker's side (see `nbtasks.limits`): claiming under them,
finding the keys of new items, and turning a task's `Backoff` into its outcome.

A worker is the only place that can compute an item's key (it has the key function
and the input), so new items come from the queue unkeyed; the gate keys them and asks
Redis which may start (`Store.admit`). The others wait in Redis under their keys, where
any worker of the job takes them once their key may start one."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from .. import codec
from ..backends import Task
from ..errors import PayloadRejected
from ..limits import Backoff
from ..policy import RunPolicy
from ..store import Outcome, Store

Item = tuple[int, bytes | PayloadRejected]

# A key's turn may be taken this early when turns come faster than every TAU_MS: a claim
# every few ms would be needed otherwise. Slower (polite) rates keep each turn exact.
TAU_MS = 50.0
LOOK = 0.05  # seconds between looks while items wait for keys whose slots are all taken


class Gate:
    """A worker's claims: plain ones, or under its job's per-key limits once `limit`
    gave it a key function."""

    def __init__(self, store: Store, job: str, wid: str, retrying: Callable[..., Any], over: threading.Event) -> None:
        self.store, self.job, self.wid, self.retrying, self.over = store, job, wid, retrying, over
        self.key: Callable[[Any], Any] | None = None
        self.limits = (0, 0.0, 0.0)  # a key's cap, ms between its starts, ms a turn may be taken early
        self.values: dict[int, Any] = {}  # inputs unpickled to find their keys: the tasks take them
        self.recorded = threading.Event()  # set after each record: a slot may have come back

    def limit(self, key: Callable[[Any], Any] | None, policy: RunPolicy) -> None:
        """Claim under the policy's per-key limits, when it has them."""
        if policy.keyed and key is not None:
            interval = 1000 / policy.key_rate if policy.key_rate else 0.0
            early = TAU_MS if 0 < interval < TAU_MS else 0.0
            self.key, self.limits = key, (policy.key_concurrency or 0, interval, early)

    def claim(self, token: str, want: int, failed: Callable[[Outcome], None]) -> tuple[list[Task], float] | None:
        """Up to `want` items that may start now, and how long to wait before looking
        again if none may; None once the caller let go of the job. Items that cannot run
        (an input whose signature failed, one whose key could not be found) go to
        `failed` as their outcomes."""
        if self.key is None:
            items = self.retrying(self.store.claim, self.job, token, self.wid, want)
            return None if items is None else (_runnable(items, failed), float("inf"))
        claim = self.retrying(self.store.claim_keyed, self.job, token, self.wid, want, self.limits)
        if claim is None:
            return None
        items, keyed, payloads = list(claim.started), [], {}
        for index, payload in claim.fresh:
            if isinstance(payload, PayloadRejected):
                items.append((index, payload))  # (failed below)
                continue
            try:
                value = codec.load(payload)
                key = self.key(value)
            except Exception as exc:  # a final failure: the same input gives the same key
                failed(Outcome(index, "0", codec.failure_payload(exc), codec.failure_line(exc)))
                continue
            self.values[index] = value
            if key is None:
                items.append((index, payload))  # not limited
            else:
                keyed.append((index, str(key)))
                payloads[index] = payload
        started = self.retrying(self.store.admit, self.job, self.wid, keyed, self.limits) if keyed else set()
        for index, _ in keyed:
            if index in started:
                items.append((index, payloads[index]))
            else:
                del self.values[index]  # it waits under its key, for whichever worker
        wait = claim.wake if claim.wake is not None else float("inf")
        return _runnable(items, failed), min(wait, LOOK) if claim.held else wait

    def load(self, index: int, payload: bytes) -> Any:
        """An item's input: unpickled already if its key was found here."""
        return self.values.pop(index) if index in self.values else codec.load(payload)

    def pause(self, seconds: float) -> None:
        """Wait up to `seconds`: under limits, less if this worker recorded something
        meanwhile (a slot of a key may have come back); else less if the run is over."""
        if self.key is None:
            self.over.wait(seconds)
            return
        self.recorded.wait(seconds)
        self.recorded.clear()


def _runnable(items: list[Item], failed: Callable[[Outcome], None]) -> list[Task]:
    tasks = []
    for index, payload in items:
        if isinstance(payload, PayloadRejected):
            # Never unpickled, never run, never retried: recorded once as a final failure.
            print(f"nbtasks: {payload}", file=sys.stderr)
            failed(Outcome(index, "0", codec.failure_payload(payload), codec.failure_line(payload)))
        else:
            tasks.append(Task(index, payload))
    return tasks


def backed_off(index: int, error: BaseException) -> Outcome | None:
    """The outcome of a task that raised `Backoff`: no failure, a pause (in ms, -1: its
    key's own) for RECORD; None for any other exception."""
    if not isinstance(error, Backoff):
        return None
    ms = -1 if error.seconds is None else round(error.seconds * 1000)
    return Outcome(index, "b", str(ms).encode(), f"backed off ({error})")
