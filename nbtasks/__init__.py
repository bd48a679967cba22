"""nbtasks: make any function parallel from a notebook, and never lose work.

    results = nbtasks.pmap(fetch, urls)   # ordered results, live progress bar

Names are imported on first use, so that ``import nbtasks`` stays cheap and a worker
process (``python -m nbtasks.worker``) can let eventlet patch the standard library
before redis-py is imported. `_EXPORTS` is the one list of the public names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that holds it (`server` is the module itself).
_EXPORTS = {
    "pmap": "api",
    "imap": "api",
    "imap_unordered": "api",
    "jobs": "api",
    "status": "api",
    "Job": "job",
    "reset": "job",
    "prune": "job",
    "JobStatus": "job_status",
    "Limit": "limits",
    "host": "limits",
    "Backoff": "limits",
    "configure": "config",
    "Settings": "config",
    "ship": "codec",
    "logger": "output",
    "Output": "output",
    "OutputLine": "output",
    "set_func": "script",
    "set_redis": "script",
    "main": "script",
    "server": "server",
    "Failure": "errors",
    "NbtasksError": "errors",
    "ConfigError": "errors",
    "RedisUnavailable": "errors",
    "NotPicklableError": "errors",
    "ResultNotPicklable": "errors",
    "JobMismatchError": "errors",
    "JobCancelled": "errors",
    "JobLost": "errors",
    "UnknownJob": "errors",
    "WorkerError": "errors",
    "TaskError": "errors",
    "PayloadRejected": "errors",
    "PayloadLost": "errors",
    "BlobsUnavailable": "errors",
    "SecurityWarning": "errors",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # the same names, for type checkers and editors (they do not run __getattr__)
    from . import server as server
    from .api import imap as imap, imap_unordered as imap_unordered, jobs as jobs, pmap as pmap, status as status
    from .codec import ship as ship
    from .config import Settings as Settings, configure as configure
    from .errors import (
        BlobsUnavailable as BlobsUnavailable,
        ConfigError as ConfigError,
        Failure as Failure,
        JobCancelled as JobCancelled,
        JobLost as JobLost,
        JobMismatchError as JobMismatchError,
        NbtasksError as NbtasksError,
        NotPicklableError as NotPicklableError,
        PayloadLost as PayloadLost,
        PayloadRejected as PayloadRejected,
        RedisUnavailable as RedisUnavailable,
        ResultNotPicklable as ResultNotPicklable,
        SecurityWarning as SecurityWarning,
        TaskError as TaskError,
        UnknownJob as UnknownJob,
        WorkerError as WorkerError,
    )
    from .job import Job as Job, prune as prune, reset as reset
    from .job_status import JobStatus as JobStatus
    from .limits import Backoff as Backoff, Limit as Limit, host as host
    from .output import Output as Output, OutputLine as OutputLine, logger as logger
    from .script import main as main, set_func as set_func, set_redis as set_redis


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nbtasks' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = module if name == _EXPORTS[name] else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
