"""The tasks.py script interface, kept: a script names its function and hands its
command line to `main`.

    import nbtasks

    def fetch(url): ...

    nbtasks.set_func(fetch)
    nbtasks.main()

    python crawl.py add urls.txt     one input per line, in order, duplicates kept; again to append
    python crawl.py run              start, or resume what has no result, with a progress bar
    python crawl.py status           counts and the latest failures
    python crawl.py results          one JSON line per item: index and result (or error)
    python crawl.py reset [--yes]    delete the job and its results, after asking

The job is named after the script (``crawl``) unless ``set_func(func, name=...)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import backends, codec, define
from .config import settings
from .errors import ConfigError, PayloadLost
from .exits import EXIT_FAILED, EXIT_UNKNOWN_JOB, EXITS, confirm, reported
from .gather import load_failures
from .job_status import count, detail, snapshots
from .policy import Policy, parse_rate
from .run import Run
from .store import Store, connect

if TYPE_CHECKING:
    import redis

_func: Callable[[Any], Any] | None = None
_name: str | None = None
_options: dict[str, Any] = {}
_redis: str | redis.Redis | None = None


def set_func(func: Callable[[str], Any], *, name: str | None = None, **options: Any) -> None:
    """The function that `main`'s ``run`` calls with each line that ``add`` stored.

    Args:
        func: called with one line (a string, without its line break).
        name: the job's name; by default the script's file name without ``.py``.
        options: as for `pmap`: processes, concurrency, retries, retry_delay,
            retry_on, timeout, rate, limit, backend.
    """
    global _func, _name, _options
    if not callable(func):
        raise TypeError(f"set_func() takes a function, not {type(func).__name__}.")
    allowed = {"processes", "concurrency", "retries", "retry_delay", "retry_on", "timeout", "rate", "limit", "backend"}
    if unknown := set(options) - allowed:
        raise ConfigError(
            f"set_func() does not take {', '.join(sorted(unknown))}; it takes {', '.join(sorted(allowed))}."
        )
    if name is not None:
        define.check_name(name)
    _func, _name, _options = func, name, options


def set_redis(target: str | redis.Redis) -> None:
    """The Redis that `main` keeps the job in: a URL or a ``redis.Redis`` client (by
    default as for `pmap`: ``NBTASKS_REDIS_URL``, else nbtasks' own server)."""
    global _redis
    _redis = target


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the verb on the command line (add, run, status, results, reset) and exit
    with its exit code."""
    sys.exit(run_verb(argv))


def run_verb(argv: list[str] | None = None) -> int:
    prog = Path(sys.argv[0]).name or "script.py"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"A resumable job of {getattr(_func, '__name__', 'the function given to nbtasks.set_func')}.",
        epilog=EXITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="append inputs, one per line of each FILE ('-': standard input)")
    add.add_argument("files", nargs="+", metavar="FILE")
    verbs.add_parser("run", help="start or resume: run every item that has no result")
    verbs.add_parser("status", help="counts and the latest failures")
    verbs.add_parser("results", help="one JSON line per item: index and result, or error")
    reset = verbs.add_parser("reset", help="delete the job, its inputs and its results")
    reset.add_argument("--yes", action="store_true", help="do not ask first")
    args = parser.parse_args(argv)
    if _func is None:
        parser.error("call nbtasks.set_func(your_function) before nbtasks.main().")
    name = _name or Path(sys.argv[0]).stem or "script"
    return reported(prog, lambda: _verb(args.verb, args, name, prog))


def _verb(verb: str, args: argparse.Namespace, name: str, prog: str) -> int:
    store = connect(_redis if _redis is not None else settings().redis_url)
    if verb == "add":
        return _add(store, name, args.files)
    if store.meta(name) is None:
        print(f"{prog}: job '{name}' has no inputs yet; add some first: {prog} add FILE", file=sys.stderr)
        return EXIT_UNKNOWN_JOB
    if verb == "run":
        return _run(store, name)
    if verb == "status":
        print(detail(snapshots(store, [name])[0], load_failures(store, name), limit=5, refusals=store.refusals(name)))
        return 0
    if verb == "results":
        return _results(store, name)
    return _reset(store, name, args.yes)


def _policy() -> Policy:
    retry_on = _options.get("retry_on", Exception)
    return Policy(
        _options.get("retries", 0),
        _options.get("retry_delay", 1.0),
        retry_on if isinstance(retry_on, tuple) else (retry_on,),
        _options.get("timeout"),
        parse_rate(_options.get("rate")),
        "return",
        backends.choose(_func, _options.get("backend")) if _func is not None else "eventlet",
        keep=settings().keep,
        limit=_options.get("limit"),
    )


def _store_job(store: Store, name: str, lines: list[str]) -> define.JobSpec:
    """Store the function as it is now (and `lines` after the inputs held)."""
    assert _func is not None
    policy = _policy()
    key = policy.limit.key if policy.limit is not None else None
    return define.append(store, name, _func, codec.dump_function(_func, policy.retry_on, key), lines, policy)


def _add(store: Store, name: str, files: list[str]) -> int:
    lines: list[str] = []
    for file in files:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        lines += [line for line in text.splitlines() if line.strip()]
    spec = _store_job(store, name, lines)
    print(f"{name}: added {count(len(lines), 'input')}; {spec.total:,} in all.")
    return 0


def _run(store: Store, name: str) -> int:
    assert _func is not None
    spec = _store_job(store, name, [])
    cfg = settings().replace(processes=_options.get("processes"), concurrency=_options.get("concurrency"))
    if not spec.finished:
        hint = f"Run `{Path(sys.argv[0]).name} run` again to resume."
        Run(store, spec, cfg, _func, progress=True, resume_hint=hint).follow()
    state = snapshots(store, [name])[0]
    print(f"{name}: {state.done} of {state.total} done, {state.failed} failed.")
    if state.failed:
        print(f"See them with: {Path(sys.argv[0]).name} status (or nbtasks failures {name}).")
        return EXIT_FAILED
    return 0


def _results(store: Store, name: str) -> int:
    record = store.meta(name)
    total = record.total if record is not None else 0
    failures = {f.index: f for f in load_failures(store, name)}
    lost: list[int] = []  # forgotten afterwards: the next `run` computes them again
    for index, payload in enumerate(store.results(name, range(total))):
        if index in failures:
            line: dict[str, Any] = {"index": index, "error": f"{failures[index].exc_type}: {failures[index].message}"}
        elif isinstance(payload, PayloadLost):
            line = {"index": index, "error": str(payload)}
            lost.append(index)
        elif payload is None:
            line = {"index": index, "pending": True}
        else:
            line = {"index": index, "result": codec.load(payload)}
        print(json.dumps(line, default=repr))
    if lost:
        store.forget_results(name, lost)
    return 0


def _reset(store: Store, name: str, yes: bool) -> int:
    inputs, results = store.held(name)
    question = f"Delete job '{name}': {inputs} inputs, {results} results?"
    if not yes and not confirm(question):
        print("Nothing deleted.", file=sys.stderr)
        return EXIT_FAILED
    from .job import reset

    reset(name, redis=store)
    print(f"{name}: deleted.")
    return 0
