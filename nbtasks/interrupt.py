"""What an interrupted call leaves behind: a KeyboardInterrupt whose traceback ends in the
caller's own code, and a stop that a second press of the stop button cannot cut short.

The interrupt itself lands wherever the caller's thread waits (often inside redis-py's
reply parser); those frames say nothing to the user, whose question is only "where was I".
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def shortened(call: Callable[P, R]) -> Callable[P, R]:
    """`call`, raising `short()` in place of any KeyboardInterrupt from inside it."""

    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except KeyboardInterrupt:
            raise short() from None

    return wrapper


def short() -> KeyboardInterrupt:
    """A KeyboardInterrupt to raise (``from None``) from a public call. In IPython its
    traceback shows the caller's frames only, up to the line that called nbtasks; it is a
    plain KeyboardInterrupt everywhere else."""
    stop = KeyboardInterrupt()
    # IPython renders an exception through this hook when it has one (an instance
    # attribute keeps the type a true KeyboardInterrupt: ename, except clauses, exit codes).
    stop._render_traceback_ = functools.partial(_render, stop)  # type: ignore[attr-defined]
    _trim_uncaught()
    return stop


def _trim_uncaught() -> None:
    """Outside IPython an uncaught exception is printed by sys.excepthook: have it print
    our KeyboardInterrupts with the caller's frames only (other exceptions as before)."""
    previous = sys.excepthook
    if getattr(previous, "nbtasks", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, KeyboardInterrupt) and hasattr(value, "_render_traceback_"):
            tb = callers_part(tb)
            value.__traceback__ = tb  # (the default hook prints the exception's own traceback)
        previous(kind, value, tb)

    hook.nbtasks = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _render(stop: KeyboardInterrupt) -> list[str]:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("not in IPython")  # IPython then falls back to the full traceback
    rendered: list[str] = shell.InteractiveTB.structured_traceback(
        KeyboardInterrupt, stop, callers_part(stop.__traceback__)
    )
    return rendered


def callers_part(tb: TracebackType | None) -> TracebackType | None:
    """A copy of `tb` without IPython's frames before the caller's and without nbtasks'
    frames (and whatever they called) after it."""
    kept: list[TracebackType] = []
    while tb is not None:
        if _ours(tb.tb_frame):
            break
        if kept or not _ipython(tb.tb_frame):
            kept.append(tb)
        tb = tb.tb_next
    copy = None
    for entry in reversed(kept):
        copy = TracebackType(copy, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return copy


def _ours(frame: FrameType) -> bool:
    return frame.f_code.co_filename.startswith(PACKAGE)


def _ipython(frame: FrameType) -> bool:
    return str(frame.f_globals.get("__name__", "")).startswith("IPython.")


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT while workers stop and the run is closed, so that pressing the stop
    button again cannot leave workers running; a press meanwhile takes effect after,
    unless an interrupt is already on its way up."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # (only the main thread may set handlers; None: one we could not put back)
        return
    pressed: list[Any] = []
    signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed and callable(previous):
        previous(signal.SIGINT, None)
