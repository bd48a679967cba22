"""A worker process's life: its first run from the command line, later ones (warm) over
the control socket from its caller, each run by a `Worker` (`loop`)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .. import backends, blas, output
from ..exits import WORKER_DONE
from ..pool.beacon import Beacon
from ..pool.warm import Assignment, Control, Modules
from ..store import Store, open_store
from ..trust import Signer
from .loop import Worker


def main(argv: list[str] | None = None) -> int:
    """Run what the command line (and then the caller, while warm) assigns; the exit
    code (see exits: WORKER_*)."""
    parser = argparse.ArgumentParser(prog="python -m nbtasks.worker")
    parser.add_argument("--job", required=True)
    parser.add_argument("--token", required=True, help="the caller's run token")
    parser.add_argument("--wid", required=True, help="this worker's id")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--beacon", type=Path, help="shared memory the caller reads to spot stuck tasks")
    parser.add_argument("--control", type=int, help="file descriptor of the caller's socket (warm workers)")
    parser.add_argument("--warm", type=float, default=0.0, help="seconds to wait for another run")
    parser.add_argument(
        "--heartbeat", type=float, help="a worker of `nbtasks worker`: say it lives in Redis every so many seconds"
    )
    parser.add_argument("--backend", choices=backends.NAMES, default="eventlet", help="what runs the items")
    args = parser.parse_args(argv)
    # The first run comes with the command line; later ones (warm) over the control socket.
    assignment: Assignment | None = Assignment(
        args.job,
        args.token,
        args.wid,
        args.concurrency,
        str(args.beacon or ""),
        os.environ["NBTASKS_REDIS_URL"],
        os.environ.get("NBTASKS_SYS_PATH", "").split(os.pathsep),  # functions from the caller's modules
    )
    control = Control(args.control) if args.control is not None else None
    modules = Modules()
    collector = output.capture()  # what tasks print and log goes to their job's output
    stores: dict[str, Store] = {}
    while assignment is not None:
        assignment.apply()
        blas.limit_loaded()  # a warm worker's loaded BLAS takes this run's thread limit
        store = stores.get(assignment.url) or stores.setdefault(assignment.url, open_store(assignment.url))
        store.signer = Signer.from_environment()  # the caller's secret, as the assignment set it
        try:
            beacon = Beacon(Path(assignment.beacon)) if assignment.beacon else None
        except FileNotFoundError:
            beacon = None  # started so late that its run is already complete
        a, began = assignment, time.time()
        backend = backends.load(args.backend)
        caller = os.getppid() if args.heartbeat is None else None  # (`nbtasks worker` watches its own)
        worker = Worker(store, a.job, a.token, a.wid, a.concurrency, beacon, control, args.heartbeat, backend, caller)
        worker.collector = collector
        reusable = worker.run()
        if beacon is not None:
            beacon.close()
        if worker.exit_code is not None:
            return worker.exit_code
        if not reusable or control is None:
            break
        modules.note(began)
        assignment = control.next_assignment(args.warm, stale=modules.changed)
    return WORKER_DONE
