"""No oversubscription: worker processes share the cores instead of each starting a
BLAS (or OpenMP) thread per core.

numpy's OpenBLAS, MKL and OpenMP start one thread per core in every process that loads
them: N workers on C cores run N x C threads for C cores, and CPU-bound numpy in `pmap`
ran 6-12x slower than a plain loop. Each worker gets at most ``cores // processes``
threads, through the variables these libraries read when they load (`limits`, for the
environment a worker starts with or is assigned), and through threadpoolctl for those a
warm worker loaded in an earlier run (`limit_loaded`).

The caller's own settings win: a variable set in the caller's environment is passed on
as it is, and so is OMP_NUM_THREADS, the one they all fall back on, to the others.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# What each library reads when it loads (VECLIB: Apple's Accelerate; BLIS: numpy builds
# against BLIS). OMP_NUM_THREADS comes first: the others default to it.
VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)

# threadpoolctl's internal_api of each library it can limit once loaded -> the variables
# that library reads, in its own order.
_READS = {
    "openblas": ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"),
    "mkl": ("MKL_NUM_THREADS", "OMP_NUM_THREADS"),
    "blis": ("BLIS_NUM_THREADS", "OMP_NUM_THREADS"),
    "flexiblas": ("OMP_NUM_THREADS",),
    "openmp": ("OMP_NUM_THREADS",),
    "numexpr": ("NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS"),  # not threadpoolctl's: numexpr's own call
}


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def per_process(processes: int) -> int:
    """Threads each of `processes` worker processes may use."""
    return max(1, cores() // max(1, processes))


def limits(environ: Mapping[str, str], processes: int) -> dict[str, str]:
    """The thread variables for a worker of `processes`, from the caller's `environ`:
    its own value where it set one, else its OMP_NUM_THREADS, else `per_process`."""
    generic = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    default = generic or str(per_process(processes))
    return {name: environ.get(name) or default for name in VARIABLES}


_in_force: dict[str, int] | None = None  # per library, as of the last limit_loaded


def limit_loaded() -> None:
    """Give the libraries already loaded in this process the limits that the environment
    (as a run's assignment has just set it) asks for. Call it at each assignment.

    A library reads its variable once, when it loads: in a warm worker, one loaded in an
    earlier run keeps that run's limit (its `processes` may differ, or the caller's own
    setting). While the wanted limits stay as they were at the last call, nothing is done
    (no import); when they change, threadpoolctl changes the loaded libraries, where it is
    installed.
    """
    global _in_force
    wanted = _wanted(os.environ)
    first, changed = _in_force is None, wanted != _in_force
    _in_force = wanted
    if first or not changed:
        return  # first: whatever loaded so far read this same environment at its start
    try:
        _limit(wanted)
    except Exception as exc:  # a slower run, not a failed one: say so in the worker's log
        print(f"nbtasks: could not limit the threads of loaded libraries: {exc!r}", file=sys.stderr)


def _limit(wanted: dict[str, int]) -> None:
    if "numexpr" in wanted and "numexpr" in sys.modules:
        sys.modules["numexpr"].set_num_threads(wanted["numexpr"])
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    controller = ThreadpoolController()
    for api, threads in wanted.items():
        selected = controller.select(internal_api=api)
        if selected.lib_controllers:
            selected.limit(limits=threads)


def _wanted(environ: Mapping[str, str]) -> dict[str, int]:
    """Threads per library by the variables it reads (libraries with none set: left be)."""
    wanted = {}
    for api, names in _READS.items():
        for name in names:
            value = environ.get(name, "").split(",")[0].strip()
            if value.isdigit() and int(value) > 0:
                wanted[api] = int(value)
                break
    return wanted
