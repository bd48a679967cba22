"""Objects <-> bytes: functions, inputs, results and failures. Knows nothing of Redis."""

from __future__ import annotations

import linecache
import os
import pickle
import traceback
from collections.abc import Callable, Iterator
from types import CellType, CodeType, FunctionType, ModuleType
from typing import Any

import cloudpickle

from .errors import NotPicklableError

PROTOCOL = 5
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_shipped: set[bytes] = set()  # names of the modules that travel by value (see ship)


def ship(module: ModuleType) -> None:
    """Send `module`'s functions and classes to worker processes by value, so that
    workers on machines where it is not installed can run them (by default a function
    from your own module travels by name, and a worker imports that module).

    Call it before `pmap`, e.g. ``nbtasks.ship(mytools)``. Modules that `module`
    imports still travel by name.
    """
    if not isinstance(module, ModuleType):
        raise TypeError(f"ship() takes a module, not {type(module).__name__}.")
    cloudpickle.register_pickle_by_value(module)
    _shipped.add(module.__name__.encode())


def shipped(module: str) -> bool:
    """Whether `module` travels to workers by value (see `ship`)."""
    return module.encode() in _shipped


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
    if b"__main__" in data or any(name in data for name in _shipped):
        return _cloudpickle(value)
    return data


def _cloudpickle(value: Any) -> bytes:
    data: bytes = cloudpickle.dumps(value, protocol=PROTOCOL)
    return data


def load(data: bytes) -> Any:
    """The inverse of `dump`."""
    return pickle.loads(data)


def dump_function(func: Callable[..., Any], retry_on: tuple[type[BaseException], ...] = (Exception,)) -> bytes:
    """Serialize the task function by value where needed, or say what cannot be sent.

    cloudpickle renames the file of code it carries by value to "<dynamic-code>"; the
    real names, and the source of notebook cells (which exist only in this process),
    travel along so that remote tracebacks show the failing lines.
    """
    files = {_code_key(f.__code__): f.__code__.co_filename for f in _functions(func)}
    cells = {
        name: entry
        for name, entry in list(linecache.cache.items())
        if name in files.values() and len(entry) == 4 and entry[1] is None
    }
    try:
        return _cloudpickle({"func": func, "files": files, "cells": cells, "retry_on": retry_on})
    except Exception as exc:
        raise NotPicklableError(
            f"Cannot send {describe(func)} to the worker processes: {type(exc).__name__}: {exc}. "
            "Move what it captures (open files, locks, connections) inside the function."
        ) from exc


def load_function(data: bytes) -> tuple[Callable[[Any], Any], tuple[type[BaseException], ...]]:
    """The inverse of `dump_function`: the function and the exceptions it retries on."""
    payload = pickle.loads(data)
    files: dict[tuple[str, int], str] = payload["files"]
    for name, entry in payload["cells"].items():
        linecache.cache.setdefault(name, entry)
    for f in _functions(payload["func"]):
        if f.__code__.co_filename == "<dynamic-code>":
            f.__code__ = _refile(f.__code__, files)
    return payload["func"], payload["retry_on"]


def _functions(root: object, limit: int = 200) -> Iterator[FunctionType]:
    """Plain functions reachable from `root` through closures and the globals it names."""
    seen: set[int] = set()
    todo = [root]
    while todo and len(seen) < limit:
        f = todo.pop()
        if not isinstance(f, FunctionType) or id(f) in seen:
            continue
        seen.add(id(f))
        yield f
        todo += [cell.cell_contents for cell in f.__closure__ or () if _filled(cell)]
        todo += [f.__globals__[n] for n in _names(f.__code__) if n in f.__globals__]


def _filled(cell: CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _names(code: CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _names(const)


def _code_key(code: CodeType) -> tuple[str, int]:
    return (code.co_qualname, code.co_firstlineno)


def _refile(code: CodeType, files: dict[tuple[str, int], str]) -> CodeType:
    consts = tuple(_refile(c, files) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=files.get(_code_key(code), code.co_filename), co_consts=consts)


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


def failure_payload(exc: BaseException) -> bytes:
    """A failure as the caller will see it: type, message and remote traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        tb = tb.tb_next  # the user's frames only: nbtasks' own say nothing about the failure
    return failure_record(exc_name(exc), str(exc), "".join(traceback.format_exception(type(exc), exc, tb)))


def failure_record(exc_type: str, message: str, traceback_text: str) -> bytes:
    """A failure the caller will load as `Failure` fields."""
    record = {"exc_type": exc_type, "message": message, "traceback": traceback_text}
    return pickle.dumps(record, protocol=PROTOCOL)


def exc_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def failure_line(exc: BaseException) -> str:
    """One line for a failed attempt's history."""
    message = str(exc).strip().splitlines()
    line = f"{exc_name(exc)}: {message[0]}" if message else exc_name(exc)
    return line if len(line) <= 200 else line[:197] + "..."
