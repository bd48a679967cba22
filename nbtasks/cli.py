"""The ``nbtasks`` command. No logic of its own: it parses and calls the library."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Any

from .exits import EXIT_FAILED, EXIT_NOT_RUNNING, EXITS, confirm, reported

REDIS_HELP = "the Redis holding the jobs (default: NBTASKS_REDIS_URL, else nbtasks' own server)"


def parser() -> argparse.ArgumentParser:
    from . import __version__

    top = argparse.ArgumentParser(
        prog="nbtasks",
        description="Parallel, resumable map for notebooks: see and manage jobs, lend this machine's processes.",
        epilog=EXITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"nbtasks {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXITS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_help=name != "demo",  # the demo's own parser answers --help, with its options
        )
        if name not in ("server", "demo"):
            sub.add_argument("--redis", metavar="URL", help=REDIS_HELP)
        return sub

    status = command("status", "every job as a table, or one job with its first failures")
    status.add_argument("name", nargs="?", metavar="NAME")
    status.add_argument("--watch", action="store_true", help="refresh every second until no job runs (Ctrl-C stops)")
    command("jobs", "one line per job: name, state, done/total, failed (for scripts)")
    failures = command("failures", "the failures of a job, with their remote tracebacks")
    failures.add_argument("name", metavar="NAME")
    failures.add_argument("--limit", type=int, default=20, help="at most this many (default 20; 0: all)")
    logs = command("logs", "what a job's tasks printed, warned and logged (the store keeps the last 10,000 lines)")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("--last", type=int, metavar="N", help="only the newest N lines")
    logs.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come, until Ctrl-C")
    reset = command("reset", "delete a job, its inputs and its results (stopping it first)")
    reset.add_argument("name", metavar="NAME")
    reset.add_argument("--yes", action="store_true", help="do not ask first")
    prune = command("prune", "delete the jobs not called or run for a while (never one that runs)")
    prune.add_argument(
        "--older-than", metavar="AGE", help='e.g. "7d", "12h", "30m" or seconds (default: each job\'s own keep=)'
    )
    prune.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    prune.add_argument("--yes", action="store_true", help="do not ask first")
    worker = command("worker", "lend this machine's processes to the jobs that callers run")
    worker.add_argument("--processes", type=int, help="worker processes (default: NBTASKS_PROCESSES, else CPUs)")
    worker.add_argument("--concurrency", type=int, help="green threads per process (default 200)")
    worker.add_argument("--job", metavar="NAME", help="only this job (default: any job)")
    worker.add_argument(
        "--heartbeat", type=float, default=6.0, help="seconds after which a silent worker's items go back (default 6)"
    )
    server = command("server", "the embedded Redis-compatible server (NBTASKS_HOME)")
    server.add_argument("action", choices=["status", "start", "stop"])
    command("demo", "fetch pages from a local HTTP server: for-loop against pmap")
    return top


def main(argv: list[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)
    if args.command == "demo":
        from . import demo

        demo.main(rest)
        return 0
    if rest:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "server":
        return _server(args.action)
    return reported("nbtasks", lambda: _jobs_command(args))


def _jobs_command(args: Any) -> int:
    from .config import settings
    from .gather import load_failures
    from .job import Job, reset
    from .job_status import snapshots
    from .store import connect

    cfg = settings()
    store = connect(args.redis or cfg.redis_url)
    width = shutil.get_terminal_size().columns
    if args.command == "status":
        return _status(store, args.name, args.watch, width)
    if args.command == "jobs":
        for s in snapshots(store):
            print(f"{s.name}\t{s.state}\t{s.done}/{s.total}\t{s.failed}")
        return 0
    if args.command == "failures":
        Job(args.name, redis=store)  # UnknownJob unless it exists
        found = load_failures(store, args.name)
        shown = found if args.limit <= 0 else found[: args.limit]
        for f in shown:
            print(f"{f}\n{f.traceback.rstrip()}\n")
        more = f" ({len(found) - len(shown)} more: --limit 0 shows all)" if len(shown) < len(found) else ""
        print(f"{len(found)} failed{more}.")
        return EXIT_FAILED if found else 0
    if args.command == "logs":
        Job(args.name, redis=store)  # UnknownJob unless it exists
        return _logs(store, args.name, args.last, args.follow)
    if args.command == "reset":
        Job(args.name, redis=store)  # UnknownJob if there is none
        inputs, results = store.held(args.name)
        if not args.yes and not confirm(f"Delete job '{args.name}': {inputs} inputs, {results} results?"):
            print("Nothing deleted.", file=sys.stderr)
            return EXIT_FAILED
        reset(args.name, redis=store)
        print(f"{args.name}: deleted.")
        return 0
    if args.command == "prune":
        return _prune(store, args.older_than, args.dry_run, args.yes)
    from .worker.command import Service

    processes = args.processes if args.processes is not None else cfg.processes
    concurrency = args.concurrency if args.concurrency is not None else cfg.concurrency
    return Service(store, max(1, processes), concurrency, args.job, args.heartbeat).serve()


def _prune(store: Any, older_than: str | None, dry_run: bool, yes: bool) -> int:
    """List the jobs idle for `older_than` (or past their own keep=), then (asked, or
    --yes) delete them."""
    from .job import prune
    from .job_status import count, duration, size_text

    found = prune(older_than, dry_run=True, redis=store)
    if not found:
        print(f"No job has gone unused for {older_than}." if older_than else "No job has outlived its keep=.")
        return 0
    for p in found:
        print(f"{p.name}\tunused for {duration(p.idle)}\t{size_text(p.size)}")
    total = size_text(sum(p.size for p in found))
    if dry_run:
        print(f"Would delete {count(len(found), 'job')}, freeing about {total}.")
        return 0
    if not yes and not confirm(f"Delete {count(len(found), 'job')} ({total})?"):
        print("Nothing deleted.", file=sys.stderr)
        return EXIT_FAILED
    gone = prune(older_than, redis=store)  # (a job that began running meanwhile is kept)
    print(f"Deleted {count(len(gone), 'job')}, freeing about {size_text(sum(p.size for p in gone))}.")
    return 0


def _status(store: Any, name: str | None, watch: bool, width: int) -> int:
    """Every job as a table, or one in detail; with `watch`, again every second until
    none runs (in a terminal, redrawn in place)."""
    from .gather import load_failures
    from .job import Job
    from .job_status import detail, snapshots, table

    if name is not None:
        Job(name, redis=store)  # UnknownJob unless it exists
    while True:
        states = snapshots(store, None if name is None else [name])
        if name is None:
            text = table(states, width)
        else:
            text = detail(states[0], load_failures(store, name), width=width, refusals=store.refusals(name))
        if watch and sys.stdout.isatty():
            text = "\x1b[H\x1b[2J" + text  # the terminal's screen, redrawn
        print(text, flush=True)
        if not watch or not any(s.state == "running" for s in states):
            return 0
        time.sleep(1.0)
        if not sys.stdout.isatty():
            print(flush=True)  # (in a file, one table after another)


def _logs(store: Any, name: str, last: int | None, follow: bool) -> int:
    lines = store.output(name, last)
    for line in lines:
        print(line)
    cursor = lines.cursor
    try:
        while follow:
            store.wait_output(name, cursor, 1.0)
            found, cursor = store.output_since(name, cursor, 1000)
            for line in found:
                print(line, flush=True)
    except KeyboardInterrupt:
        pass  # the way to stop following
    return 0


def _server(action: str) -> int:
    from . import server

    if action == "status":
        state = server.status()
        print(state)
        return 0 if state.running else EXIT_NOT_RUNNING
    if action == "start":
        print(server.start())
        return 0
    stopped = server.stop()
    print("nbtasks server: stopped" if stopped else "nbtasks server: was not running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
