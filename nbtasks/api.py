"""`pmap` and `Job`: validate the call, then define the job, run it and gather it.
No Redis calls of their own: they wire the steps of `job`, `run` and `status`."""

from __future__ import annotations

import atexit
import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

from . import backends, codec, identity, interrupt, job, pool
from .config import Settings, settings
from .errors import (
    ConfigError,
    Failure,
    JobCancelled,
    NbtasksError,
    NotPicklableError,
    UnknownJob,
)
from .job import JobSpec
from .output import Output
from .policy import Policy, parse_rate
from .progress import in_notebook
from .run import Run
from .snapshot import JobStatus, detail, snapshots, table
from .store import Store, connect, safe_url

T = TypeVar("T")
R = TypeVar("R")


@interrupt.shortened
def pmap(
    func: Callable[[T], R],
    iterable: Iterable[T],
    *,
    name: str | None = None,
    processes: int | None = None,
    concurrency: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    background: bool = False,
    retries: int = 0,
    retry_delay: float = 1.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    timeout: float | None = None,
    rate: str | float | None = None,
    errors: str = "raise",
    backend: str | None = None,
    redis: str | redis.Redis | None = None,
) -> Any:
    """Equivalent of ``list(map(func, iterable))``, run in parallel and resumable.

    Inputs, the function and every result are kept in Redis, so calling the same
    ``pmap`` again after an interrupt, a crash or a kernel restart runs only what has no
    result yet; on a finished job it returns the stored results at once. A result is
    reused for an equal input under the same function identity: its code, closures,
    defaults, the globals it reads and the code of yours it reaches (libraries count by
    version), whatever list the input came in. Equal inputs in one list run once.

    Args:
        func: called with one item at a time; functions, lambdas and closures defined
            in a notebook work.
        iterable: the inputs, any picklable values.
        name: a job name that survives edits of ``func``: finished results are kept and
            the new code runs the rest. By default the job is the function's identity
            (named after the function and the start of its digest).
        processes: worker processes (default: the CPU count); 0 runs every item here,
            one by one, and lets the first exception through unchanged (for ``%debug``;
            retries, timeouts and rate limits apply to worker processes only).
        concurrency: green threads per worker process (default 200, suited to network
            work); 1 for CPU-bound functions.
        fresh: delete the job (every stored result of the function, for any list) and
            start over.
        progress: show a progress bar (a widget in Jupyter, text in a terminal).
        background: return a `Job` at once and run in the background, leaving the
            notebook free; ``job.result()`` waits for the list.
        retries: attempts after the first for an item that raises one of `retry_on`;
            the n-th retry waits ``retry_delay * 2**(n-1)`` seconds (jittered), in Redis.
        timeout: seconds per attempt; a task past it fails with TimeoutError (and is
            retried like any failure). A task stuck in CPU or C code gets its worker
            process replaced.
        rate: at most this many calls, shared by every worker of the job, e.g.
            ``"50/s"``, ``"100/min"``, ``"1000/h"``.
        errors: ``"raise"`` (one TaskError once all is done) or ``"return"`` (failed
            positions of the list hold a `Failure`).
        backend: what runs the items in each worker process: ``"eventlet"`` (green
            threads; the default for plain functions), ``"threads"`` (OS threads, for
            libraries eventlet cannot patch) or ``"asyncio"`` (the default, and the only
            choice, for ``async def`` functions). `concurrency` items are in flight per
            process on each.
        redis: a URL or a ``redis.Redis`` client; else ``configure(redis_url=...)``,
            else ``NBTASKS_REDIS_URL``, else nbtasks' own server (see `nbtasks.server`).

    Returns:
        The results in input order (a `Job` with ``background=True``).

    Raises:
        TaskError: some items raised; the others' results are kept and the same call
            retries only the failed ones (after an edit, pass the job's ``name=``).
        NotPicklableError: the function or an input cannot be sent to the workers;
            nothing was stored.
    """
    if not callable(func):
        raise TypeError(f"pmap() takes the function first, then the inputs; got {type(func).__name__} first.")
    try:
        items = iter(iterable)
    except TypeError:
        raise TypeError(
            f"pmap() needs an iterable of inputs (a list, a range, a generator...), not {type(iterable).__name__}."
        ) from None
    if name is not None:
        job.check_name(name)
    cfg = settings().replace(processes=processes, concurrency=concurrency)
    if background and cfg.processes == 0:
        raise ConfigError("background=True needs worker processes: pass processes=1 or more.")
    retry_on = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    policy = Policy(retries, retry_delay, retry_on, timeout, parse_rate(rate), errors, backends.choose(func, backend))
    inputs = list(items)
    if not inputs and not background:
        return []  # nothing to run: no server, no workers
    ident = identity.identify(func)
    store = connect(redis if redis is not None else cfg.redis_url)
    pool.remove_leftovers()  # of callers killed earlier, whether or not this call runs anything
    to_bytes = functools.partial(codec.dump_function, func, policy.retry_on)  # only when something may run
    dump = functools.partial(_if_it_can_travel, to_bytes) if cfg.processes == 0 else to_bytes
    spec = job.define(store, func, dump, ident, inputs, name=name, fresh=fresh, policy=policy)
    del inputs  # the store has them; don't hold them through the run
    if background:
        return Job._start(store, spec, cfg, progress)
    return _run_and_gather(store, spec, cfg, func, progress, errors)


def _if_it_can_travel(dump: Callable[[], bytes]) -> bytes | None:
    """The stored function of a run here (processes=0), or None: it need not travel, and
    its globals may hold what cannot (a client it keeps, made by an earlier call)."""
    try:
        return dump()
    except NotPicklableError:
        return None


def _run_and_gather(
    store: Store, spec: JobSpec, cfg: Settings, func: Callable[[Any], Any], progress: bool, errors: str
) -> list[Any]:
    if not spec.finished:
        Run(store, spec, cfg, func, progress).follow()
    try:
        return job.gather(store, spec, errors)
    except job.MissingResults:
        # The store lost results it had (a server back without its last writes): run
        # what is missing, once.
        Run(store, spec, cfg, func, progress).follow()
        return job.gather(store, spec, errors)


class Job:
    """A job in the store: follow it, wait for it, cancel it, from any process.

    ``pmap(..., background=True)`` returns one; ``nbtasks.Job("crawl")`` attaches to an
    existing job by name (after a kernel restart, from another notebook).
    """

    def __init__(self, name: str, *, redis: str | redis.Redis | None = None) -> None:
        self._attach(connect(redis if redis is not None else settings().redis_url), name)

    def _attach(self, store: Store, name: str, spec: JobSpec | None = None) -> None:
        """Attach to the job's current list, or to the call of `spec`."""
        self._store = store
        record = store.meta(name)
        if record is None:
            raise UnknownJob(
                f"No job named {name!r} at {safe_url(store.url)}; nbtasks.jobs() (or `nbtasks jobs`) lists them."
            )
        self.name = name
        self._spec = spec if spec is not None else JobSpec.of(store, record)
        self.total = self._spec.total
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._shown_in: int | None = None  # the cell that showed the job's row

    @classmethod
    def _start(cls, store: Store, spec: JobSpec, cfg: Settings, progress: bool) -> Job:
        """The job of `spec`, run in the background by this process unless finished."""
        current = _background.get((store.url, spec.name, spec.list_digest))
        if current is not None and current._running_here():
            return current  # the same cell again while it runs: one run is enough
        handle = cls.__new__(cls)
        handle._attach(store, spec.name, spec)  # this call's list, whatever list comes next
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
        return not self._running_here() and self.counts().state != "running"

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
        return job.gather(self._store, self._spec, self._spec.policy.errors)

    def cancel(self) -> None:
        """Stop the run, wherever it runs; every recorded result is kept."""
        self._stop.set()
        self._store.cancel(self.name)
        if self._thread is not None:
            self._thread.join()

    def failures(self) -> list[Failure]:
        """Every failure of the last run: index, input, type, message, remote traceback."""
        return job.load_failures(self._store, self.name)

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
        from .dashboard import Dashboard

        self._shown_in = cell
        Dashboard(self._store, [self.name]).show()


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


def jobs(*, redis: str | redis.Redis | None = None) -> list[JobStatus]:
    """A frozen snapshot of every job in the store."""
    return snapshots(connect(redis if redis is not None else settings().redis_url))


def reset(name: str, *, redis: str | redis.Redis | None = None) -> None:
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


def status(name: str | None = None, *, redis: str | redis.Redis | None = None) -> Any:
    """Show every job (or one): a live dashboard in Jupyter, a table in a terminal.

    In Jupyter it returns the `Dashboard` it displays (its ``rows`` hold each job's
    widgets); elsewhere it prints and returns None. `jobs()` gives the snapshots as data.
    """
    store = connect(redis if redis is not None else settings().redis_url)
    if in_notebook():
        from .dashboard import Dashboard

        board = Dashboard(store, [name] if name is not None else None)
        board.show()
        return board
    if name is None:
        print(table(snapshots(store)))
    else:
        print(detail(Job(name, redis=store.client).counts(), job.load_failures(store, name)))
    return None
