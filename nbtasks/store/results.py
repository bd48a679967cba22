"""Store operations that read a job back: results in input order, failures, inputs, and
the output stream of what its tasks printed and logged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

from ..codec import Raw
from ..errors import PayloadLost, PayloadRejected
from ..output import KEEP, Output, OutputLine
from ..trust import FAILURE, RESULT
from . import payloads
from .base import StoreBase


class ResultOps(StoreBase):
    def results(self, job: str, indices: Sequence[int]) -> Iterator[bytes | Raw | PayloadLost | None]:
        """The result pickles (or Raw bytes, see codec.Raw) of `indices`, in their order, read in pipelined batches;
        None for one not recorded, PayloadLost for one whose bytes outside Redis are
        missing or altered; PayloadRejected raised at the first that fails its signature."""
        stored = self._items(self.keys[job].results, indices)
        for opened in payloads.unseal_all(self.signer, job, RESULT, indices, stored):
            yield from cast("list[bytes | Raw | PayloadLost | None]", opened)  # (other rejections raise)

    def forget_results(self, job: str, indices: Sequence[int]) -> None:
        """Drop results that cannot be read back (see PayloadLost): their items run again."""
        if indices:
            k = self.keys[job]
            self._forget(keys=[k.done, k.results], args=list(indices))

    def failures(self, job: str) -> dict[int, bytes]:
        raw = self.client.hgetall(self.keys[job].failures).items()
        return {int(i): self.signer.open(job, int(i), FAILURE, p) for i, p in raw}

    def inputs(self, job: str, indices: list[int]) -> list[bytes | PayloadRejected | None]:
        """Inputs by index (to show with failures); one whose signature fails comes as
        the PayloadRejected error."""
        stored = list(self._items(self.keys[job].inputs, indices))
        opened = self._open_inputs(job, list(zip(indices, stored, strict=True)))
        return [p if s is not None else None for p, s in zip(opened, stored, strict=True)]

    def append_output(self, job: str, wid: str, lines: list[tuple[int, str, str]]) -> None:
        """Lines tasks wrote (item, stream, text); the job keeps the last KEEP."""
        key = self.keys[job].output
        pipe = self.client.pipeline(transaction=False)
        for index, stream, text in lines:
            pipe.xadd(key, {"i": index, "s": stream, "t": text, "w": wid}, maxlen=KEEP, approximate=True)
        pipe.execute()

    def output(self, job: str, last: int | None = None) -> Output:
        """The job's kept output, oldest first (only the `last` lines, if given)."""
        key = self.keys[job].output
        entries = self.client.xrevrange(key, count=last)[::-1] if last else self.client.xrange(key)
        found = Output(_output_line(entry_id, fields) for entry_id, fields in entries)
        found.cursor = entries[-1][0].decode() if entries else "0-0"
        return found

    def output_cursor(self, job: str) -> str:
        """Where the job's output ends now: `output_since` from here reads what follows."""
        last = self.client.xrevrange(self.keys[job].output, count=1)
        return last[0][0].decode() if last else "0-0"

    def output_since(self, job: str, cursor: str, count: int) -> tuple[list[OutputLine], str]:
        """Up to `count` lines after `cursor`, and the cursor after them."""
        reply = self.client.xread({self.keys[job].output: cursor}, count=count)
        entries = reply[0][1] if reply else []
        lines = [_output_line(entry_id, fields) for entry_id, fields in entries]
        return lines, (entries[-1][0].decode() if entries else cursor)

    def wait_output(self, job: str, cursor: str, timeout: float) -> None:
        """Return once the job's output has lines after `cursor`, or after `timeout` s."""
        self.client.xread({self.keys[job].output: cursor}, count=1, block=max(1, int(timeout * 1000)))


def _output_line(entry_id: bytes, fields: dict[bytes, bytes]) -> OutputLine:
    text = fields.get(b"t", b"").decode("utf-8", errors="replace")
    index = int(fields.get(b"i", b"-1"))
    when = int(entry_id.split(b"-")[0]) / 1000
    return OutputLine(index, fields.get(b"s", b"out").decode(), text, fields.get(b"w", b"").decode(), when)
