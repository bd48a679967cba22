"""Counters -> a `tqdm.auto` bar: a widget in Jupyter, text in a terminal.

The bar counts successful results; failures show beside it, so a job that ends with
failures stops short of 100 % and tqdm draws it red.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

from . import screen
from .store import Counts

if TYPE_CHECKING:
    from tqdm.notebook import tqdm_notebook


def in_notebook() -> bool:
    """True in a Jupyter kernel with ipywidgets, where tqdm.auto draws widgets."""
    try:
        from tqdm.notebook import tqdm_notebook
    except ImportError:
        return False
    return issubclass(tqdm, tqdm_notebook)


class Progress:
    """The bar of one run. `shared`: a background run's, which shares a terminal with
    the program's own prints (see `screen`)."""

    def __init__(self, job: str, start: Counts, enabled: bool = True, shared: bool = False) -> None:
        self._trouble = (0, 0)
        self._stopped = False
        self._desc = job
        self._handle: Any = None
        options: dict[str, Any] = dict(
            total=start.total, initial=start.done, desc=job, unit="task", disable=not enabled, dynamic_ncols=True
        )
        self.bar: std_tqdm[Any]
        self._widget: tqdm_notebook[Any] | None = None  # the bar, when it is a widget
        if enabled and in_notebook():
            from IPython.display import display
            from tqdm.notebook import tqdm_notebook

            # Shown through a display handle, so that close() can replace the plain-text
            # copy that notebook viewers fall back to (frozen at "0%" otherwise).
            self.bar = self._widget = tqdm_notebook(**options, display=False)
            self._handle = display(self._widget.container, display_id=True)  # type: ignore[no-untyped-call]
        else:
            self._shared = shared and enabled
            self.bar = tqdm(**options, file=screen.real(sys.stderr))
            if self._shared:
                screen.add(self)

    _shared = False

    def update(self, counts: Counts) -> None:
        with screen.lock:
            draw = not (self._shared and screen.held)
            trouble = (counts.failed, counts.retrying)
            if trouble != self._trouble:
                self._trouble = trouble
                shown = {"failed": counts.failed, "retrying": trouble[1]}
                # Drawn now when no result moves the bar: a job whose items all fail must say so.
                self.bar.set_postfix({k: v for k, v in shown.items() if v}, refresh=draw and counts.done <= self.bar.n)
            if counts.done > self.bar.n:
                if draw:
                    self.bar.update(counts.done - self.bar.n)
                else:
                    self.bar.n = counts.done  # drawn once the program's unfinished line ends

    def hide(self) -> None:
        self.bar.clear()

    def show(self) -> None:
        if self._closing:
            self._closing = False
            self.close()
        else:
            self.bar.refresh()

    def write(self, text: str, to_stderr: bool = False) -> None:
        """A line of the tasks' output, under the bar (a terminal bar is redrawn below it)."""
        out = sys.stderr if to_stderr else sys.stdout
        if self._handle is None and not self.bar.disable:
            self.bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    def note(self, text: str | None) -> None:
        """Show (or, with None, clear) a word on the bar, e.g. during a Redis outage."""
        self.bar.set_description(f"{self._desc} ({text})" if text else self._desc)

    def stopped(self) -> None:
        """Mark the bar as stopped (interrupted or cancelled): not the red of a failure."""
        self._stopped = True
        self.note("stopped")

    _closing = False
    _closed = False

    def close(self) -> None:
        """Draw the last state and let go of the bar (again: nothing more)."""
        with screen.lock:
            if self._closed:
                return
            if self._shared and screen.held:
                self._closing = True  # its last state is drawn below the program's line, once it ends
                return
            self._closed = True
            self.bar.close()
        if self._shared:
            screen.remove(self)
        if self._widget is None:
            return
        if self._stopped:
            self._widget.disp(bar_style="warning", check_delay=False)  # tqdm paints a short bar red
        bundle = self._widget.container._repr_mimebundle_()
        bundle["text/plain"] = repr(self._widget.container)
        self._handle.update(bundle, raw=True)
