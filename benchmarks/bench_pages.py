"""Many large text results on the embedded, durable server: 20,000 HTML-like pages of
50-200 KB (generated deterministically per index, compressing like real HTML: about 3.6x
with zlib), returned by a task that makes them (no network), through `nbtasks.pmap` on
the embedded server in a fresh temporary NBTASKS_HOME. Reports the wall time against a
plain for-loop in the same run, then what keeping the results costs: the server's
memory, its append-only file and every top-level entry of the home folder, as ratios to
the bytes of the results; then the same after `nbtasks.reset` of the job.

    .venv/bin/python benchmarks/bench_pages.py [--pages 20000] [--min-kb 50] [--max-kb 200] [--binary]

(`--pages 300 --min-kb 1024 --max-kb 1024 --binary`: the 300 MB job of the README.)

The server is started before the timing (as it would be running already); the worker
processes start inside it. The server is stopped and the home folder removed at exit.
Also the page generator of benchmarks/bench_crawl.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

JOB = "bench-pages"

_SYLLABLES = (
    "an ar be ca de di el en er es fa ge in is ka la le li lo ma me mi na ne no on or pa pe ra re ri ro sa se si ta "
    "te ti to tu un ur va ve vi xa yo za zu"
).split()
_COMMON = "the of and to in a is that for it as was with be by on not he this are or his from at which but have".split()


def _vocabulary(words: int = 20_000, slots: int = 1 << 16) -> list[str]:
    """A table of `slots` words drawn from a Zipf-like vocabulary (common words often,
    rare ones seldom, as in prose); one slot in 12 is an internal link, as in an article."""
    rng = random.Random(0)
    seen = dict.fromkeys(_COMMON)
    while len(seen) < words:
        seen.setdefault("".join(rng.choices(_SYLLABLES, k=rng.choice((1, 2, 2, 3, 3, 4)))))
    vocab = list(seen)
    table = rng.choices(vocab, [1 / (k + 1) ** 1.1 for k in range(len(vocab))], k=slots)
    for k in range(0, slots, 12):
        word = table[k]
        target = f"{word.capitalize()}_{rng.choice(vocab[:2000])}"
        table[k] = f'<a href="/wiki/{target}" class="link internal" title="{word}">{word}</a>'
    return table


WORDS = _vocabulary()
HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/css/site.css?v=3.2.1"><script src="/static/js/app.js" defer></script>
</head><body class="article page-{i}"><header class="site-header"><nav class="menu"><ul>{nav}</ul></nav></header>
<main id="content"><article><h1 class="title">{title}</h1>
"""
TAIL = """</article></main><footer class="site-footer"><p>&copy; Example Wiki. Text is available under the
Creative Commons Attribution-ShareAlike License.</p><ul class="links"><li><a href="/about">About</a></li>
<li><a href="/privacy">Privacy policy</a></li><li><a href="/contact">Contact</a></li></ul></footer></body></html>
"""
BLOCKS = [
    *['<div class="section"><p class="text">{}.</p></div>\n'] * 8,
    '<h2 id="s{n}">{}</h2>\n',
    "<ul>\n<li>{}</li>\n</ul>\n",
    '<div class="note"><span>{}</span></div>\n',
    '<table class="data"><tr><td>{}</td><td>{n}</td></tr></table>\n',
]


def html_page(i: int, size: int) -> str:
    """Page `i`: `size` characters (ASCII, so as many bytes) of HTML-like text, the
    same for the same arguments in every process."""
    rng = random.Random(i)
    count = size // 6 + 1
    words = [WORDS[k] for k in memoryview(rng.randbytes(2 * count)).cast("H")]
    title = " ".join(w for w in words[:8] if "<" not in w)[:60]
    nav = "".join(f'<li><a href="/wiki/{w}">{w}</a></li>' for w in rng.sample(_COMMON, 12))
    parts = [HEAD.format(title=title, i=i, nav=nav)]
    total = len(parts[0]) + len(TAIL)
    pos = 0
    while total < size:
        length = rng.randint(8, 120)
        if pos + length > count:
            pos = 0
        block = rng.choice(BLOCKS).format(" ".join(words[pos : pos + length]), n=pos)
        pos += length
        parts.append(block)
        total += len(block)
    return "".join(parts)[: size - len(TAIL)] + TAIL


def page_size(i: int, min_kb: int, max_kb: int) -> int:
    return random.Random(f"size:{i}").randint(min_kb << 10, max_kb << 10)


def page(item: tuple[int, int]) -> str:
    """The task: make page `i` of `size` characters."""
    i, size = item
    return html_page(i, size)


def image(item: tuple[int, int]) -> bytes:
    """The task with --binary: `size` bytes that do not compress (an image, an archive)."""
    i, size = item
    return random.Random(i).randbytes(size)


def compression(pages: list[str] | list[bytes]) -> float:
    """zlib (level 6) ratio of `pages`, each compressed alone."""
    data = [p.encode() if isinstance(p, str) else p for p in pages]
    return sum(map(len, data)) / sum(len(zlib.compress(d, 6)) for d in data)


def entry_size(path: Path) -> int:
    """Bytes of the files under `path` (or of `path` itself); sockets and the like count 0."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def settled(home: Path, quiet: float = 1.0, limit: float = 120.0) -> None:
    """Wait until no file under `home` changes for `quiet` seconds (a background rewrite
    of the append-only file done), `limit` seconds at most."""
    last: dict[str, int] = {}
    since = deadline = time.monotonic()
    deadline += limit
    while time.monotonic() < deadline:
        now = {e.name: entry_size(e) for e in home.iterdir()}
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)


def footprint(home: Path, label: str) -> list[tuple[str, int]]:
    """The server's memory and append-only file, then every top-level entry of `home`
    (those under 100 KB summed in one row), once its files have settled."""
    import nbtasks.server

    settled(home)
    status = nbtasks.server.status(home)
    out = [
        (f"server memory_used, {label}", status.memory_used),
        (f"server data_size (disk), {label}", status.data_size),
    ]
    small: list[str] = []
    small_bytes = 0
    for entry in sorted(home.iterdir()):
        size = entry_size(entry)
        name = entry.name + ("/" if entry.is_dir() else "")
        if size >= 100_000:
            out.append((f"  home/{name}, {label}", size))
        else:
            small.append(name)
            small_bytes += size
    if small:
        out.append((f"  home/ {len(small)} small entries, {label}", small_bytes))
    return out


def job_size() -> int | None:
    """What `nbtasks.jobs()` says the job takes, if it says."""
    import nbtasks

    return next((getattr(j, "size", None) for j in nbtasks.jobs() if j.name == JOB), None)


def close_warm_workers() -> None:
    """Let the warm workers of the last run go now rather than after `warm` seconds."""
    with contextlib.suppress(ImportError, AttributeError):
        from nbtasks.pool import warm

        warm.close_all()


def measure(home: Path, pages: int, min_kb: int, max_kb: int, binary: bool = False) -> None:
    import nbtasks
    import nbtasks.server

    items = [(i, page_size(i, min_kb, max_kb)) for i in range(pages)]
    task: Any = image if binary else page
    start = time.perf_counter()
    reference = [task(item) for item in items]
    loop = time.perf_counter() - start
    assert binary or all(p.isascii() for p in reference)  # so characters are bytes
    result_bytes = sum(map(len, reference))
    ratio = compression(reference[:200])
    samples = {k: reference[k] for k in range(0, pages, max(1, pages // 10))}
    del reference

    nbtasks.server.start(home)
    empty = footprint(home, "empty")
    start = time.perf_counter()
    out = nbtasks.pmap(task, items, name=JOB, fresh=True, progress=False)
    wall = time.perf_counter() - start
    assert len(out) == pages and sum(map(len, out)) == result_bytes, "incomplete results"
    assert all(out[k] == p for k, p in samples.items()), "results differ from the for-loop's"
    del out
    close_warm_workers()
    size = job_size()
    after = footprint(home, "after pmap")
    nbtasks.reset(JOB)
    after_reset = footprint(home, "after reset")

    mb = result_bytes / 1e6
    kind = "incompressible results" if binary else "pages"
    print(f"\n{pages:,} {kind} of {min_kb}-{max_kb} KB, {mb:,.0f} MB of results (zlib -6: {ratio:.1f}x)")
    print("x ref: seconds / the for-loop's, bytes / the bytes of the results")
    print(f"{'measure':44} {'seconds':>8} {'MB':>10} {'x ref':>7}")
    print(f"{'for-loop, list of results (reference)':44} {loop:8.2f} {mb:10,.1f} {1:7.2f}")
    print(f"{'nbtasks.pmap, embedded server':44} {wall:8.2f} {'':>10} {wall / loop:7.2f}")
    if size is not None:
        print(f"{'nbtasks.jobs() size of the job':44} {'':>8} {size / 1e6:10,.1f} {size / result_bytes:7.2f}")
    for label, n in [*empty, *after, *after_reset]:
        print(f"{label:44} {'':>8} {n / 1e6:10,.1f} {n / result_bytes:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=20_000)
    parser.add_argument("--min-kb", type=int, default=50)
    parser.add_argument("--max-kb", type=int, default=200)
    parser.add_argument("--binary", action="store_true", help="incompressible bytes instead of HTML")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nbtasks-home-"))
    os.environ["NBTASKS_HOME"] = str(home)  # before nbtasks is imported: its embedded server, here
    os.environ.pop("NBTASKS_REDIS_URL", None)
    try:
        measure(home, args.pages, args.min_kb, args.max_kb, args.binary)
    finally:
        close_warm_workers()
        with contextlib.suppress(Exception):
            import nbtasks.server

            nbtasks.server.stop(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
