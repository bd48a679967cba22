"""A caller whose function, defined in __main__, calls a helper from the user's own
module: `userhelpers.py` in the folder given, which is not installed. Prints pmap's
results, list(map)'s and how many items pmap executed."""

import json
import sys

from tasklog import executions, record

import nbtasks

redis_url, log_path, folder = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, folder)

from userhelpers import scale  # noqa: E402


def work(x):
    record(log_path, x)
    return scale(x)


before = executions(log_path)
results = nbtasks.pmap(work, range(5), redis=redis_url, processes=1, concurrency=4, progress=False)
ran = executions(log_path) - before
print(json.dumps({"pmap": results, "map": list(map(work, range(5))), "ran": ran}))
