"""A tasks.py-style script, as its users wrote them: the function, then main()."""

import os
import time

import redis

import nbtasks

LOG = os.environ["CRAWL_LOG"]


def fetch(line: str) -> str:
    with open(LOG, "a") as log:  # one line per execution, to count them
        log.write(line + "\n")
    if line.startswith("bad"):
        raise ValueError(f"cannot fetch {line}")
    time.sleep(float(os.environ.get("CRAWL_DELAY", "0")))
    return line.upper() + "!"


nbtasks.set_redis(redis.Redis.from_url(os.environ["CRAWL_REDIS"]))
nbtasks.set_func(fetch, processes=2, concurrency=5)
nbtasks.main()
