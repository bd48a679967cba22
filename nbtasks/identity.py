"""What a result depends on, as digests that are the same in every process.

A job's function is identified by its code, its closure values, its defaults, the values
of the globals it reads and, recursively, the functions, classes and modules of the
user's own code that those reach. Installed libraries count by name and version only.
An input is identified by its value. Both come from a canonical pickle: user code is
replaced by its digest (cloudpickle's bytes differ between processes), and sets are
sorted (their order depends on the hash seed).
"""

from __future__ import annotations

import builtins
import dis
import functools
import hashlib
import io
import pickle
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import BuiltinFunctionType, CodeType, FunctionType, MappingProxyType, MethodType, ModuleType
from typing import Any

import cloudpickle

from . import codebase, codec

FORMAT = b"nbtasks identity 2\n"
INPUT_DIGEST = 16  # bytes of an input's digest: collisions are out of reach at any job size
_ATOMIC = (str, bytes, int, float, bool, type(None))
_SET_OPCODES = (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET)
_PLAIN = (tuple, list, dict)
_NOT_PLAIN = (*_SET_OPCODES, pickle.STACK_GLOBAL, pickle.NEXT_BUFFER)  # (protocol 5 names globals so)
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
# Class attributes made by Python or by dataclasses from what the class defines anyway.
_GENERATED = frozenset(
    {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__dataclass_fields__",
     "__dataclass_params__", "__match_args__", "__slotnames__", "__abstractmethods__", "_abc_impl"}
)  # fmt: skip


class Unpicklable(Exception):
    """An input that nothing can pickle (so no worker could receive it)."""


@dataclass(frozen=True)
class Identity:
    """A function's digest (hex), and the digests of its named parts (for saying what
    changed): "code", "defaults", "closure value 'k'", "global 'threshold'"..."""

    digest: str
    parts: dict[str, str]

    def changes(self, before: dict[str, str]) -> list[str]:
        """The parts that differ from `before`, in words."""
        names = sorted(set(before) | set(self.parts))
        return [name for name in names if before.get(name) != self.parts.get(name)]


def identify(func: Callable[..., Any]) -> Identity:
    """The identity of a task function (see the module's docstring)."""
    found = dict(Walker().parts(func))
    h = hashlib.sha256(FORMAT)
    for name in sorted(found):
        h.update(f"{name}=".encode() + found[name] + b"\n")
    # The parts are kept short: they only say what changed, the digest decides.
    return Identity(h.hexdigest(), {name: digest.hex()[:16] for name, digest in found.items()})


def input_digest(item: Any, walker: Walker | None = None) -> bytes:
    """A short digest of one input's value: equal digests mean equal pickles."""
    if type(item) in _ATOMIC:  # the common case, and nothing in it can vary by process
        return hashlib.sha256(pickle.dumps(item, protocol=5)).digest()[:INPUT_DIGEST]
    if type(item) in _PLAIN:
        # Tuples and the like of plain values: a plain pickle that names no class or
        # function (no STACK_GLOBAL) and holds no set is canonical already.
        try:
            data = pickle.dumps(item, protocol=5)
        except Exception:  # noqa: BLE001 (the walker below says whether anything can pickle it)
            data = pickle.STACK_GLOBAL
        if not any(op in data for op in _NOT_PLAIN):
            return hashlib.sha256(data).digest()[:INPUT_DIGEST]
    walker = walker or Walker()
    before = walker.unpicklable
    digest = walker.value(item)
    walker.forget_values()  # a million inputs must not mean a million memo entries
    if walker.unpicklable != before:
        raise Unpicklable(type(item).__name__)
    return digest[:INPUT_DIGEST]


def list_digest(items: list[Any]) -> str:
    """A digest of a whole list of inputs in one pickle: the fast way to recognise a
    list seen before (same digest: same inputs in the same order). Sets keep their
    order here: the same list may then digest otherwise in another process, which only
    costs the slower way (each input's digest), never a wrong match."""
    return Walker().value(items, sort_sets=False).hex()


def _ref(kind: str, *form: Any) -> None:
    """Stands, in a canonical pickle, for code (a digest) or a module (name, version)."""


def _sorted_set(kind: str, digests: list[bytes]) -> None:
    """Stands, in a canonical pickle, for a set: its elements' digests, sorted."""


class Walker:
    """Digests of values and code; one per identity, so that each object is walked once
    and recursion (a function that calls itself) ends."""

    def __init__(self) -> None:
        self.memo: dict[int, bytes] = {}  # id of a value -> its digest
        self.code_memo: dict[int, bytes] = {}  # id of a user function or class -> its digest
        self.keep: list[Any] = []  # what the memo's ids refer to, alive until forgotten
        self.keep_code: list[Any] = []  # what the code memo's ids refer to, alive with the walker
        self.module_memo: dict[str, str] = {}  # name of a module of yours -> its digest
        self.unpicklable = 0  # values met that nothing can pickle

    def parts(self, func: Any) -> Iterator[tuple[str, bytes]]:
        """The named parts of a task function's identity."""
        if isinstance(func, functools.partial):
            yield from self.parts(func.func)
            yield "partial arguments", self.value((func.args, sorted(func.keywords.items())))
        elif isinstance(func, MethodType):
            yield from self.parts(func.__func__)
            yield "the object the method is bound to", self.value(func.__self__)
        elif isinstance(func, FunctionType) and _is_user_code(func):
            yield from self._function_parts(func)
        else:  # a library function, a builtin, a callable object
            yield "function", self.value(func)

    def module(self, module: ModuleType) -> tuple[str, str]:
        """A module the code reads: a library's by its version; one of yours as fresh
        workers import it: the bytes of its file and, all the way down, those of the
        files of your modules it refers to."""
        name = module.__name__
        if not codebase.is_user_module(name):
            return name, codebase.version(name)
        if name not in self.module_memo:
            self.module_memo[name] = f"(recursive) {name}"  # import cycles end the same way every time
            h = hashlib.sha256(codebase.file_form(module).encode())
            for other in codebase.modules_reached(module):
                h.update(f"{other}={self.module(sys.modules[other])[1]}\n".encode())
            if codec.shipped(name):  # sent by value: what it holds in memory travels
                for attr, value in sorted(vars(module).items()):
                    if not attr.startswith("__") and not isinstance(value, ModuleType):
                        h.update(attr.encode() + b"=" + self.value(value))
            self.module_memo[name] = h.hexdigest()
        return name, self.module_memo[name]

    def _module_part(self, module: str) -> Iterator[tuple[str, bytes]]:
        """For code of a module of yours that workers import by name: that module's file."""
        if codebase.by_reference(module) and module in sys.modules:
            yield f"module '{module}'", self.module(sys.modules[module])[1].encode()

    def _function_parts(self, f: FunctionType) -> Iterator[tuple[str, bytes]]:
        yield "code", self.code(f.__code__)
        yield from self._module_part(f.__module__)
        yield "defaults", self.value((f.__defaults__, sorted((f.__kwdefaults__ or {}).items())))
        for name, cell in zip(f.__code__.co_freevars, f.__closure__ or (), strict=True):
            yield f"closure value '{name}'", self.value(_cell_contents(cell))
        for name in _global_names(f.__code__):
            if name in f.__globals__:
                value = f.__globals__[name]
                helper = isinstance(value, FunctionType | type) or hasattr(value, "__wrapped__")
                kind = "helper" if helper else "global"
                yield f"{kind} '{name}'", self.value(value)
            elif not hasattr(builtins, name):
                yield f"global '{name}'", b"(not defined)"

    def function(self, f: FunctionType) -> bytes:
        """The digest of a function of the user's own code: its parts, together."""
        key = id(f)
        if key in self.code_memo:
            return self.code_memo[key]
        self.code_memo[key] = b"(recursive) " + f.__qualname__.encode()  # ends a cycle the same way every time
        self.keep_code.append(f)
        h = hashlib.sha256()
        for name, digest in self._function_parts(f):
            h.update(name.encode() + b"=" + digest)
        self.code_memo[key] = h.digest()
        return self.code_memo[key]

    def cls(self, c: type) -> bytes:
        """The digest of a class of the user's own code: its bases and what it defines."""
        key = id(c)
        if key in self.code_memo:
            return self.code_memo[key]
        self.code_memo[key] = b"(recursive) " + c.__qualname__.encode()
        self.keep_code.append(c)
        h = hashlib.sha256(f"class {c.__module__}.{c.__qualname__}\n".encode())
        for _, digest in self._module_part(c.__module__):
            h.update(digest)
        for base in c.__bases__:
            h.update(self.value(base))
        for name, attr in sorted(vars(c).items()):
            if name not in _GENERATED:
                h.update(name.encode() + b"=" + self.value(_unwrap(attr)))
        self.code_memo[key] = h.digest()
        return self.code_memo[key]

    def code(self, code: CodeType) -> bytes:
        """Compiled code without its file name and line numbers (moving a function
        down a file does not change what it does)."""
        h = hashlib.sha256()
        for field in (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags):
            h.update(field.to_bytes(8, "little"))
        for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, (code.co_qualname,)):
            h.update("\0".join(names).encode() + b"\1")
        h.update(code.co_code)
        for const in code.co_consts:
            h.update(self.code(const) if isinstance(const, CodeType) else self.value(const))
        return h.digest()

    def value(self, obj: Any, sort_sets: bool = True) -> bytes:
        """The digest of any value, from a pickle in which code and modules stand as
        their digests; sets make the slower, sorted pickle."""
        if type(obj) in _ATOMIC:
            return hashlib.sha256(pickle.dumps(obj, protocol=5)).digest()
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        self.keep.append(obj)
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = self._dump(_Canonical, obj, buffers)
            if sort_sets and any(op in data for op in _SET_OPCODES):  # (or bytes that look like one: slower)
                buffers.clear()
                data = self._dump(_SortedCanonical, obj, buffers)
        except Exception:  # noqa: BLE001 (what only cloudpickle can carry: maybe a new job per process, never stale)
            data, buffers = self._last_resort(obj), []
        h = hashlib.sha256(data)
        for buffer in buffers:
            raw = buffer.raw()
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)  # a large array is hashed in place, never copied
        self.memo[key] = h.digest()
        return self.memo[key]

    def forget_values(self) -> None:
        """Drop the digests of values (not of code): one input's are no use for the next."""
        self.memo.clear()
        self.keep.clear()

    def _last_resort(self, obj: Any) -> bytes:
        try:
            data: bytes = cloudpickle.dumps(obj, protocol=5)
            return b"cloudpickle:" + data
        except Exception:  # noqa: BLE001 (nothing can carry it, so the workers cannot get it either)
            self.unpicklable += 1
            return b"unpicklable:" + uuid.uuid4().bytes  # never equal to anything: never reused

    def _dump(self, kind: type[_Canonical | _SortedCanonical], obj: Any, buffers: list[pickle.PickleBuffer]) -> bytes:
        out = io.BytesIO()
        kind(out, self, buffers.append).dump(obj)
        return out.getvalue()


class _Overrides:
    """What a canonical pickle saves in its own way: user code by digest, libraries by
    version."""

    walker: Walker

    def reducer_override(self, obj: Any) -> Any:
        if obj is _ref or obj is _sorted_set:
            return NotImplemented  # our own markers, saved by name
        if isinstance(obj, FunctionType | type):
            return self._code(obj)
        if isinstance(obj, ModuleType):
            return _ref, ("module", *self.walker.module(obj))
        if isinstance(obj, BuiltinFunctionType):
            module = getattr(obj, "__module__", None) or type(getattr(obj, "__self__", None)).__module__
            return _ref, ("builtin", module, obj.__qualname__, codebase.version(module))
        if isinstance(obj, CodeType):
            return _ref, ("code", self.walker.code(obj))
        if isinstance(obj, MappingProxyType):
            return _ref, ("mappingproxy", dict(obj))
        if callable(obj):
            return self._callable(obj)
        return NotImplemented

    def _callable(self, obj: Any) -> Any:
        wrapped = getattr(obj, "__dict__", {}).get("__wrapped__")
        if isinstance(wrapped, FunctionType) and _is_user_code(wrapped):
            # A decorated function of yours (functools.lru_cache, say) would pickle by
            # name alone: its code counts.
            return _ref, ("wrapper", type(obj).__qualname__, self.walker.function(wrapped))
        module = getattr(obj, "__module__", None)
        if isinstance(module, str) and not codebase.is_user_module(module) and _importable(obj):
            # A library's callable that pickles by name (a numpy ufunc): its version counts.
            return _ref, ("library callable", module, obj.__qualname__, codebase.version(module))
        return NotImplemented

    def _code(self, obj: FunctionType | type) -> tuple[Callable[..., None], tuple[Any, ...]]:
        """A function or class: yours by its digest, a library's by name and version."""
        if isinstance(obj, FunctionType):
            if _is_user_code(obj) or not _importable(obj):
                return _ref, ("function", self.walker.function(obj))
        elif codebase.is_user_module(obj.__module__) or not _importable(obj):
            return _ref, ("class", self.walker.cls(obj))
        kind = "library function" if isinstance(obj, FunctionType) else "library class"
        return _ref, (kind, obj.__module__, obj.__qualname__, codebase.version(obj.__module__))


class _Canonical(_Overrides, pickle.Pickler):
    """The fast (C) canonical pickler."""

    def __init__(self, out: io.BytesIO, walker: Walker, buffer_callback: Callable[[Any], None]) -> None:
        super().__init__(out, protocol=5, buffer_callback=buffer_callback)
        self.walker = walker


class _SortedCanonical(_Overrides, pickle._Pickler):
    """The Python pickler (which lets sets be saved our way) with the same overrides:
    a set is saved as its elements' digests, sorted."""

    dispatch: dict[type, Any] = dict(pickle._Pickler.dispatch)  # type: ignore[misc]

    def __init__(self, out: io.BytesIO, walker: Walker, buffer_callback: Callable[[Any], None]) -> None:
        pickle._Pickler.__init__(self, out, protocol=5, buffer_callback=buffer_callback)
        self.walker = walker

    def _save_set(self, obj: set[Any] | frozenset[Any]) -> None:
        digests = sorted(self.walker.value(x) for x in obj)
        self.save_reduce(_sorted_set, (type(obj).__name__, digests), obj=obj)  # type: ignore[attr-defined]

    dispatch[set] = _save_set
    dispatch[frozenset] = _save_set


def _is_user_code(f: FunctionType) -> bool:
    return codebase.is_user_module(f.__module__ or "") or f.__module__ not in sys.modules


def _importable(obj: Any) -> bool:
    """Whether pickle can find `obj` by its module and name (no lambda, no local)."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    target: Any = module
    for part in getattr(obj, "__qualname__", "<>").split("."):
        target = getattr(target, part, None)
    return target is obj


def _global_names(code: CodeType) -> list[str]:
    """The global names a function's code (and the code nested in it) reads, sorted."""
    names: set[str] = set()
    todo = [code]
    while todo:
        current = todo.pop()
        for ins in dis.get_instructions(current):
            if ins.opname in _GLOBAL_OPS:
                names.add(ins.argval)
        todo += [c for c in current.co_consts if isinstance(c, CodeType)]
    return sorted(names)


def _cell_contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return "(empty cell)"


def _unwrap(attr: Any) -> Any:
    """The function inside a staticmethod, classmethod or property."""
    if isinstance(attr, staticmethod | classmethod):
        return attr.__func__
    if isinstance(attr, property):
        return (attr.fget, attr.fset, attr.fdel)
    if isinstance(attr, functools.cached_property):
        return attr.func  # (it holds a lock, which nothing can pickle)
    return attr
