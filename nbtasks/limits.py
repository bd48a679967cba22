"""Per-key limits, for polite crawls: `Limit` (at most so many items of one key at once,
and so many starts per second), `host` (the usual key: a URL's host) and `Backoff` (a
task asking for its key to pause). The limits are kept in Redis (see `store.limits`), so
every process and machine of a job shares them."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .policy import parse_rate

DEFAULT_CONCURRENCY = 4  # items of one key at once, unless Limit(concurrency=...) says otherwise
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0  # seconds of a Backoff() that does not say how long


def host(item: Any) -> str:
    """The host of a URL (``"https://Example.org:8080/a"`` -> ``"example.org"``), of an
    object with a ``url`` attribute (a request, a response) or of a mapping with a
    ``"url"`` key: the key a `Limit` uses by default. Raises ValueError for what has none."""
    url = item
    if not isinstance(url, str | bytes):
        url = url.get("url") if isinstance(url, Mapping) else getattr(url, "url", None)
        url = str(url) if url is not None and not isinstance(url, str | bytes) else url  # (httpx, yarl URLs)
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    name = urlsplit(url).hostname if isinstance(url, str) else None
    if not name:
        raise ValueError(
            f"nbtasks.host found no host in {item!r:.100}: it takes URLs like 'https://example.org/page', "
            "or objects with a .url. Give Limit(key=...) a function of your own for other inputs."
        )
    return name


@dataclass(frozen=True)
class Limit:
    """At most `concurrency` items of one key running at once and at most `rate` of them
    starting per second (``"10/s"``, ``"30/min"``), across every process and machine of
    the job; the key of an item is ``key(item)`` (default: `host`, the host of its URL).
    A key that returns None leaves that item unlimited. Items of a busy key wait in Redis
    while other keys' items run.

    ``pmap(fetch, urls, limit=nbtasks.Limit(concurrency=4, rate="10/s"))``
    """

    key: Callable[[Any], Any] = host
    concurrency: int | None = DEFAULT_CONCURRENCY
    rate: str | float | None = None

    def __post_init__(self) -> None:
        if not callable(self.key):
            raise ConfigError(f"Limit(key=...) takes a function of an item, not {type(self.key).__name__}.")
        if self.concurrency is not None and (not isinstance(self.concurrency, int) or self.concurrency < 1):
            raise ConfigError(f"Limit(concurrency=...) must be 1 or more (or None: no cap), not {self.concurrency!r}.")
        if self.concurrency is None and self.rate is None:
            raise ConfigError("Limit() needs concurrency=, rate= or both: with neither it would limit nothing.")
        parse_rate(self.rate)  # (says what is wrong with it now, not in a worker)

    @property
    def per_second(self) -> float | None:
        return parse_rate(self.rate)


class Backoff(Exception):  # noqa: N818 (a request, not an error)
    """Raise it from a task to pause its key: the item goes back to wait (not a failed
    attempt) and no item of its key starts for `seconds`; other keys go on. `seconds`
    may be a number or an HTTP ``Retry-After`` value (seconds, or a date); without it
    the pause doubles with each backoff of the key in a row, from 1 s up to 60 s.

    ``if r.status_code in (429, 503): raise nbtasks.Backoff(r.headers.get("Retry-After"))``
    """

    def __init__(self, seconds: float | str | None = None) -> None:
        self.seconds = retry_after(seconds)
        super().__init__(f"back off for {self.seconds} s" if self.seconds is not None else "back off")


def retry_after(value: float | str | None) -> float | None:
    """Seconds from a number, or from a ``Retry-After`` header (delta seconds or an HTTP
    date); None when there is nothing usable (the key then backs off by its own count)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return max(0.0, float(value))
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
