"""Exit codes of the ``nbtasks`` command and of tasks.py-style scripts, the same for
both so that shell scripts can rely on them; those of a worker process, which its
caller and ``nbtasks worker`` read; and the yes/no question before deleting."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1  # items failed, or the answer was no
EXIT_USAGE = 2  # a wrong command line (argparse's own code)
EXIT_NOT_RUNNING = 3  # `server status`: the embedded server is not running
EXIT_UNKNOWN_JOB = 4  # no job of that name
EXIT_UNREACHABLE = 5  # Redis cannot be reached
EXIT_INTERRUPTED = 130  # Ctrl-C; what was recorded is kept

# A worker process (``python -m nbtasks.worker``) ends with one of these, and only these:
# any other code, or a signal, means it died (see pool.supervisor).
WORKER_DONE = 0  # the run is over (complete, stopped, or someone else's now)
WORKER_BROKEN = 1  # one of its helper threads failed (its traceback is in the log)
WORKER_REFUSED = 6  # a worker of `nbtasks worker` cannot run the job here; it said why in Redis
WORKER_CANNOT_RUN = 7  # the job cannot run (its function does not load); it said why in Redis

EXITS = """exit codes:
  0    done
  1    some items failed (or the answer was no)
  2    wrong command line
  3    the embedded server is not running (server status)
  4    no job of that name
  5    Redis cannot be reached
  130  interrupted; every recorded result is kept"""


def confirm(question: str) -> bool:
    """Ask on the terminal; without one (a pipe, cron) the answer is no."""
    if not sys.stdin.isatty():
        print(f"{question} Not asked: standard input is not a terminal; pass --yes.", file=sys.stderr)
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def reported(prog: str, call: Callable[[], int]) -> int:
    """`call()`'s exit code; an error the user can act on becomes one line on stderr
    and its exit code, not a traceback."""
    from .errors import NbtasksError, RedisUnavailable, UnknownJob

    codes: list[tuple[type[NbtasksError], int]] = [
        (UnknownJob, EXIT_UNKNOWN_JOB),
        (RedisUnavailable, EXIT_UNREACHABLE),
        (NbtasksError, EXIT_FAILED),
    ]
    try:
        return call()
    except BrokenPipeError:
        # The reader left (`| head`): nothing more to say. Point stdout at /dev/null, or
        # Python's own flush at exit would print a traceback of the same error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except NbtasksError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return next(code for kind, code in codes if isinstance(exc, kind))
