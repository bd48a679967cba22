"""The Store: every operation nbtasks does on Redis, by concern (a job's definition, a
run, reading back); each turns redis-py's errors into nbtasks errors (`base`)."""

from __future__ import annotations

from .base import translating
from .jobs import JobOps
from .results import ResultOps
from .runs import RunOps


@translating
class Store(JobOps, RunOps, ResultOps):
    """A connection to the Redis that holds the jobs: `connection.connect` makes one."""
