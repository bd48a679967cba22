"""The chaos test at a small scale (benchmarks/chaos.py runs it at full scale): workers
SIGKILLed every second, Redis killed and restarted twice, the caller killed and started
again once. Lost, wrong and double-recorded results must all be zero."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("chaos", Path(__file__).parent.parent / "benchmarks" / "chaos.py")
assert spec is not None and spec.loader is not None
chaos = importlib.util.module_from_spec(spec)
sys.modules["chaos"] = chaos  # dataclasses look their module up there
spec.loader.exec_module(chaos)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos(tmp_path: Path) -> None:
    report = chaos.run_chaos(int(os.environ.get("NBTASKS_CHAOS_N", "3000")), tmp_path)
    assert (report.redis_restarts, report.caller_kills) == (2, 1)
    assert report.workers_killed >= 1
    assert (report.lost, report.wrong, report.recorded_twice, report.results_without_bit) == (0, 0, 0, 0), report
    assert report.caller_failures == 0, report.caller_errors
    assert report.packed == report.tasks, "every result is small: each is kept in its chunk"
    # At least once: re-runs are allowed, bounded by what was in flight at the kills
    # (2 workers x 20 green threads each time).
    events = report.workers_killed + report.redis_restarts + report.caller_kills
    assert report.duplicate_executions <= 40 * events, report
