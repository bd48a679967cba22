"""A job's policy: how it treats failures and load. `Policy` is what the caller gives
(validated here); `RunPolicy` is the part stored with the job, which every caller and
worker of the job, on any machine, reads the same way."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .limits import Limit

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(rate: str | float | None) -> float | None:
    """ "50/s", "100/min", "1000/h" (or a number per second) -> calls per second."""
    if rate is None or isinstance(rate, int | float):
        per_second = rate
    elif match := _RATE.match(rate):
        per_second = float(match.group(1)) / _PER[match.group(2)]
    else:
        raise ConfigError(f'rate= takes a string like "50/s", "100/min" or "1000/h", not {rate!r}.')
    if per_second is not None and per_second <= 0:
        raise ConfigError(f"rate= must be positive, not {rate!r}.")
    return per_second


@dataclass(frozen=True)
class RunPolicy:
    """What a run needs to drive the job, stored with it (as JSON in its metadata): each
    caller and worker of the job reads the same values. Defaults are those of `Policy()`."""

    retries: int = 0
    retry_delay: float = 1.0  # seconds before the first retry; doubled at each next one
    timeout: float | None = None  # seconds per attempt
    rate: float | None = None  # calls per second, across every worker of the job
    retry_timeouts: bool = True  # whether a timed-out attempt is retried (retry_on covers TimeoutError)
    backend: str = "eventlet"  # or "threads", "asyncio"
    errors: str = "raise"  # or "return"
    keep: float | None = None  # seconds the job is kept once unused (None: until deleted)
    keyed: bool = False  # items run under a per-key Limit (its key function travels with the function)
    key_concurrency: int | None = None  # items of one key at once
    key_rate: float | None = None  # starts per second of one key

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> RunPolicy:
        """The stored policy; unknown keys (a newer nbtasks) are ignored."""
        if not text:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


@dataclass(frozen=True)
class Policy:
    """How a job treats failures and load, as the caller gives it: retries with backoff,
    a timeout per attempt, a shared rate limit, per-key limits (`limits.Limit`), whether failures raise or come back in
    the list, which backend runs its items (see `nbtasks.backends`), and how long the job
    is kept once unused (seconds, see `config.parse_keep`)."""

    retries: int = 0
    retry_delay: float = 1.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    rate: float | None = None
    errors: str = "raise"
    backend: str = "eventlet"
    keep: float | None = None
    limit: Limit | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"retries= must be 0 or more, not {self.retries}.")
        if self.retry_delay < 0:
            raise ConfigError(f"retry_delay= must be 0 or more seconds, not {self.retry_delay}.")
        if not self.retry_on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise ConfigError(f"retry_on= takes exception classes, not {self.retry_on!r}.")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout= must be a positive number of seconds, not {self.timeout}.")
        if self.errors not in ("raise", "return"):
            raise ConfigError(f'errors= takes "raise" or "return", not {self.errors!r}.')

    def stored(self) -> RunPolicy:
        """The part every caller and worker of the job reads (retry_on travels with the
        function: it may name the user's own exception classes)."""
        return RunPolicy(
            retries=self.retries,
            retry_delay=self.retry_delay,
            timeout=self.timeout,
            rate=self.rate,
            retry_timeouts=any(issubclass(TimeoutError, t) for t in self.retry_on),
            backend=self.backend,
            errors=self.errors,
            keep=self.keep,
            keyed=self.limit is not None,
            key_concurrency=self.limit.concurrency if self.limit is not None else None,
            key_rate=self.limit.per_second if self.limit is not None else None,
        )
