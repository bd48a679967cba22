"""A terminal shared by background progress bars and the program's own output.

A background job's text bar is redrawn by a thread while the program goes on printing; a
bar ends with a carriage return, not a newline, so a print would land on the bar's row.
While such bars are shown, ``sys.stdout`` and ``sys.stderr`` pass what is written on a
whole line at a time, with the bars cleared first and drawn again below it. A line left
unfinished and flushed (a prompt) keeps the bars hidden until it ends.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Protocol, TextIO


class Bar(Protocol):
    def hide(self) -> None: ...
    def show(self) -> None: ...


lock = threading.RLock()  # held while a bar draws and while a line goes out
_bars: list[Bar] = []
_streams: dict[str, LineStream] = {}
held = False  # an unfinished line is on the bars' row: draw nothing until it ends


class LineStream:
    """Stands in for sys.stdout or sys.stderr while background bars are shown."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        with lock:
            self._pending += text
            head, newline, self._pending = self._pending.rpartition("\n")
            if newline:
                _out(self.stream, head + newline, finished=True)
        return len(text)

    def flush(self) -> None:
        with lock:
            if self._pending:
                text, self._pending = self._pending, ""
                _out(self.stream, text, finished=False)
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # encoding, fileno(), isatty()...


def _out(stream: TextIO, text: str, finished: bool) -> None:
    global held
    if not held:
        for bar in _bars:
            bar.hide()
    stream.write(text)
    stream.flush()
    held = not finished
    if finished:
        for bar in list(_bars):  # (a bar closed meanwhile is drawn a last time, and leaves)
            bar.show()


def real(stream: TextIO) -> TextIO:
    """The stream under our stand-in: where a bar itself draws."""
    return stream.stream if isinstance(stream, LineStream) else stream


def add(bar: Bar) -> None:
    """Share the terminal with `bar` until `remove(bar)`."""
    with lock:
        _bars.append(bar)
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if not isinstance(current, LineStream) and current is not None:
                _streams[name] = LineStream(current)
                setattr(sys, name, _streams[name])


def remove(bar: Bar) -> None:
    """`bar` is closed; with no bar left, the program writes to its streams directly."""
    global held
    with lock:
        if bar in _bars:
            _bars.remove(bar)
        if _bars:
            return
        for name, stand_in in list(_streams.items()):
            stand_in.flush()
            if getattr(sys, name) is stand_in:  # (unless the program has replaced it since)
                setattr(sys, name, stand_in.stream)
            del _streams[name]
        held = False
