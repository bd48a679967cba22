"""Objects <-> bytes: functions, inputs, results and failures. Knows nothing of Redis."""

from __future__ import annotations

import hashlib
import inspect
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from .errors import NotPicklableError

PROTOCOL = 5


def dump(value: Any) -> bytes:
    """Serialize an input or a result so that a fresh interpreter can load it.

    Plain pickle is several times faster than cloudpickle, but pickles objects from
    ``__main__`` (a notebook) by reference, which another process cannot resolve; those
    go through cloudpickle, which carries them by value.
    """
    try:
        data = pickle.dumps(value, protocol=PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return _cloudpickle(value)
    if b"__main__" in data:
        return _cloudpickle(value)
    return data


def _cloudpickle(value: Any) -> bytes:
    data: bytes = cloudpickle.dumps(value, protocol=PROTOCOL)
    return data


def load(data: bytes) -> Any:
    """The inverse of `dump` and `dump_function`."""
    return pickle.loads(data)


def dump_function(func: Callable[..., Any]) -> bytes:
    """Serialize the task function by value where needed, or say what cannot be sent."""
    try:
        return _cloudpickle(func)
    except Exception as exc:
        raise NotPicklableError(
            f"Cannot send {describe(func)} to the worker processes: {type(exc).__name__}: {exc}. "
            "Move what it captures (open files, locks, connections) inside the function."
        ) from exc


def dump_input(value: Any, index: int) -> bytes:
    """`dump` for one input, with an error that names the item."""
    try:
        return dump(value)
    except Exception as exc:
        raise NotPicklableError(
            f"Input {index} ({type(value).__name__}) cannot be sent to the worker processes: "
            f"{type(exc).__name__}: {exc}. Pass plain data (strings, numbers, tuples, dicts)."
        ) from exc


def describe(func: Callable[..., Any]) -> str:
    """A short human name for a callable."""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    return f"function {name!r}"


def func_label(func: Callable[..., Any]) -> str:
    """The readable first part of an automatic job name."""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    return name.replace("<locals>.", "").replace("<lambda>", "lambda").replace("<", "").replace(">", "")


def func_digest(func: Callable[..., Any], payload: bytes) -> str:
    """A hash of what the function does: its module, name and source when known.

    The source is the stable part (bytes of a pickle may vary between runs); without
    source (builtins, some C callables) the serialized payload stands in.
    """
    h = hashlib.sha256()
    h.update(f"{getattr(func, '__module__', '')}:{getattr(func, '__qualname__', '')}\n".encode())
    try:
        h.update(inspect.getsource(func).encode())
    except (OSError, TypeError):
        h.update(payload)
    return h.hexdigest()


def failure_payload(exc: BaseException) -> bytes:
    """A failure as the caller will see it: type, message and remote traceback."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return pickle.dumps(
        {
            "exc_type": name,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        },
        protocol=PROTOCOL,
    )
