"""Frozen snapshots of jobs, and their rendering as text. The live widget lives in
`dashboard`; both only render snapshots taken here."""

from __future__ import annotations

import html
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import Failure
from .store import Store


@dataclass(frozen=True)
class JobStatus:
    """One job at one moment. `state` is "running", "finished", "failed" (settled, some
    failed) or "stopped" (interrupted, cancelled, or its caller died)."""

    name: str
    function: str
    total: int
    done: int
    failed: int
    running: int
    retrying: int  # failed attempts waiting for their retry
    state: str
    workers: int
    rate: float  # results per second over the run under way (0 when none is)
    created: float
    taken_at: float
    size: int = 0  # about how many bytes it takes: the server's memory, and large payloads outside Redis
    # Under per-key limits, while running: the busiest keys (key, running, waiting for the
    # key) and the keys backing off (key, seconds left, backoffs in a row).
    busiest: tuple[tuple[str, int, int], ...] = ()
    backing_off: tuple[tuple[str, float, int], ...] = ()

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - self.running - self.retrying)

    @property
    def eta(self) -> float | None:
        """Seconds until every item is settled at the current rate, while running."""
        if self.state != "running" or self.rate <= 0:
            return None
        return (self.total - self.done - self.failed) / self.rate

    @property
    def age(self) -> float:
        return self.taken_at - self.created

    def __str__(self) -> str:
        return table([self])

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(table([self]))}</pre>"


def snapshots(store: Store, names: Sequence[str] | None = None, sizes: bool = True) -> list[JobStatus]:
    """Snapshots of the named jobs (default: every job in the store), in one round trip,
    and one more for the memory they take (without `sizes`, their size is 0)."""
    names = list(names) if names is not None else store.job_names()
    now = time.time()
    out = []
    found = store.snapshot(names)
    records = [record for record, _, _ in found if record is not None]
    taken = iter(store.sizes(records) if sizes else [0] * len(records))
    for record, (done, failed, running, retrying), owned in found:
        if record is None:
            continue  # deleted meanwhile
        total = record.total
        if owned:
            state = "running"
        elif done >= total:
            state = "finished"
        else:
            state = "failed" if failed and done + failed >= total else "stopped"
        started = record.started
        elapsed = (record.ended or now) - started if started else 0.0
        gained = done - (record.done_at_start if record.done_at_start is not None else done)
        rate = gained / elapsed if elapsed > 0 else 0.0
        workers = record.workers if owned else 0
        if not owned:
            # No run under way (finished, stopped, its caller killed): nothing runs, at no
            # rate, whatever the counters of the last run were left saying.
            running, rate = 0, 0.0
        created = record.created if record.created is not None else now
        function = record.function or "?"
        keys = store.key_states(record.name) if owned and record.policy.keyed else None
        out.append(
            JobStatus(
                record.name,
                function,
                total,
                done,
                failed,
                running,
                retrying,
                state,
                workers,
                rate,
                created,
                now,
                next(taken),
                tuple(keys.busiest) if keys else (),
                tuple(keys.backing_off) if keys else (),
            )
        )
    return out


HEADER = (
    "job",
    "function",
    "done",
    "failed",
    "retrying",
    "pending",
    "running",
    "workers",
    "rate",
    "ETA",
    "stored",
    "age",
    "state",
)


def row(s: JobStatus) -> tuple[str, ...]:
    percent = f"{100 * s.done / s.total:.0f}%" if s.total else "-"
    return (
        s.name,
        s.function,
        f"{s.done}/{s.total} {percent}",
        str(s.failed),
        str(s.retrying),
        str(s.pending),
        str(s.running),
        str(s.workers),
        f"{s.rate:,.1f}/s" if s.rate else "-",
        duration(s.eta) if s.eta is not None else "-",
        size_text(s.size),
        duration(s.age),
        s.state,
    )


# Dropped in this order when the table is wider than the terminal.
OPTIONAL = ("function", "age", "stored", "workers", "retrying", "ETA", "rate", "running", "pending")


def table(items: Sequence[JobStatus], width: int | None = None) -> str:
    """The snapshots as a plain-text table (what a terminal shows), no wider than
    `width` characters when columns can be dropped to fit."""
    if not items:
        return "No jobs. nbtasks.pmap(func, items) creates one."
    rows = [HEADER, *(row(s) for s in items)]
    columns = list(range(len(HEADER)))
    widths = [max(len(r[i]) for r in rows) for i in columns]
    for name in OPTIONAL:
        if width is None or sum(widths[i] + 2 for i in columns) - 2 <= width:
            break
        columns.remove(HEADER.index(name))
    if width is not None and (over := sum(widths[i] + 2 for i in columns) - 2 - width) > 0:
        widths[0] = max(8, widths[0] - over)  # still too wide: shorten job names
        rows = [(_clip(r[0], widths[0]), *r[1:]) for r in rows]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in columns).rstrip() for r in rows)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def detail(
    s: JobStatus,
    failures: Sequence[Failure],
    limit: int = 3,
    width: int | None = None,
    refusals: dict[str, str] | None = None,
) -> str:
    """One job in detail: its row, the workers that refused it, and its first failures
    with their tracebacks."""
    lines = [table([s], width)]
    if keys := keys_text(s):
        lines.append(keys)
    for who, why in (refusals or {}).items():
        lines.append(f"refused by a worker on {who}: {why}")
    if failures:
        first = "the first:" if len(failures) == 1 else f"the first {min(limit, len(failures))}:"
        lines.append(f"\n{len(failures)} failed; {first}")
        for f in failures[:limit]:
            lines += ["", textwrap.fill(str(f), width) if width else str(f), f.traceback.rstrip()]
    return "\n".join(lines)


def keys_text(s: JobStatus) -> str:
    """The keys of a job under per-key limits, in two lines: the busiest, and those backing
    off ("" when it has none to show)."""
    lines = []
    if s.busiest:
        busy = (f"{key} ({running} running, {waiting} waiting)" for key, running, waiting in s.busiest)
        lines.append("busiest keys: " + ", ".join(busy))
    if s.backing_off:
        held = (f"{key} for {left:.1f} s ({count(n, 'backoff')} in a row)" for key, left, n in s.backing_off)
        lines.append("backing off: " + ", ".join(held))
    return "\n".join(lines)


def count(n: int, noun: str) -> str:
    """ "1 input", "2 inputs": a number with its noun, singular or plural."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def size_text(size: int) -> str:
    """Bytes for a person: "512 B", "3.4 MiB", "1.2 GiB" (as `nbtasks server status`)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"
