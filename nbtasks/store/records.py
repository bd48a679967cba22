"""What store operations hand over: a snapshot of a job's counters, and one attempt's
outcome on its way to being recorded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt of one item gave: kind "1" a result, "r" a failure that may be
    retried, "0" a final failure; `line` is the failure in one line, for the history."""

    index: int
    kind: str
    payload: bytes
    line: str = ""


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
