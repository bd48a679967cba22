"""`pmap`, `jobs` and `status`: validate the call, then define the job, run it and
gather it. No Redis calls of their own: they wire the steps of `define`, `run`,
`gather` and `job`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, Unpack, overload

from . import backends, codec, define, identity, interrupt
from .config import Settings, settings
from .define import JobSpec
from .errors import ConfigError, Failure, NotPicklableError
from .gather import MissingResults, gather, load_failures, warn_if_too_large
from .job import Job, dashboard, expire_once, say_if_heavy
from .job_status import JobStatus, detail, snapshots, table
from .limits import Limit
from .policy import Policy, parse_rate
from .pool.processes import remove_leftovers
from .progress import in_notebook
from .run import Run
from .store import Store, connect, ride_out

if TYPE_CHECKING:
    import redis

T = TypeVar("T")
R = TypeVar("R")


class Options(TypedDict, total=False):
    """pmap's keyword options but `background` and `errors` (which decide what it returns)."""

    name: str | None
    processes: int | None
    concurrency: int | None
    fresh: bool
    progress: bool
    retries: int
    retry_delay: float
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    timeout: float | None
    rate: str | float | None
    limit: Limit | None
    backend: str | None
    keep: str | float | None
    redis: str | redis.Redis | None


@overload
def pmap(
    func: Callable[[T], R],
    iterable: Iterable[T],
    *,
    background: Literal[False] = ...,
    errors: Literal["raise"] = ...,
    **options: Unpack[Options],
) -> list[R]: ...
@overload
def pmap(
    func: Callable[[T], R],
    iterable: Iterable[T],
    *,
    background: Literal[False] = ...,
    errors: Literal["return"],
    **options: Unpack[Options],
) -> list[R | Failure]: ...
@overload
def pmap(
    func: Callable[[T], R],
    iterable: Iterable[T],
    *,
    background: Literal[True],
    errors: str = ...,
    **options: Unpack[Options],
) -> Job: ...
@overload
def pmap(
    func: Callable[[T], R], iterable: Iterable[T], *, background: bool, errors: str = ..., **options: Unpack[Options]
) -> list[Any] | Job: ...


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
    limit: Limit | None = None,
    errors: str = "raise",
    backend: str | None = None,
    keep: str | float | None = None,
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
        limit: per-key limits, for polite crawls: ``nbtasks.Limit(concurrency=4,
            rate="10/s")`` runs at most 4 items of one host at once and starts at most 10
            per second, across every worker; other hosts' items run meanwhile. A task
            that raises ``nbtasks.Backoff(seconds)`` pauses its host (see `Limit`).
        errors: ``"raise"`` (one TaskError once all is done) or ``"return"`` (failed
            positions of the list hold a `Failure`).
        backend: what runs the items in each worker process: ``"eventlet"`` (green
            threads; the default for plain functions), ``"threads"`` (OS threads, for
            libraries eventlet cannot patch) or ``"asyncio"`` (the default, and the only
            choice, for ``async def`` functions). `concurrency` items are in flight per
            process on each.
        keep: how long the job is kept once nobody calls or runs it, e.g. ``"30d"``
            (default: ``configure(keep=...)``, else ``NBTASKS_KEEP``, else ``"forever"``:
            until deleted). Expired jobs are deleted by ``nbtasks.prune()`` and by the
            first call of each process; a job in use never expires.
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
        define.check_name(name)
    cfg = settings().replace(processes=processes, concurrency=concurrency, keep=keep)
    if background and cfg.processes == 0:
        raise ConfigError("background=True needs worker processes: pass processes=1 or more.")
    retry_on = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    choice = backends.choose(func, backend)
    if limit is not None and not isinstance(limit, Limit):
        raise ConfigError(f"limit= takes nbtasks.Limit(...), not {type(limit).__name__}.")
    policy = Policy(retries, retry_delay, retry_on, timeout, parse_rate(rate), errors, choice, cfg.keep, limit)
    # A generator is read a batch at a time as its inputs are stored, never held whole.
    inputs = list(items) if isinstance(iterable, Sized) else define.Stream.of(items)
    if not inputs and not background:
        return []  # nothing to run: no server, no workers
    ident = identity.identify(func)
    store = connect(redis if redis is not None else cfg.redis_url)
    remove_leftovers()  # of callers killed earlier, whether or not this call runs anything
    key = limit.key if limit is not None else None
    to_bytes = functools.partial(codec.dump_function, func, policy.retry_on, key)  # only when something may run
    dump = functools.partial(_if_it_can_travel, to_bytes) if cfg.processes == 0 else to_bytes
    # (Safe to repeat: it is what the same call again would do. So is reading results.)
    step = functools.partial(define.define, store, func, dump, ident, inputs, name=name, fresh=fresh, policy=policy)
    # (A stream cannot be read twice: an outage while it is stored stops the call.)
    spec = step() if isinstance(inputs, define.Stream) else ride_out(store, step, cfg.outage_limit)
    del step, inputs  # the store has them; don't hold them through the run
    expire_once(store)  # (after this call's job is marked used: it never expires itself)
    if background:
        return Job._start(store, spec, cfg, progress)
    return _run_and_gather(store, spec, cfg, func, progress, errors)


def imap(
    func: Callable[[T], R], iterable: Iterable[T], *, errors: str = "raise", **options: Unpack[Options]
) -> Iterator[Any]:
    """Like `pmap`, but yields the results in input order as soon as each is recorded,
    while the rest run: ``for page in nbtasks.imap(fetch, urls): ...``. Takes pmap's
    options; resumes as pmap does. A failed item raises TaskError when its turn comes (or
    comes as its `Failure` with ``errors="return"``). Leaving the loop early stops the
    run, keeping what was recorded; the same call again goes on from there."""
    return pmap(func, iterable, background=True, errors=errors, **options)._stream(ordered=True)


def imap_unordered(
    func: Callable[[T], R], iterable: Iterable[T], *, errors: str = "raise", **options: Unpack[Options]
) -> Iterator[tuple[int, Any]]:
    """Like `imap`, but yields ``(position, result)`` pairs as items finish, in any order."""
    return pmap(func, iterable, background=True, errors=errors, **options)._stream(ordered=False)


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
    limit = cfg.outage_limit  # Redis restarting meanwhile: each step waits for it, as a run does
    warn_if_too_large(store, spec)
    if not spec.finished:
        ride_out(store, lambda: Run(store, spec, cfg, func, progress), limit).follow()
        say_if_heavy(store, spec.name)
    try:
        return ride_out(store, lambda: gather(store, spec, errors), limit)
    except MissingResults:
        # The store lost results it had (a server back without its last writes): run
        # what is missing, once.
        ride_out(store, lambda: Run(store, spec, cfg, func, progress), limit).follow()
        return ride_out(store, lambda: gather(store, spec, errors), limit)


def jobs(*, redis: str | redis.Redis | None = None) -> list[JobStatus]:
    """A frozen snapshot of every job in the store."""
    return snapshots(connect(redis if redis is not None else settings().redis_url))


def status(name: str | None = None, *, redis: str | redis.Redis | None = None) -> Any:
    """Show every job (or one): a live dashboard in Jupyter, a table in a terminal.

    In Jupyter it returns the `Dashboard` it displays (its ``rows`` hold each job's
    widgets); elsewhere it prints and returns None. `jobs()` gives the snapshots as data.
    """
    store = connect(redis if redis is not None else settings().redis_url)
    if in_notebook():
        board = dashboard(store, [name] if name is not None else None)
        board.show()
        return board
    if name is None:
        print(table(snapshots(store)))
    else:
        print(detail(Job(name, redis=store).counts(), load_failures(store, name)))
    return None
