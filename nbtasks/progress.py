"""Counters -> a `tqdm.auto` bar: a widget in Jupyter, text in a terminal.

The bar counts successful results; failures show beside it, so a job that ends with
failures stops short of 100 % and tqdm draws it red.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from .store import Counts


class Progress:
    def __init__(self, job: str, start: Counts, enabled: bool = True) -> None:
        self._failed = 0
        self.bar = tqdm(
            total=start.total,
            initial=start.done,
            desc=job,
            unit="task",
            disable=not enabled,
            dynamic_ncols=True,
        )

    def update(self, counts: Counts) -> None:
        if counts.failed != self._failed:
            self._failed = counts.failed
            self.bar.set_postfix(failed=counts.failed, refresh=False)
        if counts.done > self.bar.n:
            self.bar.update(counts.done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
