"""asyncio inside tasks: a plain function that runs an event loop of its own
(``asyncio.run()``, ``loop.run_until_complete``) on the green threads of the default
backend, concurrently; and ``async def`` items run inline (processes=0) sharing one
event loop for the whole call, so a client kept in a global serves them all.

Task functions live at module level: workers import this module by name to find them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import nbtasks
from nbtasks import demo

from .conftest import run_script

ONE_SERVER = True  # (see conftest): event loops in tasks, not the server, are under test

N = 20  # items, and green threads in the one worker process


async def nap(i: int) -> tuple[int, float, float]:
    """Sleeps 0.2 s on the event loop: when it ran."""
    start = time.time()
    await asyncio.sleep(0.2)
    return i, start, time.time()


def nap_with_asyncio_run(i: int) -> tuple[int, float, float]:
    return asyncio.run(nap(i))


def nap_with_run_until_complete(i: int) -> tuple[int, float, float]:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(nap(i))
    finally:
        loop.close()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant."""
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


@pytest.mark.parametrize("backend", ["eventlet", "threads"])
@pytest.mark.parametrize("func", [nap_with_asyncio_run, nap_with_run_until_complete])
def test_event_loops_in_plain_functions_run_side_by_side(func: Any, backend: str, r: redis.Redis) -> None:
    out = nbtasks.pmap(func, range(N), processes=1, concurrency=N, backend=backend, progress=False)
    assert [i for i, _, _ in out] == list(range(N))
    # Each loop waits while the others run: they overlap rather than take turns.
    assert most_at_once([(start, end) for _, start, end in out]) >= N // 2


async def get_aiohttp(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        return await response.text()


def get_with_asyncio_run(url: str) -> str:
    """A library's synchronous wrapper around its async client."""
    return asyncio.run(get_aiohttp(url))


def test_aiohttp_through_asyncio_run_on_green_threads(r: redis.Redis, http_url: str) -> None:
    # Half of the URLs name the host, so aiohttp looks it up (in asyncio's executor).
    urls = [f"{http_url}/page/{i}?delay=0.2" for i in range(N)]
    urls = [url.replace("127.0.0.1", "localhost") if i % 2 else url for i, url in enumerate(urls)]
    out = nbtasks.pmap(get_with_asyncio_run, urls, processes=1, concurrency=N, progress=False)
    assert out == [f"/page/{i}?delay=0.2" for i in range(N)]
    assert demo.SlowHandler.peak >= N // 2, "the requests took turns"


def nap_past_timeout(x: float) -> float:
    asyncio.run(asyncio.sleep(x))
    return x


def test_a_timeout_stops_a_task_inside_its_event_loop(r: redis.Redis) -> None:
    with pytest.raises(nbtasks.TaskError) as caught:
        nbtasks.pmap(nap_past_timeout, [0.0, 30.0, 0.01], processes=1, timeout=0.5, progress=False)
    (failure,) = caught.value.failures
    assert failure.index == 1 and failure.exc_type == "TimeoutError"


# -- inline: one event loop for the whole call ------------------------------------------

client: Any = None  # made on first use and kept, as a notebook keeps it
clients_made = 0


async def get_with_kept_client(item: tuple[str, bool]) -> str:
    """GET with a session kept in a global; the last item closes it."""
    import aiohttp

    global client, clients_made
    url, last = item
    if client is None:
        client = aiohttp.ClientSession()
        clients_made += 1
    try:
        async with client.get(url) as response:
            return await response.text()
    finally:
        if last:
            await client.close()
            client = None


@pytest.fixture
def kept_client() -> None:
    global client, clients_made
    client, clients_made = None, 0


def test_inline_async_items_share_one_event_loop(r: redis.Redis, http_url: str, kept_client: None) -> None:
    items = [(f"{http_url}/kept/{i}", i == 9) for i in range(10)]
    out = nbtasks.pmap(get_with_kept_client, items, processes=0, progress=False)
    assert out == [f"/kept/{i}" for i in range(10)]
    assert clients_made == 1 and client is None


def test_inline_async_items_where_an_event_loop_already_runs(r: redis.Redis, http_url: str, kept_client: None) -> None:
    # As in a Jupyter kernel: the calling thread runs an event loop of its own.
    items = [(f"{http_url}/jupyter/{i}", i == 4) for i in range(5)]

    async def cell() -> Any:
        return nbtasks.pmap(get_with_kept_client, items, processes=0, progress=False)

    assert asyncio.run(cell()) == [f"/jupyter/{i}" for i in range(5)]
    assert clients_made == 1


class Stop(BaseException):
    pass


async def stop_at(i: int) -> int:
    if i == 2:
        raise Stop(i)
    return i


def test_inline_a_base_exception_reaches_the_caller(r: redis.Redis) -> None:
    with pytest.raises(Stop):
        nbtasks.pmap(stop_at, range(5), processes=0, progress=False)


def test_inline_a_client_kept_by_an_earlier_call_serves_the_next(r: redis.Redis, redis_server, http_url: str) -> None:  # type: ignore[no-untyped-def]
    # A notebook function (by value) whose global now holds a session: it need not travel
    # to run here, and the session's loop is still the one the items run on.
    script = Path(__file__).parent / "scripts" / "inline_kept_client.py"
    proc = run_script(script, redis_server.url, http_url)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    first, second, made = out.splitlines()
    assert first == str([f"/first/{i}" for i in range(3)]) and second == str([f"/second/{i}" for i in range(3)])
    assert made == "1"
