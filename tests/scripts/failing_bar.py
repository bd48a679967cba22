"""Every item but the last fails at once; the last waits for the file named by
$RELEASE (workers inherit it), which the test creates once the text bar has said "failed=" (a bar that
redraws only when results come would never say it, and the run would never end)."""

import os
import sys
import time

import nbtasks


def task(x: int) -> int:
    if x < 20:
        raise ValueError(f"item {x} fails")
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.01)
    return x


if __name__ == "__main__":
    nbtasks.configure(redis_url=sys.argv[1])
    nbtasks.pmap(task, range(21), processes=1, errors="return")
