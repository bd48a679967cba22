"""A caller as a notebook is: a function defined in __main__ that calls a helper, mapped
once, then the helper is redefined (as in a later cell) and the same call made again.
Prints, for each call, pmap's results, list(map)'s and how many items pmap executed."""

import json
import os
import sys

import nbtasks

redis_url, log_path = sys.argv[1], sys.argv[2]


def executions():
    try:
        with open(log_path) as log:
            return len(log.read().split())
    except FileNotFoundError:
        return 0


def helper(x):
    return x + 1


def work(x):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{x}\n".encode())
    os.close(fd)
    return helper(x) * 10


def call():
    before = executions()
    results = nbtasks.pmap(work, range(4), redis=redis_url, processes=1, concurrency=4, progress=False)
    ran = executions() - before
    return {"pmap": results, "map": list(map(work, range(4))), "ran": ran}


first = call()


def helper(x):  # noqa: F811 (redefined, as in a later notebook cell)
    return x + 2


print(json.dumps([first, call()]))
