"""Settings: one frozen dataclass, read from the environment, changed by `configure`."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

DEFAULT_CONCURRENCY = 200


@dataclass(frozen=True)
class Settings:
    """Defaults for every `pmap` call; each field can be overridden per call.

    redis_url:   where jobs live (``redis://``, ``rediss://`` or ``unix://``).
    processes:   worker processes per job (0 runs inline in the caller).
    concurrency: green threads per worker process (1 for CPU-bound work).
    warm:        seconds worker processes wait for the next call once a run is complete
                 (0: they leave at once), so repeated calls start without a new process.
    """

    redis_url: str | None = None
    processes: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    concurrency: int = DEFAULT_CONCURRENCY
    warm: float = 60.0
    # How often the caller polls counters and refreshes its heartbeat (seconds).
    poll_interval: float = 0.1
    # Workers stop when the caller's heartbeat is older than this (seconds).
    heartbeat_ttl: float = 6.0
    # How long a run waits for an unreachable Redis to come back (seconds).
    outage_limit: float = 300.0

    def __post_init__(self) -> None:
        if self.processes < 0:
            raise ConfigError(f"processes must be 0 (inline) or more, not {self.processes}.")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be 1 or more, not {self.concurrency}.")
        if self.warm < 0:
            raise ConfigError(f"warm must be 0 (no warm workers) or more seconds, not {self.warm}.")
        if not 0 < self.poll_interval < self.heartbeat_ttl / 4:
            raise ConfigError("poll_interval must be positive and well below heartbeat_ttl.")

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from NBTASKS_REDIS_URL, NBTASKS_PROCESSES, NBTASKS_CONCURRENCY and NBTASKS_WARM."""
        values: dict[str, object] = {}
        if url := os.environ.get("NBTASKS_REDIS_URL"):
            values["redis_url"] = url
        for field in ("processes", "concurrency"):
            raw = os.environ.get(f"NBTASKS_{field.upper()}")
            if raw:
                try:
                    values[field] = int(raw)
                except ValueError:
                    raise ConfigError(f"NBTASKS_{field.upper()} must be a whole number, not {raw!r}.") from None
        if raw := os.environ.get("NBTASKS_WARM"):
            try:
                values["warm"] = float(raw)
            except ValueError:
                raise ConfigError(f"NBTASKS_WARM must be a number of seconds, not {raw!r}.") from None
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Settings:
        """A copy with the given fields changed; ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_current: Settings | None = None


def settings() -> Settings:
    """The settings in force: those given to `configure`, else the environment's."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def configure(**changes: Any) -> Settings:
    """Change the defaults of later calls, e.g. ``configure(redis_url="redis://host:6379/0")``.

    Accepts the fields of `Settings`; returns the settings now in force.
    """
    global _current
    unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ConfigError(f"configure() got unknown settings: {', '.join(sorted(unknown))}.")
    _current = settings().replace(**changes)
    return _current


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
class Policy:
    """How a job treats failures and load: retries with backoff, a timeout per attempt,
    a shared rate limit, whether failures raise or come back in the list, and which
    backend runs its items (see `nbtasks.backends`)."""

    retries: int = 0
    retry_delay: float = 1.0  # seconds before the first retry; doubled at each next one
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None  # seconds per attempt
    rate: float | None = None  # calls per second, across every worker of the job
    errors: str = "raise"  # or "return": failed positions hold a Failure
    backend: str = "eventlet"  # or "threads", "asyncio"

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

    def numbers(self) -> dict[str, Any]:
        """The parts a caller needs to drive the job (stored in its metadata)."""
        return {
            "retries": self.retries,
            "retry_delay": self.retry_delay,
            "timeout": self.timeout,
            "rate": self.rate,
            "retry_timeouts": any(issubclass(TimeoutError, t) for t in self.retry_on),
            "backend": self.backend,
            "errors": self.errors,
        }
