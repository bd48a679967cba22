"""The live status dashboard: ipywidgets that render `status` snapshots, refreshed by a
background thread about once a second while anything changes, so the kernel stays free.

Imported only inside a Jupyter kernel.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import ipywidgets as w
from IPython.display import display

from .errors import Failure, RedisUnavailable
from .job_status import JobStatus, duration, keys_text, size_text, snapshots, table
from .store import Store


class Actions(Protocol):
    """What the buttons of a job's row do (`job.dashboard` gives the real ones)."""

    def cancel(self, name: str) -> None: ...
    def retry(self, name: str) -> None: ...
    def delete(self, name: str) -> None: ...
    def failures(self, name: str) -> list[Failure]: ...


STYLE = {"running": "info", "finished": "success", "failed": "danger", "stopped": "warning"}


class JobRow:
    """The widgets of one job: name, bar, numbers, and its actions."""

    def __init__(self, dashboard: Dashboard, name: str) -> None:
        self.dashboard, self.name = dashboard, name
        self.title = w.HTML(layout=w.Layout(width="28%"))
        self.bar = w.IntProgress(min=0, layout=w.Layout(width="25%"))
        self.numbers = w.HTML(layout=w.Layout(width="47%"))
        self.cancel = w.Button(description="Cancel", icon="stop", tooltip="Stop the run; results are kept")
        self.retry = w.Button(description="Retry failed", icon="redo", tooltip="Run what has no result yet")
        self.delete = w.Button(description="Delete", icon="trash", tooltip="Delete the job and its results")
        self.show_failures = w.ToggleButton(description="Failures", icon="list")
        self.sure = w.Button(description="Yes, delete it", button_style="danger")
        self.not_sure = w.Button(description="No")
        self.confirm = w.HBox([w.Label(f"Delete {name} and all its results?"), self.sure, self.not_sure])
        self.confirm.layout.display = "none"
        self.failures = w.HTML()
        actions = dashboard.actions
        self.cancel.on_click(lambda _: self._act(actions.cancel, name))
        self.retry.on_click(lambda _: self._act(actions.retry, name))
        self.delete.on_click(lambda _: self._ask(True))
        self.not_sure.on_click(lambda _: self._ask(False))
        self.sure.on_click(lambda _: self._act(actions.delete, name))
        self.show_failures.observe(lambda _: self._render_failures(), "value")
        buttons = w.HBox([self.cancel, self.retry, self.delete, self.show_failures])
        self.widget = w.VBox([w.HBox([self.title, self.bar, self.numbers]), buttons, self.confirm, self.failures])

    def update(self, s: JobStatus) -> None:
        self.title.value = f"<b>{html.escape(s.name)}</b><br><code>{html.escape(s.function)}</code>"
        self.bar.max, self.bar.value, self.bar.bar_style = max(s.total, 1), s.done, STYLE[s.state]
        eta = f", ETA {duration(s.eta)}" if s.eta is not None else ""
        rate = f"{s.rate:,.1f}/s" if s.rate else "-"
        self.numbers.value = (
            f"<b>{s.state}</b>: {s.done}/{s.total} done, {s.failed} failed, {s.retrying} retrying, "
            f"{s.pending} pending, {s.running} running; {s.workers} workers, {rate}{eta}; "
            f"age {duration(s.age)}, {size_text(s.size)} stored"
        )
        if keys := keys_text(s):  # under per-key limits: the busiest keys, those backing off
            self.numbers.value += "".join(f"<br>{html.escape(line)}" for line in keys.splitlines())
        self.cancel.disabled = s.state != "running"
        self.retry.disabled = s.state == "running" or s.done == s.total
        self.delete.disabled = s.state == "running"
        self.show_failures.disabled = s.failed == 0
        self.show_failures.description = f"Failures ({s.failed})"

    def _ask(self, show: bool) -> None:
        self.confirm.layout.display = "flex" if show else "none"

    def _act(self, action: Any, *args: Any) -> None:
        self._ask(False)
        action(*args)
        self.dashboard.refresh()
        self.dashboard.start()

    def _render_failures(self) -> None:
        if not self.show_failures.value:
            self.failures.value = ""
            return
        items = self.dashboard.actions.failures(self.name)[:20]
        self.failures.value = "".join(
            f"<details><summary>{html.escape(str(f))}</summary><pre>{html.escape(f.traceback)}</pre></details>"
            for f in items
        )


class Dashboard:
    """Every job (or the named ones) as live widgets. `rows` maps job name -> JobRow."""

    def __init__(
        self, store: Store, actions: Actions, names: Sequence[str] | None = None, interval: float = 1.0
    ) -> None:
        self.store, self.actions, self.names, self.interval = store, actions, names, interval
        self.rows: dict[str, JobRow] = {}
        self.snapshots: list[JobStatus] = []
        self.empty = w.HTML("No jobs yet: <code>nbtasks.pmap(func, items)</code> creates one.")
        self.widget = w.VBox()
        self._handle: Any = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> bool:
        """Take new snapshots and update the widgets; whether anything changed."""
        with self._lock:
            fresh = snapshots(self.store, self.names)
            changed = [_without_clock(s) for s in fresh] != [_without_clock(s) for s in self.snapshots]
            self.snapshots = fresh
            for s in fresh:
                if s.name not in self.rows:
                    self.rows[s.name] = JobRow(self, s.name)
                self.rows[s.name].update(s)
            names = {s.name for s in fresh}
            for gone in set(self.rows) - names:
                del self.rows[gone]
            rows = [self.rows[s.name].widget for s in fresh]
            self.widget.children = rows or [self.empty]
            return changed

    def show(self) -> None:
        self._handle = display(self.widget, display_id=True)  # type: ignore[no-untyped-call]
        self._set_text()
        self.start()

    def start(self) -> None:
        """Refresh in the background until nothing runs and nothing changes."""
        if self._thread is None or not self._thread.is_alive():
            self._halt.clear()
            self._thread = threading.Thread(target=self._loop, name="nbtasks status", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop refreshing (the widgets keep their last state)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        quiet = 0
        while quiet < 3 and not self._halt.wait(self.interval):
            try:
                changed = self.refresh()
            except RedisUnavailable as exc:  # the server went away: say so, and stop refreshing
                self.empty.value = f"Lost Redis ({html.escape(str(exc))}); run nbtasks.status() again."
                self.widget.children = [self.empty]
                return
            busy = changed or any(s.state == "running" for s in self.snapshots)
            quiet = 0 if busy else quiet + 1
        self._set_text()

    def _set_text(self) -> None:
        # The plain-text copy is what notebook viewers show: keep it at the last state.
        if self._handle is not None:
            bundle = self.widget._repr_mimebundle_()
            bundle["text/plain"] = table(self.snapshots)
            self._handle.update(bundle, raw=True)

    def _ipython_display_(self) -> None:
        if self._handle is None:
            self.show()


def _without_clock(s: JobStatus) -> tuple[Any, ...]:
    return (s.name, s.total, s.done, s.failed, s.running, s.retrying, s.state, s.workers, s.busiest, s.backing_off)
