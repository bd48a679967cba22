"""Objects <-> bytes: functions, inputs, results and failures. Knows nothing of Redis."""

from __future__ import annotations

import importlib
import linecache
import os
import pickle
import pickletools
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import CellType, CodeType, FunctionType, ModuleType
from typing import Any, NamedTuple

import cloudpickle

from .errors import NotPicklableError, ResultNotPicklable

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
    if type(value) in _PLAIN:  # refers to no module: no search of its bytes (a 1 MB page: 0.4 ms each)
        return unframed(pickle.dumps(value, protocol=PROTOCOL))
    try:
        data = pickle.dumps(value, protocol=PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return _cloudpickle(value)
    if b"__main__" in data or any(name in data for name in _shipped):
        return _cloudpickle(value)
    return unframed(data)


_FRAMED = b"\x80\x05\x95"  # protocol 5, then a frame (its 8-byte length follows)


def unframed(data: bytes) -> bytes:
    """A small pickle without its one frame, which loads the same: 9 bytes of 17 for an
    int over 255, so a million small results take 9 MB less."""
    if len(data) < 256 and data[:3] == _FRAMED and int.from_bytes(data[3:11], "little") == len(data) - 11:
        return data[:2] + data[11:]
    return data


_PLAIN = frozenset({str, bytes, bytearray, int, float, bool, complex, type(None)})


def _cloudpickle(value: Any) -> bytes:
    data: bytes = cloudpickle.dumps(value, protocol=PROTOCOL)
    return data


class Raw(NamedTuple):
    """A large `bytes` result carried as itself rather than as a pickle of it: stored
    outside Redis, it is written from and read into the one object, with no copy."""

    data: bytes


RAW_MIN = 64 << 10  # smaller bytes results are pickled: a copy costs less than the bookkeeping


def load(data: bytes | Raw) -> Any:
    """The inverse of `dump` (and of `dump_result`)."""
    return data.data if isinstance(data, Raw) else pickle.loads(data)


def pickled(data: bytes | Raw) -> bytes:
    """`data` as a pickle, whichever way it came."""
    return pickle.dumps(data.data, protocol=PROTOCOL) if isinstance(data, Raw) else data


def dump_result(value: Any) -> bytes | Raw:
    """`dump` for a task's return value, in the worker: ResultNotPicklable, whose message
    is the whole story (the caller shows it as the item's failure, with no traceback), for
    a value that cannot be sent back. That includes one that would load eventlet into the
    caller: with the eventlet backend the worker's `threading.Lock()` is eventlet's, which
    pickles, while on the other backends the same task fails (see `_refuse_green`)."""
    if type(value) is bytes and len(value) >= RAW_MIN:
        return Raw(value)
    try:
        data = dump(value)
        if type(value) in _PLAIN:
            return data
        # Only a process that has eventlet (or greenlet) can make a pickle that refers to
        # it; then a search of the bytes, at memory speed, and the exact check only when
        # they name it (most results never do).
        if ("eventlet" in sys.modules or "greenlet" in sys.modules) and (b"eventlet" in data or b"greenlet" in data):
            _refuse_green(data)
    except Exception as exc:
        kind = type(value).__name__
        raise ResultNotPicklable(
            f"The return value ({'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}) could not be sent back: "
            f"{type(exc).__name__}: {exc}. Return plain data (strings, numbers, lists, dicts) instead of locks, "
            "connections, open files or generators."
        ) from None  # the message says it all: no frames of ours or of pickle's
    return data


_GREEN = ("eventlet", "greenlet")


def _refuse_green(data: bytes) -> None:
    """TypeError, as for any object that cannot be pickled, if loading `data` would import
    eventlet or greenlet."""
    for module, name in _globals(data):
        if module.partition(".")[0] in _GREEN:
            raise TypeError(f"cannot pickle '{name}' object" if name else f"cannot pickle module {module!r}")


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _globals(data: bytes) -> Iterator[tuple[str, str]]:
    """The (module, name) of every global a pickle loads, and (module, "") for each module
    cloudpickle imports by name. STACK_GLOBAL takes the two strings pushed just
    before it (or fetched from the memo), which is how pickle writes them."""
    memo: dict[int, object] = {}
    last: tuple[object, object] = (None, None)  # the two values pushed last; None: not a string
    importing = False  # a cloudpickle `subimport` was just loaded: its module name comes next
    for op, arg, _ in pickletools.genops(data):
        kind, pushed = op.name, None
        if kind in ("PROTO", "FRAME"):
            continue
        if kind == "MEMOIZE" or kind in _PUTS:
            memo[len(memo) if kind == "MEMOIZE" else int(arg)] = last[1]  # type: ignore[arg-type]
            continue
        if kind in _STRINGS:
            pushed = arg
        elif kind in _GETS:
            pushed = memo.get(int(arg))  # type: ignore[arg-type]
        elif kind in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            yield module, name
        elif kind == "STACK_GLOBAL" and isinstance(last[0], str) and isinstance(last[1], str):
            yield last[0], last[1]
        if importing and isinstance(pushed, str):
            yield pushed, ""
        importing = kind == "STACK_GLOBAL" and last[1] == "subimport" and str(last[0]).startswith("cloudpickle")
        last = (last[1], pushed)


def dump_function(
    func: Callable[..., Any],
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    key: Callable[[Any], Any] | None = None,
) -> bytes:
    """Serialize the task function by value where needed, or say what cannot be sent;
    with it go the exceptions it retries on and the key function of its `Limit`.

    cloudpickle renames the file of code it carries by value to "<dynamic-code>"; the
    real names, and the source of notebook cells (which exist only in this process),
    travel along so that remote tracebacks show the failing lines.
    """
    functions = [*_functions(func), *(_functions(key) if key is not None else ())]
    files = {_code_key(f.__code__): f.__code__.co_filename for f in functions}
    submodules = submodules_used(f for f in functions if _by_value(f))
    cells = {
        name: entry
        for name, entry in list(linecache.cache.items())
        if name in files.values() and len(entry) == 4 and entry[1] is None
    }
    try:
        return _cloudpickle(
            {"func": func, "files": files, "cells": cells, "retry_on": retry_on, "submodules": submodules, "key": key}
        )
    except Exception as exc:
        what = describe(func) if key is None else f"{describe(func)} (or its Limit's key, {describe(key)})"
        raise NotPicklableError(
            f"Cannot send {what} to the worker processes: {type(exc).__name__}: {exc}. "
            "Move what it captures (open files, locks, connections) inside the function."
        ) from exc


def load_function(
    data: bytes,
) -> tuple[Callable[[Any], Any], tuple[type[BaseException], ...], Callable[[Any], Any] | None]:
    """The inverse of `dump_function`: the function, the exceptions it retries on and
    its key function (None without a Limit)."""
    payload = pickle.loads(data)
    for name in payload.get("submodules", ()):
        try:
            importlib.import_module(name)
        except Exception:  # not here: the call fails as it would have anyway, and says why
            pass
    files: dict[tuple[str, int], str] = payload["files"]
    for name, entry in payload["cells"].items():
        linecache.cache.setdefault(name, entry)
    key = payload.get("key")
    for f in [*_functions(payload["func"]), *(_functions(key) if key is not None else ())]:
        if f.__code__.co_filename == "<dynamic-code>":
            f.__code__ = _refile(f.__code__, files)
    return payload["func"], payload["retry_on"], key


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


def submodules_used(functions: Iterable[FunctionType]) -> list[str]:
    """The submodules loaded here that `functions` use as attributes of a module they
    reference: ``xml.etree.ElementTree.fromstring(...)`` after ``import xml.etree.ElementTree``
    references the module `xml` alone. pickle sends `xml` by name, and a fresh worker has
    no `xml.etree` unless it imports it. Counted: each module in sys.modules below a module
    among a function's globals and closure values whose dotted path's parts are all names
    its code uses, nested code included (cloudpickle looks only at the outer code)."""
    below: dict[str, list[str]] | None = None  # module -> the loaded modules below it
    found: set[str] = set()
    for f in functions:
        names = set(_names(f.__code__))
        values = [f.__globals__[n] for n in names if n in f.__globals__]
        values += [cell.cell_contents for cell in f.__closure__ or () if _filled(cell)]
        for module in values:
            if not isinstance(module, ModuleType) or not isinstance(getattr(module, "__name__", None), str):
                continue
            if below is None:
                below = _modules_below()
            start = len(module.__name__) + 1
            found.update(sub for sub in below.get(module.__name__, ()) if set(sub[start:].split(".")) <= names)
    return sorted(found)


def _modules_below() -> dict[str, list[str]]:
    below: dict[str, list[str]] = {}
    for name in list(sys.modules):  # a copy: another thread may import meanwhile
        if isinstance(name, str):
            parts = name.split(".")
            for end in range(1, len(parts)):
                below.setdefault(".".join(parts[:end]), []).append(name)
    return below


def _by_value(f: FunctionType) -> bool:
    """Whether cloudpickle sends `f` by value: defined in __main__ (a notebook, a script),
    in a shipped module, or not found under its name (a lambda, a closure). A function
    sent by name comes with its module, which imports what it needs."""
    module = getattr(f, "__module__", None)
    if not isinstance(module, str) or module == "__main__" or module not in sys.modules:
        return True
    parts = module.split(".")
    if any(shipped(".".join(parts[:end])) for end in range(1, len(parts) + 1)):
        return True
    found: Any = sys.modules[module]
    try:
        for part in f.__qualname__.split("."):
            found = getattr(found, part, None)
    except Exception:  # a module's own __getattr__ may raise anything
        return True
    return found is not f


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


def failure_payload(exc: BaseException, output: str = "") -> bytes:
    """A failure as the caller will see it: type, message, remote traceback, and the last
    lines its attempt printed or logged."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        tb = tb.tb_next  # the user's frames only: nbtasks' own say nothing about the failure
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return failure_record(exc_name(exc), _message(exc), text, output)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 (an exception whose __str__ raises still fails its item)
        return f"<{exc_name(exc)} whose message could not be shown>"


def failure_record(exc_type: str, message: str, traceback_text: str, output: str = "") -> bytes:
    """A failure the caller will load as `Failure` fields."""
    record = {"exc_type": exc_type, "message": message, "traceback": traceback_text}
    if output:
        record["output"] = output
    return pickle.dumps(record, protocol=PROTOCOL)


def exc_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def failure_line(exc: BaseException) -> str:
    """One line for a failed attempt's history."""
    message = _message(exc).strip().splitlines()
    line = f"{exc_name(exc)}: {message[0]}" if message else exc_name(exc)
    return line if len(line) <= 200 else line[:197] + "..."
