"""Every error nbtasks raises, and the record of one failed task.

NbtasksError
├── ConfigError          no Redis configured, contradictory settings
├── RedisUnavailable     the Redis server cannot be reached, or answers with an error
│   ├── ConnectionLost   it stopped answering (a restart, a failover): results are kept
│   └── WritesRefused    it refuses writes (out of memory, a read-only replica)
├── NotPicklableError    the function or an input cannot be sent to the workers
├── ResultNotPicklable   a task's return value cannot be sent back (that item's failure)
├── JobMismatchError     a script's job name used by pmap, or the other way round
├── WorkerError          worker processes cannot start or keep dying
├── JobCancelled         the run was cancelled (job.cancel(), the dashboard)
├── JobLost              Redis came back without the job's data
├── UnknownJob           no job of that name in the store
├── PayloadRejected      a stored payload failed its signature check: never unpickled
│   └── PayloadLost      a payload kept outside Redis is missing or altered: its item runs again
├── BlobsUnavailable     the place for large payloads cannot be written or read now
└── TaskError            some tasks raised; carries every Failure

SecurityWarning          a Redis reachable from other hosts, and no secret set
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class NbtasksError(Exception):
    """Base class of every error nbtasks raises."""


class ConfigError(NbtasksError):
    """The settings are missing or contradict each other."""


class RedisUnavailable(NbtasksError):
    """The Redis server cannot be reached, or answers with an error."""


class ConnectionLost(RedisUnavailable):
    """The server stopped answering (a restart, a failover, a cut link); `lasted`: for
    how long a run waited for it."""

    def __init__(self, url: str, cause: BaseException, lasted: float | None = None) -> None:
        self.url, self.cause = url, cause
        during = f" for {lasted:.0f} s" if lasted is not None else ""
        super().__init__(
            f"Lost Redis at {url}{during} ({cause}). Every result recorded before is kept: "
            "run the same call again once the server is back."
        )


class WritesRefused(RedisUnavailable):
    """The server refuses writes: out of memory (maxmemory), or a read-only replica."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url, self.cause = url, cause
        super().__init__(
            f"Redis at {url} refuses writes ({cause}). Recorded results are kept; free memory there "
            "(nbtasks.reset() old jobs, or raise its maxmemory) and run the call again."
        )


class NotPicklableError(NbtasksError):
    """The function or an input cannot be serialized for the workers."""


class ResultNotPicklable(NbtasksError):
    """A task's return value cannot be sent back to the caller (a lock, a connection, an
    open file, a generator). Raised in the worker: the caller sees it as that item's
    `Failure`, whose traceback is the message alone."""


class JobMismatchError(NbtasksError):
    """A script's job (inputs added with ``add``) named in pmap, or a pmap job in a script."""


class WorkerError(NbtasksError):
    """Worker processes could not start, or kept dying."""


class JobCancelled(NbtasksError):
    """The run was cancelled; recorded results are kept."""


class JobLost(NbtasksError):
    """Redis lost the job's data mid-run (it restarted empty)."""


class UnknownJob(NbtasksError, LookupError):
    """No job of that name is in the store."""


class PayloadRejected(NbtasksError):
    """A payload read from Redis failed its signature check, so it was not unpickled:
    someone wrote to the server, or the secret differs (see `nbtasks.trust`)."""

    def __init__(self, job: str, index: int, why: str) -> None:
        self.job, self.index = job, index
        what = "the function" if index < 0 else f"item {index}"
        super().__init__(
            f"Refused a payload of job '{job}' ({what}): {why}. It was not unpickled. If nobody else "
            "writes to this Redis, check that every machine has the same NBTASKS_SECRET."
        )


class PayloadLost(PayloadRejected):
    """A payload kept outside Redis (see `configure(blobs=...)`) is missing or is not the
    one recorded: deleted or altered behind nbtasks' back. It was not unpickled; a lost
    result is forgotten, so that its item runs again on the next call."""

    def __init__(self, job: str, index: int, where: str, why: str, then: str = "") -> None:
        self.job, self.index, self.where = job, index, where
        then = then or "Its item runs again on the next call of the same pmap."
        NbtasksError.__init__(self, f"Job '{job}' (item {index}): its payload in {where} {why}; not unpickled. {then}")


class BlobsUnavailable(NbtasksError):
    """The place for large payloads (see `configure(blobs=...)`) cannot be written or read
    now: a full disk, a folder not mounted, an object store out of reach. Nothing is
    forgotten: the same call again, once it is back, goes on."""


class SecurityWarning(UserWarning):
    """nbtasks uses a Redis that other hosts can reach, without a secret."""


@dataclass(frozen=True)
class Failure:
    """One task that failed: where, with what input, the last attempt's exception and
    remote traceback, one line per failed attempt (`history`), and the last lines its
    last attempt printed or logged (`output`)."""

    index: int
    input: Any
    exc_type: str
    message: str
    traceback: str
    attempts: int = 1
    history: tuple[str, ...] = ()
    output: str = ""  # the last lines the last attempt printed or logged

    def __str__(self) -> str:
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"item {self.index} (input {_short(self.input)}) raised {self.exc_type}: {self.message}{tries}"


class TaskError(NbtasksError):
    """Some tasks raised. The others' results are stored; run the call again to retry."""

    def __init__(self, job: str, total: int, failures: list[Failure]) -> None:
        self.job = job
        self.total = total
        self.failures = failures
        first = failures[0]
        super().__init__(
            f"{len(failures)} of {total} tasks of job '{job}' failed; the first, {str(first).rstrip('.')}. Results of "
            "the others are kept. Running the same call again, unchanged, retries only the failed ones; "
            f"after you fix the function, add name={job!r} to the call so that the finished results are "
            "kept (an edited function is otherwise a new job, run from the start)."
            f"\n\nRemote traceback of item {first.index}:\n"
            f"{first.traceback.rstrip()}" + (f"\n\nItem {first.index} printed:\n{first.output}" if first.output else "")
        )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
