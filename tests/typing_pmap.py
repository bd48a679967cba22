"""What a type checker infers from the public surface (checked by mypy in the test
command, not run by pytest): pmap returns a list of the function's results, a list that
may hold Failures with errors="return", and a Job with background=True."""

from __future__ import annotations

from typing import Any, assert_type

import nbtasks


def double(x: int) -> float:
    return x * 2.0


def check() -> None:
    assert_type(nbtasks.pmap(double, range(3)), list[float])
    assert_type(nbtasks.pmap(double, range(3), name="doubles", retries=2), list[float])
    assert_type(nbtasks.pmap(double, range(3), errors="return"), list[float | nbtasks.Failure])
    assert_type(nbtasks.pmap(double, range(3), background=True), nbtasks.Job)
    job = nbtasks.Job("doubles")
    assert_type(job.result(), list[Any])
    assert_type(job.refusals(), dict[str, str])
    assert_type(nbtasks.jobs(), list[nbtasks.JobStatus])
