"""Task output: what tasks print, warn and log, captured in the worker, kept per job in
the store, and shown in the caller under the progress bar.

In a worker, `sys.stdout` and `sys.stderr` are streams that split what is written into
lines and mark each with the item that wrote it: a context variable set when an item
begins (green threads, OS threads and asyncio tasks each have their own). Log records
go through one handler on the root logger, formatted as the caller's logging is (see
`logging_config`). Lines wait in memory and go to the job's output stream in batches,
always before the results of the items that wrote them; a line is cut at LINE_MAX
characters, and the store keeps the last KEEP lines of a job.

`nbtasks.logger` is a standard `logging.Logger` set to DEBUG, for tasks that log the way
tasks.py's example did: its records from tasks land in the job's output.
"""

from __future__ import annotations

import io
import logging
import sys
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .store import Store

LINE_MAX = 2000  # characters of one line kept; the rest is counted
KEEP = 10_000  # lines of output the store keeps per job (oldest trimmed first)
PENDING_MAX = 10_000  # lines a worker holds while the store is slower than its tasks
TAIL = 40  # lines of an attempt's own output that a Failure carries
SHOW = 200  # lines a run shows in the caller before it only counts them

logger = logging.getLogger("nbtasks")
logger.setLevel(logging.DEBUG)

ITEM: ContextVar[int] = ContextVar("nbtasks_item", default=-1)  # -1: not a task's line


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One line a task wrote: its item (-1 for the worker's own), the stream ("out",
    "err" or "log"), the text, the worker and when (seconds since the epoch)."""

    index: int
    stream: str
    text: str
    worker: str = ""
    time: float = 0.0

    def __str__(self) -> str:
        where = f"item {self.index}" if self.index >= 0 else "worker"
        return f"[{where}] {self.text}"

    @property
    def to_stderr(self) -> bool:
        return self.stream != "out"


class Output(list[OutputLine]):
    """A job's kept output (`Job.logs()`), oldest first; shows as its lines."""

    cursor = "0-0"  # where in the store's stream these lines end (to follow on from there)

    def __str__(self) -> str:
        return "\n".join(map(str, self))

    def __repr__(self) -> str:
        return str(self) if self else "(no output)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# -- the worker's side --------------------------------------------------------------


class Collector:
    """Complete lines waiting to be sent, and the last lines of each running item."""

    def __init__(self) -> None:
        self.pending: deque[tuple[int, str, str]] = deque()  # appends and pops are atomic
        self.dropped = 0
        self.tails: dict[int, deque[str]] = {}
        self.partial: dict[tuple[int, str], str] = {}  # (item, stream) -> a line not ended yet

    def write(self, stream: str, text: str) -> None:
        """Text written by whatever runs now: complete lines are kept, the rest waits."""
        index = ITEM.get()
        key = (index, stream)
        text = self.partial.pop(key, "") + text
        *lines, rest = text.split("\n")
        for line in lines:
            self.add(index, stream, line)
        if len(rest) > LINE_MAX:
            self.add(index, stream, rest)  # a line that never ends is cut here
        elif rest:
            self.partial[key] = rest

    def add(self, index: int, stream: str, line: str) -> None:
        if len(line) > LINE_MAX:
            line = f"{line[:LINE_MAX]}... ({len(line) - LINE_MAX:,} more characters)"
        if len(self.pending) < PENDING_MAX:
            self.pending.append((index, stream, line))
        else:
            self.dropped += 1  # a flood: the store cannot keep up; the count says so
        if index >= 0:
            tail = self.tails.get(index)
            if tail is None:
                tail = self.tails[index] = deque(maxlen=TAIL)
            tail.append(line)

    def finish(self, index: int) -> str:
        """Item `index` ended: its unfinished lines are sent; its last lines returned."""
        for stream in ("out", "err"):
            if (rest := self.partial.pop((index, stream), None)) is not None:
                self.add(index, stream, rest)
        return "\n".join(self.tails.pop(index, ()))

    def take(self, limit: int = 1000) -> list[tuple[int, str, str]]:
        lines: list[tuple[int, str, str]] = []
        while self.pending and len(lines) < limit:
            lines.append(self.pending.popleft())
        if self.dropped and len(lines) < limit:
            dropped, self.dropped = self.dropped, 0
            lines.append((-1, "err", f"nbtasks: {dropped:,} lines of output dropped (written faster than stored)"))
        return lines


class TaskStream(io.TextIOBase):
    """`sys.stdout` or `sys.stderr` of a worker: lines go to the collector."""

    def __init__(self, collector: Collector, stream: str, original: TextIO) -> None:
        self.collector, self.stream, self.original = collector, stream, original
        self.buffer = _Bytes(self)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if ITEM.get() < 0:
            self.original.write(text)  # the worker's own words stay in its log file too
            self.original.flush()
        self.collector.write(self.stream, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "replace"

    def close(self) -> None:
        pass  # a task that closes sys.stdout must not end the output of the others


class _Bytes(io.RawIOBase):
    """`sys.stdout.buffer`: bytes written there are decoded as UTF-8."""

    def __init__(self, text: TaskStream) -> None:
        self.text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.text.write(bytes(data).decode("utf-8", errors="replace"))
        return len(data)


class TaskLogHandler(logging.Handler):
    """The worker's one logging handler: each record's formatted lines, marked with
    the item that logged it."""

    def __init__(self, collector: Collector) -> None:
        super().__init__()
        self.collector = collector

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 (logging's own convention)
            self.handleError(record)
            return
        for line in text.split("\n"):
            self.collector.add(ITEM.get(), "log", line)


def capture() -> Collector:
    """Route this worker's stdout, stderr, warnings and log records to a collector."""
    collector = Collector()
    sys.stdout = TaskStream(collector, "out", sys.__stdout__ or sys.stdout)
    sys.stderr = TaskStream(collector, "err", sys.__stderr__ or sys.stderr)  # warnings write here
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(TaskLogHandler(collector))
    return collector


_STYLES: dict[type[Any], str] = {
    logging.PercentStyle: "%",
    logging.StrFormatStyle: "{",
    logging.StringTemplateStyle: "$",
}


def logging_config() -> dict[str, Any]:
    """What of the caller's logging a worker takes on: the root logger's level, the
    format of its first handler, and the levels set on named loggers. Handlers, filters
    and formatter classes stay behind."""
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    levels = {
        name: lg.level
        for name, lg in list(logging.Logger.manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET
    }
    return {
        "level": root.level,
        "format": getattr(formatter, "_fmt", None) or logging.BASIC_FORMAT,
        "datefmt": getattr(formatter, "datefmt", None),
        "style": _STYLES.get(type(getattr(formatter, "_style", None)), "%"),
        "levels": levels,
    }


def apply_logging(config: dict[str, Any]) -> None:
    """Take on the caller's logging (see `logging_config`) in a worker."""
    root = logging.getLogger()
    root.setLevel(config.get("level", logging.WARNING))
    style = config.get("style", "%")
    if style not in ("%", "{", "$"):
        style = "%"
    formatter = logging.Formatter(config.get("format") or logging.BASIC_FORMAT, config.get("datefmt"), style)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    for name, level in config.get("levels", {}).items():
        logging.getLogger(name).setLevel(level)


# -- the caller's side --------------------------------------------------------------


class Echo:
    """Shows a run's task output in the caller as it arrives: the first SHOW lines,
    then a count of the rest and where to read them."""

    BATCH = 1000

    def __init__(self, store: Store, job: str, write: Callable[[str, bool], None], cursor: str) -> None:
        self.store, self.job, self.write = store, job, write
        self.cursor = cursor  # where the job's output ended before this run (see Store.output_cursor)
        self.shown = self.hidden = 0

    def pump(self) -> None:
        """Show what arrived since the last call."""
        while True:
            lines, self.cursor = self.store.output_since(self.job, self.cursor, self.BATCH)
            for line in lines:
                if self.shown < SHOW:
                    self.write(str(line), line.to_stderr)
                    self.shown += 1
                else:
                    self.hidden += 1
            if len(lines) < self.BATCH:
                return

    def close(self) -> None:
        if self.hidden:
            self.write(
                f"nbtasks: {self.hidden:,} more lines of output not shown; job.logs() or "
                f"`nbtasks logs {self.job}` shows the last {KEEP:,} lines of the job.",
                True,
            )
