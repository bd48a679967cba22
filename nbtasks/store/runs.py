"""Store operations of a run: taking a job over, the queue and claims, recording
outcomes, heartbeats of workers on other machines, the shared rate limit and per-key
limits (see `limits`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import codec
from ..errors import PayloadRejected
from ..keys import RUN_STATE
from ..trust import FAILURE, RESULT
from .base import StoreBase
from .bits import BATCH, BATCH_BYTES, batches, done_and_pending
from .records import Counts, JobRecord, KeyedClaim, KeyStates, Outcome, decoded

RATE_WINDOW_MS = 50  # a rate limit grants the turns that fall within this much time


class RunOps(StoreBase):
    def begin_run(self, job: str, token: str, indices: Sequence[int], ttl: float, resume: bool = False) -> Counts:
        """Take the job over and queue every item of `indices` (distinct) without a
        result, failed ones included; the job's counters count those items.

        Workers of an earlier run see the new owner token and stop claiming; anything
        they still record is idempotent. With `resume` (the same run, after an outage or
        a lapsed heartbeat) failures, retries and attempts are kept, and only the
        claims are taken back: items without a result, a failure or a pending retry go
        back to the queue.
        """
        k = self.keys[job]
        self.client.set(k.owner, token, px=int(ttl * 1000))
        pipe = self.client.pipeline(transaction=True)
        pipe.get(k.done)
        pipe.hkeys(k.failures)
        pipe.zrange(k.delayed, 0, -1)
        pipe.smembers(k.workers)
        bitmap, failed, delayed, wids = pipe.execute()
        total, bitmap = len(indices), bitmap or b""
        waiting = {int(i) for i in [*failed, *delayed]} if resume else set()
        known, without = done_and_pending(bitmap, indices)
        pending = (i for i in without if i not in waiting)  # (pushed a batch at a time: 10 million ints are 360 MB)
        claims = [k.claims(w.decode()) for w in wids]
        if resume:
            pipe.delete(k.queue, *claims)
        else:
            pipe.delete(k.workers, *(getattr(k, part) for part in RUN_STATE), *claims)
            pipe.hset(k.meta, mapping={"started": time.time(), "done_at_start": known, "workers": 0})
            pipe.hdel(k.meta, "ended")
        pipe.hset(k.meta, "total", total)  # what the last item's record compares with
        pipe.execute()
        # Items waiting for their limit keys are queued again below, with the rest.
        self._clear_keyed(keys=[k.counts], args=[k.prefix, 0 if resume else 1])
        for _, batch in batches(pending, BATCH):
            pipe.rpush(k.queue, *batch)
            pipe.execute()
        # Bits set since the bitmap was read are items recorded meanwhile: counted too.
        seen = int.from_bytes(bitmap, "big").bit_count()
        done, failed_count = self._set_counts(keys=[k.counts, k.failures, k.done], args=[known, seen])
        return Counts(total, int(done), int(failed_count))

    def wait_finished(self, job: str, timeout: float) -> bool:
        """Block up to `timeout` seconds for the job's last item to settle."""
        return self.client.blpop([self.keys[job].finished], timeout=timeout) is not None

    def settled(self, job: str, indices: Sequence[int]) -> int:
        """Items of `indices` with a recorded result or final failure, from the bitmap itself."""
        bitmap, failed = self.done_and_failed(job)
        done, pending = done_and_pending(bitmap, indices)
        return done + (sum(1 for i in pending if i in failed) if failed else 0)

    def done_and_failed(self, job: str) -> tuple[bytes, set[int]]:
        """The done-bitmap and the items with a final failure, in one round trip."""
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=False)
        pipe.get(k.done)
        pipe.hkeys(k.failures)
        bitmap, failed = pipe.execute()
        return bitmap or b"", {int(i) for i in failed}

    def poll(self, job: str, token: str, total: int, ttl: float, workers: int = 0) -> Counts:
        """Refresh the caller's heartbeat (and its count of live workers) and read the
        counters, in one round trip."""
        k = self.keys[job]
        keys = [k.owner, k.counts, k.cancel, k.meta, k.delayed]
        owner, done, failed, running, retrying, epoch = self._poll(keys=keys, args=[token, int(ttl * 1000), workers])
        epoch = epoch.decode() if epoch is not None else None
        return Counts(total, int(done), int(failed), int(running), owner.decode(), int(retrying), epoch)

    def cancel(self, job: str, why: str = "cancel") -> bool:
        """Ask whoever runs the job to stop ("reset": it is about to be deleted); False
        if nobody runs it."""
        k = self.keys[job]
        if not self.client.exists(k.owner):
            return False
        self.client.set(k.cancel, why, ex=60)  # unclaimed, it lapses: a cancel is for the run under way
        return True

    def cancel_reason(self, job: str) -> str | None:
        """Why the run under way was asked to stop (see `cancel`), if it was."""
        reason = self.client.get(self.keys[job].cancel)
        return reason.decode() if reason is not None else None

    def end_run(self, job: str, token: str) -> None:
        """Release the job (if still ours): its workers see the owner gone and exit."""
        k = self.keys[job]
        self._release(keys=[k.owner, k.cancel, k.meta], args=[token, time.time()])

    def owner(self, job: str) -> str | None:
        value = self.client.get(self.keys[job].owner)
        return value.decode() if value is not None else None

    def claim(self, job: str, token: str, wid: str, count: int) -> list[tuple[int, bytes | PayloadRejected]] | None:
        """Take up to `count` items in one round trip; None once the caller let go. An
        input whose signature fails comes as the PayloadRejected error, not as bytes."""
        k = self.keys[job]
        keys = [k.owner, k.queue, k.claims(wid), k.inputs, k.workers, k.counts, k.delayed]
        reply = self._claim(keys=keys, args=[token, count, wid])
        if reply is None:
            return None
        if not reply:
            return []
        indices = [int(i) for i in reply[0]]
        return list(zip(indices, self._open_inputs(job, list(zip(indices, reply[1], strict=True))), strict=True))

    def record(self, job: str, wid: str, outcomes: Iterable[Outcome], retries: int = 0, delay: float = 0.0) -> None:
        """Record results and failures of one worker, atomically and idempotently per
        item, in calls of about BATCH_BYTES at most; a retryable failure with attempts left
        waits `delay` x 2^(attempt-1) s, jittered."""
        k = self.keys[job]
        keys = [k.done, k.results, k.failures, k.counts, k.claims(wid), k.attempts, k.history, k.delayed]
        keys += [k.meta, k.finished]
        outcomes = list(outcomes)
        # Results sealed (compressed, large ones kept outside Redis); failures signed only.
        results = [o for o in outcomes if o.kind == "1"]
        sealed = self._seal(job, RESULT, [(o.index, o.payload) for o in results])
        sign = self.signer.sign
        failures = [
            (o.index, o.kind, _failure(sign, job, o), random.uniform(0.75, 1.25), o.line)
            for o in outcomes
            if o.kind != "1"
        ]
        # Calls of about BATCH_BYTES at most, each with its results, then its failures.
        calls: list[tuple[list[Any], list[Any]]] = [([], [])]
        size = 0
        parts = [(0, (o.index, p), p) for o, p in zip(results, sealed, strict=True)]
        for part, args, payload in [*parts, *((1, f, f[2]) for f in failures)]:
            if size + len(payload) > BATCH_BYTES and any(calls[-1]):
                calls.append(([], []))
                size = 0
            calls[-1][part].extend(args)
            size += len(payload)
        for ok, failed in calls:
            if ok or failed:
                self._record(keys=keys, args=[retries, delay * 1000, len(ok) // 2, k.prefix, *ok, *failed])

    def requeue(self, job: str, wid: str) -> int:
        """Give a stopped worker's unfinished items back to the queue; how many went back."""
        k = self.keys[job]
        return int(self._requeue(keys=[k.claims(wid), k.queue, k.done, k.counts], args=[k.prefix]))

    def unclaim(self, job: str, wid: str, indices: list[int]) -> int:
        """Give back items a worker claimed and has not started; how many went back."""
        k = self.keys[job]
        return int(self._unclaim(keys=[k.claims(wid), k.queue, k.done, k.counts], args=[k.prefix, *indices]))

    def bury(self, job: str, wid: str, culprit: int, limit: int, payload: bytes, line: str) -> int:
        """A worker died executing `culprit` (-1: none): requeue its unfinished items,
        counting the death against the culprit, which fails after `limit` deaths.
        Returns how many items the worker had claimed."""
        k = self.keys[job]
        keys = [k.claims(wid), k.queue, k.done, k.counts, k.deaths, k.failures, k.history, k.attempts]
        signed = self.signer.sign(job, culprit, FAILURE, payload)
        return int(self._bury(keys=keys, args=[culprit, limit, signed, line, k.prefix]))

    def alive(self, job: str, wid: str, ttl: float) -> None:
        """A worker on another machine lives; said again before `ttl` seconds pass."""
        self.client.set(self.keys[job].alive(wid), 1, px=int(ttl * 1000))

    def lost_workers(self, job: str, local: Callable[[str], bool]) -> list[str]:
        """Workers of other machines whose heartbeat expired (a cut link, a dead host):
        their unfinished items go back to the queue, and they leave the run."""
        k = self.keys[job]
        remote = [w.decode() for w in self.client.smembers(k.workers) if not local(w.decode())]
        if not remote:
            return []
        pipe = self.client.pipeline(transaction=False)
        for wid in remote:
            pipe.exists(k.alive(wid))
        lost = [wid for wid, alive in zip(remote, pipe.execute(), strict=True) if not alive]
        for wid in lost:
            self.requeue(job, wid)
            self.client.srem(k.workers, wid)
        return lost

    def refuse(self, job: str, who: str, message: str) -> None:
        """Note why a worker (`who`: its host and Python) cannot run the job."""
        self.client.hset(self.keys[job].refused, who, message)

    def refusals(self, job: str) -> dict[str, str]:
        return decoded(self.client.hgetall(self.keys[job].refused))

    def runs(self) -> list[tuple[str, str, JobRecord, int]]:
        """Jobs a caller runs now: name, the run's token, meta, and items waiting
        (queued or to be retried)."""
        names = self.job_names()
        pipe = self.client.pipeline(transaction=False)
        for job in names:
            k = self.keys[job]
            pipe.get(k.owner)
            pipe.hgetall(k.meta)
            pipe.llen(k.queue)
            pipe.zcard(k.delayed)
            pipe.hget(k.counts, "held")
        replies = pipe.execute()
        out = []
        for i, job in enumerate(names):
            token, meta, queued, delayed, held = replies[5 * i : 5 * i + 5]
            record = JobRecord.parse(job, decoded(meta))
            if token is not None and record is not None:
                out.append((job, token.decode(), record, int(queued) + int(delayed) + int(held or 0)))
        return out

    def take_turns(self, job: str, want: int, per_second: float) -> tuple[int, float]:
        """Turns granted under the job's shared rate limit, or seconds to wait for one."""
        granted, wait_ms = self._take(keys=[self.keys[job].rate], args=[1000 / per_second, want, RATE_WINDOW_MS])
        return int(granted), int(wait_ms) / 1000

    def claim_keyed(
        self, job: str, token: str, wid: str, count: int, limits: tuple[int, float, float]
    ) -> KeyedClaim | None:
        """Under per-key limits (cap, ms between starts, ms early): take up to `count`
        items in one round trip, those whose key let them start and new ones whose keys
        are unknown yet (see `admit`); None once the caller let go."""
        k = self.keys[job]
        keys = [k.owner, k.queue, k.claims(wid), k.inputs, k.workers, k.counts, k.delayed]
        reply = self._claim_keyed(keys=keys, args=[token, count, wid, k.prefix, *limits])
        if reply is None:
            return None
        started, fresh, payloads, wake, held = reply
        indices = [int(i) for i in [*started, *fresh]]
        opened = self._open_inputs(job, list(zip(indices, payloads, strict=True)))
        items = list(zip(indices, opened, strict=True))
        return KeyedClaim(items[: len(started)], items[len(started) :], None if wake < 0 else wake / 1000, int(held))

    def admit(self, job: str, wid: str, keyed: list[tuple[int, str]], limits: tuple[int, float, float]) -> set[int]:
        """New items with their keys: those that may start now (their slots taken); the
        others wait under their keys, no longer claimed."""
        if not keyed:
            return set()
        k = self.keys[job]
        args: list[Any] = [k.prefix, *limits]
        for index, key in keyed:
            args += [index, key]
        return {int(i) for i in self._admit(keys=[k.claims(wid), k.counts], args=args)}

    def key_states(self, job: str, top: int = 5) -> KeyStates:
        """The busiest limit keys (running and waiting) and those backing off now."""
        busy, holding = self._key_states(args=[self.keys[job].prefix, top])
        return KeyStates(
            [(key.decode(errors="replace"), int(r), int(w)) for key, r, w in busy],
            [(key.decode(errors="replace"), int(ms) / 1000, int(streak)) for key, ms, streak in holding],
        )

    def attempts(self, job: str, indices: list[int]) -> list[tuple[int, str]]:
        """Failed attempts and their one-line history, per index."""
        if not indices:
            return []
        k = self.keys[job]
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(k.attempts, indices)
        pipe.hmget(k.history, indices)
        counts, lines = pipe.execute()
        return [(int(c or 0), (h or b"").decode()) for c, h in zip(counts, lines, strict=True)]

    def set_fatal(self, job: str, message: str) -> None:
        self.client.set(self.keys[job].fatal, message, ex=3600)

    def fatal(self, job: str) -> str | None:
        value = self.client.get(self.keys[job].fatal)
        return value.decode() if value is not None else None


def _failure(sign: Callable[[str, int, bytes, bytes], bytes], job: str, outcome: Outcome) -> bytes:
    """A failure's payload as RECORD takes it: signed; a backoff's is its pause in ms."""
    if outcome.kind == "b":
        assert isinstance(outcome.payload, bytes)
        return outcome.payload
    return sign(job, outcome.index, FAILURE, codec.pickled(outcome.payload))
