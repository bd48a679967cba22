"""A caller as a notebook is: a function defined in __main__ that calls a helper, mapped
once, then the helper is redefined (as in a later cell) and the same call made again.
Prints, for each call, pmap's results, list(map)'s and how many items pmap executed."""

import json
import sys

from tasklog import executions, record

import nbtasks

redis_url, log_path = sys.argv[1], sys.argv[2]


def helper(x):
    return x + 1


def work(x):
    record(log_path, x)
    return helper(x) * 10


def call():
    before = executions(log_path)
    results = nbtasks.pmap(work, range(4), redis=redis_url, processes=1, concurrency=4, progress=False)
    ran = executions(log_path) - before
    return {"pmap": results, "map": list(map(work, range(4))), "ran": ran}


first = call()


def helper(x):  # noqa: F811 (redefined, as in a later notebook cell)
    return x + 2


print(json.dumps([first, call()]))
