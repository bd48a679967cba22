"""A worker's beacon: 16 bytes of shared memory (a file its caller maps too) holding
when the worker's event loop last ran and which item is executing.

A task stuck in CPU or C code never yields, so the loop stops ticking while the item
index stays put: the caller, which runs no user code, reads both and knows which item
to time out. Redis cannot tell this: a blocked worker cannot write to it.
"""

from __future__ import annotations

import mmap
import struct
import time
from pathlib import Path

_LAYOUT = struct.Struct("<dq")  # loop tick (time.monotonic, system-wide), item index or -1
IDLE = -1


class Beacon:
    def __init__(self, path: Path, create: bool = False) -> None:
        if create:
            path.write_bytes(_LAYOUT.pack(time.monotonic(), IDLE))
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), _LAYOUT.size)

    def tick(self) -> None:
        """The worker's event loop is alive."""
        struct.pack_into("<d", self._map, 0, time.monotonic())

    def running(self, index: int) -> None:
        """The worker switched to the task of `index` (IDLE: to no task)."""
        struct.pack_into("<q", self._map, 8, index)

    def read(self) -> tuple[float, int]:
        """Seconds since the worker's loop last ran, and the item it is executing."""
        tick, index = _LAYOUT.unpack_from(self._map, 0)
        return time.monotonic() - tick, index

    def close(self) -> None:
        self._map.close()
