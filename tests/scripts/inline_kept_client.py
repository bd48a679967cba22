"""Two processes=0 calls of an async def function defined here (in __main__, so it
travels by value) that keeps an aiohttp session in a global: the second call finds the
session made by the first. Prints both results and how many sessions were made."""

import sys

import aiohttp

import nbtasks

session = None
made = 0


async def get(url: str) -> str:
    global session, made
    if session is None:
        session = aiohttp.ClientSession()
        made += 1
    async with session.get(url) as response:
        return await response.text()


if __name__ == "__main__":
    redis_url, base = sys.argv[1:]
    nbtasks.configure(redis_url=redis_url)
    print(nbtasks.pmap(get, [f"{base}/first/{i}" for i in range(3)], processes=0, progress=False))
    print(nbtasks.pmap(get, [f"{base}/second/{i}" for i in range(3)], processes=0, progress=False))
    print(made)
