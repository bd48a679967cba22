"""`Job`: a handle on a job in the store, from any process: follow it, wait for it,
cancel it, retry it, delete it (`reset`); deleting the jobs nobody uses (`prune`); and what
its dashboard row's buttons do."""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import blobs, interrupt, stream
from .config import Settings, parse_duration, settings
from .define import JobSpec
from .errors import Failure, JobCancelled, NbtasksError, UnknownJob
from .gather import gather, load_failures
from .job_status import JobStatus, size_text, snapshots
from .output import Output
from .progress import in_notebook
from .run import Run
from .store import JobRecord, Store, connect, safe_url

if TYPE_CHECKING:
    import redis

    from .dashboard import Dashboard


class Job:
    """A job in the store: follow it, wait for it, cancel it, from any process.

    ``pmap(..., background=True)`` returns one; ``nbtasks.Job("crawl")`` attaches to an
    existing job by name (after a kernel restart, from another notebook).
    """

    def __init__(self, name: str, *, redis: str | redis.Redis | Store | None = None) -> None:
        self._store = connect(redis if redis is not None else settings().redis_url)
        if self._store.meta(name) is None:
            raise UnknownJob(
                f"No job named {name!r} at {safe_url(self._store.url)}; nbtasks.jobs() (or `nbtasks jobs`) lists them."
            )
        self.name = name
        self._list: JobSpec | None = None  # the list this handle follows (see _spec)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._shown_in: int | None = None  # the cell that showed the job's row

    @property
    def _spec(self) -> JobSpec:
        """The list this handle follows: the job's current one when first asked, or the
        list of the call that made the handle."""
        if self._list is None:
            record = self._store.meta(self.name)
            if record is None:
                raise UnknownJob(f"Job {self.name!r} was deleted.")
            self._list = JobSpec.of(self._store, record)
        return self._list

    @property
    def total(self) -> int:
        """How many distinct inputs the handle's list has."""
        return self._spec.total

    @classmethod
    def _start(cls, store: Store, spec: JobSpec, cfg: Settings, progress: bool) -> Job:
        """The job of `spec`, run in the background by this process unless finished."""
        current = _background.get((store.url, spec.name, spec.list_digest))
        if current is not None and current._running_here():
            return current  # the same cell again while it runs: one run is enough
        handle = cls(spec.name, redis=store)
        handle._list = spec  # this call's list, whatever list comes next
        if not spec.finished:
            handle._run(cfg, progress)
        return handle

    def _run(self, cfg: Settings, progress: bool) -> None:
        spec = self._spec
        # In Jupyter the job's live dashboard row is its progress widget (with its
        # buttons); elsewhere a text bar. Begun here, in the caller's thread, so either
        # shows in the calling cell.
        widget = progress and in_notebook()
        lines = _OutputWidget() if widget else None
        run = Run(
            self._store, spec, cfg, None, progress and not widget, echo=lines.add if lines else None, background=True
        )
        if lines is not None:
            self._shown_in = None
            self._ipython_display_()
            lines.show()  # the tasks' output, under the job's row
        self._stop, self._error = threading.Event(), None
        self._thread = threading.Thread(target=self._follow, args=(run,), name=f"nbtasks {self.name}", daemon=True)
        self._thread.start()
        _background[(self._store.url, self.name, spec.list_digest)] = self

    def _follow(self, run: Run) -> None:
        try:
            run.follow(self._stop)
        except BaseException as exc:  # kept for result(); a thread has nobody to raise to
            self._error = exc

    def _running_here(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counts(self) -> JobStatus:
        """A frozen snapshot: total, done, failed, pending, running, rate, state..."""
        found = snapshots(self._store, [self.name])
        if not found:
            raise UnknownJob(f"Job {self.name!r} was deleted.")
        return found[0]

    def done(self) -> bool:
        """True once no run of the job is under way (finished, failed or stopped)."""
        if self._running_here():
            return False
        found = snapshots(self._store, [self.name], sizes=False)  # (polled: no memory sizes)
        if not found:
            raise UnknownJob(f"Job {self.name!r} was deleted.")
        return found[0].state != "running"

    @interrupt.shortened
    def result(self, timeout: float | None = None) -> list[Any]:
        """The results in input order, once the run is over; TaskError as pmap raises it.

        Raises TimeoutError if the run is still going after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {self.name!r} is still running after {timeout} s.")
            time.sleep(0.1)
        if self._error is not None:
            raise self._error
        state = self.counts()
        if state.state == "stopped":
            raise JobCancelled(
                f"Job {self.name!r} stopped with {state.done} of {state.total} results; "
                "job.retry_failed() or the same pmap call resumes it."
            )
        return gather(self._store, self._spec, self._spec.policy.errors)

    def results(self) -> Iterator[Any]:
        """The results in input order as they are recorded, waiting for those not recorded
        yet while the job runs (here or in any process); TaskError at a failed item, or
        its `Failure` with ``errors="return"``, as pmap. JobCancelled if the run stops
        before the last one."""
        return stream.in_order(self._store, self._spec, self._may_record, self._spec.policy.errors)

    def _stream(self, ordered: bool) -> Iterator[Any]:
        """`results` (or, unordered, (position, result) pairs) for imap: a stream left
        before its end (closed, interrupted, a failure raised) stops the run here, as an
        interrupted pmap does; what was recorded is kept."""
        spec, errors = self._spec, self._spec.policy.errors
        source = stream.in_order if ordered else stream.as_completed
        finished = False
        try:
            yield from source(self._store, spec, self._may_record, errors)
            finished = True
        finally:
            if not finished and self._running_here():
                self.cancel()
                assert self._thread is not None
                self._thread.join(30)

    def _may_record(self) -> bool:
        return self._running_here() or not self.done()

    def cancel(self) -> None:
        """Stop the run, wherever it runs; every recorded result is kept."""
        self._stop.set()
        self._store.cancel(self.name)
        if self._thread is not None:
            self._thread.join()

    def failures(self) -> list[Failure]:
        """Every failure of the last run: index, input, type, message, remote traceback."""
        return load_failures(self._store, self.name)

    def refusals(self) -> dict[str, str]:
        """Workers of `nbtasks worker` that cannot run the job (another Python, a module
        missing there): "host (Python x.y)" -> why."""
        return self._store.refusals(self.name)

    def logs(self, last: int | None = None) -> Output:
        """What the job's tasks printed, warned and logged, oldest first: each line with
        its item, stream ("out", "err", "log"), worker and time. The store keeps the last
        10,000 lines of a job; `last` returns only the newest so many."""
        return self._store.output(self.name, last)

    def retry_failed(
        self, *, processes: int | None = None, concurrency: int | None = None, progress: bool = True
    ) -> Job:
        """Run again, in the background here, every item without a result: the failed
        ones and any that never ran. Returns the job."""
        if self._running_here() or self.counts().state == "running":
            return self
        self._run(settings().replace(processes=processes, concurrency=concurrency), progress)
        return self

    def __repr__(self) -> str:
        s = self.counts()
        return f"<nbtasks.Job {self.name!r} {s.state}: {s.done}/{s.total} done, {s.failed} failed>"

    def _ipython_display_(self) -> None:
        """In Jupyter: the job's live dashboard row (bar, counts, cancel, retry, failures)."""
        cell = _cell()
        if cell is not None and cell == self._shown_in:
            return  # pmap(..., background=True) showed it already, in this same cell
        self._shown_in = cell
        dashboard(self._store, [self.name]).show()


def _cell() -> int | None:
    """The number of the Jupyter cell running now (None outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else int(shell.execution_count)


class _OutputWidget:
    """Where a background run's task output goes in Jupyter: an Output widget, which a
    thread may add to after the cell has ended (a print would land in whatever cell runs)."""

    def __init__(self) -> None:
        import ipywidgets

        self.widget = ipywidgets.Output()

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]

    def add(self, text: str, to_stderr: bool) -> None:
        (self.widget.append_stderr if to_stderr else self.widget.append_stdout)(text + "\n")


_background: dict[tuple[str, str, str], Job] = {}  # runs this process drives, by (url, job, list)


@atexit.register
def _stop_background_runs() -> None:
    # Stop our workers now rather than when they notice the heartbeat is gone.
    for handle in list(_background.values()):
        if handle._running_here():
            handle._stop.set()
            assert handle._thread is not None
            handle._thread.join(5)


def reset(name: str, *, redis: str | redis.Redis | Store | None = None) -> None:
    """Delete a job and everything stored for it, stopping it first if it runs."""
    handle = Job(name, redis=redis)
    if not handle.done():
        handle._store.cancel(name, why="reset")  # its run says the job goes, not how to resume it
        deadline = time.monotonic() + 30
        while not handle.done():
            if time.monotonic() > deadline:
                raise NbtasksError(f"Job {name!r} did not stop within 30 s; try again.")
            time.sleep(0.05)
    handle._store.delete(name)
    handle._store.compact()


@dataclass(frozen=True)
class Pruned:
    """A job that `prune` deleted (or, in a dry run, would delete)."""

    name: str
    idle: float  # seconds since it was last called or run
    size: int  # bytes it took: the server's memory, and its large payloads outside Redis


def prune(
    older_than: str | float | None = None,
    *,
    dry_run: bool = False,
    redis: str | redis.Redis | Store | None = None,
) -> list[Pruned]:
    """Delete every job not called or run for `older_than` ("7d", "12h", "30m", or
    seconds; by default each job's own ``keep=``, and never one kept "forever") that no
    caller runs now, with everything stored for it: what a store full of forgotten jobs
    needs. Returns the jobs deleted, oldest first (with ``dry_run=True``, those it would
    delete, deleting nothing). A job that starts running meanwhile is kept."""
    seconds = parse_duration(older_than) if older_than is not None else None
    store = connect(redis if redis is not None else settings().redis_url)
    names = store.job_names()
    now = time.time()
    out = []
    due: list[JobRecord] = []
    for record, _, owned in store.snapshot(names):
        if record is None or owned or record.last_used is None:
            continue
        limit = seconds if seconds is not None else record.policy.keep
        if limit is not None and now - record.last_used >= limit:
            due.append(record)
    for record, size in zip(due, store.sizes(due), strict=True):  # (one round trip for all)
        if dry_run or store.delete_if_idle(record.name) is not None:
            out.append(Pruned(record.name, now - (record.last_used or now), size))
    if out and not dry_run:
        store.compact()
    return sorted(out, key=lambda p: -p.idle)


_expired: dict[str, float] = {}  # store URL -> when this process last deleted its expired jobs
EXPIRE_EVERY = 3600.0


def expire_once(store: Store) -> None:
    """Delete the jobs whose own ``keep=`` has run out, at a process's first call on a
    store (and hourly after that): a store cleans itself without a scheduler."""
    now = time.monotonic()
    if now - _expired.get(store.url, -EXPIRE_EVERY) >= EXPIRE_EVERY:
        _expired[store.url] = now
        prune(redis=store)


HEAVY = 100 << 20  # a job holding more than this in Redis's memory says where else it could be
_heavy_said: set[str] = set()  # store URLs


def say_if_heavy(store: Store, name: str) -> None:
    """Once per store, when a job keeps more than HEAVY bytes in Redis's memory because no
    place for large payloads is configured: say how to configure one."""
    if store.url in _heavy_said or blobs.place_for(store.url):
        return
    record = store.meta(name)
    if record is None or (size := store.sizes([record])[0]) <= HEAVY:
        return
    _heavy_said.add(store.url)
    print(
        f"nbtasks: job '{name}' keeps {size_text(size)} in the memory of the Redis server. Large inputs and "
        "results can be kept outside it: configure(blobs=...) or NBTASKS_BLOBS, a folder every machine "
        "that runs workers sees, or a URL such as s3://bucket/prefix (see the README).",
        file=sys.stderr,
    )


def dashboard(store: Store, names: Sequence[str] | None = None, interval: float = 1.0) -> Dashboard:
    """The live dashboard of the named jobs (default: every job), its buttons acting on
    them through `Job` and `reset`. Jupyter only (it imports ipywidgets)."""
    from .dashboard import Dashboard

    return Dashboard(store, _Actions(store), names, interval)


class _Actions:
    """What a dashboard row's buttons do (see `dashboard.Actions`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def cancel(self, name: str) -> None:
        self.store.cancel(name)

    def retry(self, name: str) -> None:
        Job(name, redis=self.store).retry_failed(progress=False)

    def delete(self, name: str) -> None:
        reset(name, redis=self.store)

    def failures(self, name: str) -> list[Failure]:
        return load_failures(self.store, name)
