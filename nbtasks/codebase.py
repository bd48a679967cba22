"""Whose code is it: the user's own modules (``__main__``, files outside the standard
library and site-packages), which identity follows by their code, and installed
libraries, which count by name and version."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import site
import sys
import sysconfig
from types import FunctionType, ModuleType

from . import codec

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def is_user_module(name: str) -> bool:
    """Whether module `name` is the user's own code: ``__main__``, or a file outside the
    standard library and site-packages (nbtasks itself excepted)."""
    return _user_module(name, getattr(sys.modules.get(name), "__file__", None))


@functools.lru_cache(maxsize=4096)
def _user_module(name: str, file: str | None) -> bool:
    top = name.partition(".")[0]
    if name == "__main__" or name.startswith("__mp_main__"):
        return True
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or not file:
        return False
    path = os.path.realpath(file)
    if path.startswith(_PACKAGE):
        return False
    parts = path.split(os.sep)
    return "site-packages" not in parts and "dist-packages" not in parts and not path.startswith(_library_dirs())


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


@functools.lru_cache(maxsize=1024)
def version(module: str) -> str:
    """The installed version a library module comes from: its distribution's name and
    version, or the Python version for the standard library."""
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"python {sys.version_info.major}.{sys.version_info.minor}"
    found = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(found, str):
        return f"{top} {found}"
    for dist in [top, *_distributions().get(top, [])]:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{top} (no version)"


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())  # a scan of every installed package: once


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, *stat: int) -> str:  # (cached while the file's stat is the same)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_form(module: ModuleType) -> str:
    """The digest of a module's file, as a fresh worker would import it."""
    file = getattr(module, "__file__", None)
    if not file:
        return "(no file)"
    try:
        stat = os.stat(file)
        return _file_digest(file, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    except OSError:
        return "(unreadable)"


def modules_reached(module: ModuleType) -> list[str]:
    """The other modules of the user's own a module refers to: those it imported, and
    those of the functions and classes it imported from them."""
    found = set()
    for value in list(vars(module).values()):
        if isinstance(value, ModuleType):
            found.add(value.__name__)
        elif isinstance(value, FunctionType | type):
            found.add(getattr(value, "__module__", None) or "")
    found.discard(module.__name__)
    return sorted(name for name in found if name in sys.modules and by_reference(name))


def by_reference(module: str) -> bool:
    """Whether code of `module` is the user's own and travels to workers by name (so
    that workers run its file, whatever this process holds in memory)."""
    return module != "__main__" and is_user_module(module) and not codec.shipped(module)
