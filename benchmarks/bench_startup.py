"""How long a first, small `pmap` takes: with the embedded server cold (not running yet)
and warm (running), against ProcessPoolExecutor with spawn, in the same run.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 3]

Each figure is measured inside a fresh interpreter, from before ``import nbtasks`` to the
results, best of `repeat`. Uses a temporary NBTASKS_HOME, stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from nbtasks import server

PMAP = """
import time
t = time.perf_counter()
import nbtasks
assert nbtasks.pmap(lambda x: x * x, range(10), fresh=True, progress=False) == [x * x for x in range(10)]
print(time.perf_counter() - t)
"""

SPAWN = """
import time
t = time.perf_counter()
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from operator import abs as f
if __name__ == "__main__":
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(f, range(10)))
    print(time.perf_counter() - t)
"""


def measure(code: str, home: Path) -> float:
    env = {**os.environ, "NBTASKS_HOME": str(home)}
    env.pop("NBTASKS_REDIS_URL", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    cold, warm, spawn = [], [], []
    with tempfile.TemporaryDirectory(prefix="nbtasks-bench-") as tmp:
        for i in range(repeat):
            home = Path(tmp) / f"h{i}"
            cold.append(measure(PMAP, home))
            warm.append(measure(PMAP, home))
            server.stop(home)
            spawn.append(measure(SPAWN, home))
    ref = min(spawn)
    print(f"\n{'10 items, first call in a fresh interpreter':46} {'best s':>8} {'x ref':>7}")
    print(f"{'ProcessPoolExecutor(2), spawn (reference)':46} {ref:8.3f} {1.0:7.2f}")
    print(f"{'nbtasks.pmap, embedded server cold':46} {min(cold):8.3f} {min(cold) / ref:7.2f}")
    print(f"{'nbtasks.pmap, embedded server warm':46} {min(warm):8.3f} {min(warm) / ref:7.2f}")


if __name__ == "__main__":
    main()
