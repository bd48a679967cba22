"""A caller whose function, defined in __main__, calls a helper from the user's own
module: `userhelpers.py` in the folder given, which is not installed. Prints pmap's
results, list(map)'s and how many items pmap executed."""

import json
import os
import sys

import nbtasks

redis_url, log_path, folder = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, folder)

from userhelpers import scale  # noqa: E402


def executions():
    try:
        with open(log_path) as log:
            return len(log.read().split())
    except FileNotFoundError:
        return 0


def work(x):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{x}\n".encode())
    os.close(fd)
    return scale(x)


before = executions()
results = nbtasks.pmap(work, range(5), redis=redis_url, processes=1, concurrency=4, progress=False)
ran = executions() - before
print(json.dumps({"pmap": results, "map": list(map(work, range(5))), "ran": ran}))
