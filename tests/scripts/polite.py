"""A tasks.py-style crawl script with a per-host limit: one line per URL."""

import os
import urllib.request

import redis

import nbtasks


def fetch(url: str) -> str:
    with urllib.request.urlopen(f"{url}?pid={os.getpid()}", timeout=60) as response:
        return response.read().decode()


nbtasks.set_redis(redis.Redis.from_url(os.environ["CRAWL_REDIS"]))
nbtasks.set_func(fetch, processes=2, limit=nbtasks.Limit(concurrency=2, rate="20/s"))
nbtasks.main()
