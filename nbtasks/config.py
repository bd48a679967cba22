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
    """Defaults for every `pmap` call; redis_url (as ``redis=``), processes, concurrency
    and keep can also be given to one call.

    redis_url:   where jobs live (``redis://``, ``rediss://`` or ``unix://``).
    processes:   worker processes per job (0 runs inline in the caller).
    concurrency: green threads per worker process (1 for CPU-bound work).
    warm:        seconds worker processes wait for the next call once a run is complete
                 (0: they leave at once), so repeated calls start without a new process.
    keep:        how long a job is kept once nobody calls or runs it ("30d", "12h",
                 seconds); None or "forever" (the default): until deleted (see `prune`).
    blobs:       where large inputs and results are kept instead of Redis's memory: a
                 folder (shared by every machine that runs workers) or an fsspec URL such
                 as ``s3://bucket/prefix``; "none" keeps them in Redis. Default: a folder
                 beside nbtasks' own server, and Redis for a server you configured.
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
    keep: float | None = None
    blobs: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", parse_keep(self.keep))  # "30d" -> seconds
        if self.blobs is not None and not isinstance(self.blobs, str):
            raise ConfigError(f"blobs= takes a folder path or a URL such as s3://bucket/prefix, not {self.blobs!r}.")
        if self.blobs and self.blobs != "none" and "://" not in self.blobs and not os.path.isabs(self.blobs):
            raise ConfigError(
                f"blobs={self.blobs!r}: give an absolute folder path, or a URL such as s3://bucket/prefix."
            )
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
        """Settings from NBTASKS_REDIS_URL, NBTASKS_PROCESSES, NBTASKS_CONCURRENCY, NBTASKS_WARM,
        NBTASKS_KEEP and NBTASKS_BLOBS."""
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
        if raw := os.environ.get("NBTASKS_KEEP"):
            values["keep"] = raw
        if raw := os.environ.get("NBTASKS_BLOBS"):
            values["blobs"] = os.path.expanduser(raw)
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

    Accepts the fields of `Settings` (see ``help(nbtasks.Settings)``): redis_url,
    processes, concurrency, warm, keep, and blobs (where large inputs and results are
    kept: a folder or a URL such as ``s3://bucket/prefix``; "none": in Redis; "": the
    default). Returns the settings now in force.
    """
    global _current
    unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ConfigError(f"configure() got unknown settings: {', '.join(sorted(unknown))}.")
    _current = settings().replace(**changes)
    return _current


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str | float) -> float:
    """ "7d", "12h", "30m", "90s", "2w" (or a number of seconds) -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT[match.group(2) or "s"]
    else:
        raise ConfigError(f'A duration is a number of seconds or a string like "7d", "12h", "30m", not {value!r}.')
    if seconds < 0:
        raise ConfigError(f"A duration cannot be negative, not {value!r}.")
    return seconds


def parse_keep(value: object) -> float | None:
    """A job's lifetime once unused: None (or "forever") to keep it until deleted, else
    a positive duration (see `parse_duration`)."""
    if value is None or value == "forever":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(f'keep= takes a duration like "30d" or "forever", not {value!r}.')
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ConfigError(f'keep= must be a positive duration like "30d" (or "forever"), not {value!r}.')
    return seconds
