"""nbtasks: make any function parallel from a notebook, and never lose work.

    results = nbtasks.pmap(fetch, urls)   # ordered results, live progress bar

Names are imported on first use, so that ``python -m nbtasks.worker`` can let eventlet
patch the standard library before redis-py is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "pmap": "api",
    "Job": "api",
    "jobs": "api",
    "status": "api",
    "reset": "api",
    "JobStatus": "snapshot",
    "JobCancelled": "errors",
    "JobLost": "errors",
    "UnknownJob": "errors",
    "configure": "config",
    "Settings": "config",
    "Failure": "errors",
    "NbtasksError": "errors",
    "ConfigError": "errors",
    "RedisUnavailable": "errors",
    "NotPicklableError": "errors",
    "ResultNotPicklable": "errors",
    "JobMismatchError": "errors",
    "WorkerError": "errors",
    "TaskError": "errors",
    "PayloadRejected": "errors",
    "SecurityWarning": "errors",
    "ship": "codec",
    "logger": "output",
    "Output": "output",
    "OutputLine": "output",
    "set_func": "script",
    "set_redis": "script",
    "main": "script",
}

__all__ = [
    "pmap",
    "Job",
    "jobs",
    "status",
    "reset",
    "JobStatus",
    "JobCancelled",
    "JobLost",
    "UnknownJob",
    "configure",
    "Settings",
    "Failure",
    "NbtasksError",
    "ConfigError",
    "RedisUnavailable",
    "NotPicklableError",
    "ResultNotPicklable",
    "JobMismatchError",
    "WorkerError",
    "TaskError",
    "PayloadRejected",
    "SecurityWarning",
    "ship",
    "logger",
    "Output",
    "OutputLine",
    "set_func",
    "set_redis",
    "main",
    "server",
    "__version__",
]

if TYPE_CHECKING:
    from . import server
    from .api import Job, jobs, pmap, reset, status
    from .codec import ship
    from .config import Settings, configure
    from .errors import (
        ConfigError,
        Failure,
        JobCancelled,
        JobMismatchError,
        NbtasksError,
        NotPicklableError,
        PayloadRejected,
        RedisUnavailable,
        ResultNotPicklable,
        SecurityWarning,
        TaskError,
        UnknownJob,
        WorkerError,
    )
    from .output import Output, OutputLine, logger
    from .script import main, set_func, set_redis
    from .snapshot import JobStatus


def __getattr__(name: str) -> Any:
    if name == "server":  # the embedded server's controls: nbtasks.server.status() ...
        return importlib.import_module(".server", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nbtasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
