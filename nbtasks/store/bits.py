"""Bitmaps and packed indices: the done-bitmap read in the caller, and the index lists
of a call's view; plus the batching of items into pipelined round trips."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

BATCH = 10_000  # items per pipelined round trip when storing or gathering
BATCH_BYTES = 16 << 20  # bytes of inputs or results per round trip (one command, one buffer)


def pending_indices(bitmap: bytes, total: int) -> Iterator[int]:
    """Indices below `total` whose bit is clear (Redis numbers bits from the high end)."""
    for byte_no in range(0, (total + 7) // 8):
        byte = bitmap[byte_no] if byte_no < len(bitmap) else 0
        if byte == 0xFF:
            continue
        base = byte_no * 8
        for bit in range(8):
            if not byte & (0x80 >> bit) and base + bit < total:
                yield base + bit


def count_bits(bitmap: bytes, start: int, stop: int) -> int:
    """How many bits of `bitmap` are set in [start, stop)."""
    if stop <= start:
        return 0
    first, last = start >> 3, (stop + 7) >> 3
    value = int.from_bytes(bitmap[first:last].ljust(last - first, b"\0"), "big")
    value >>= (-stop) & 7  # the bits past `stop` in the last byte
    return (value & ((1 << (stop - start)) - 1)).bit_count()  # and those before `start`


def done_bits(bitmap: bytes, indices: Iterable[int]) -> list[bool]:
    """Per index, whether its bit is set in `bitmap`."""
    size = len(bitmap)
    return [(i >> 3) < size and bool(bitmap[i >> 3] & (0x80 >> (i & 7))) for i in indices]


def done_and_pending(bitmap: bytes, indices: Sequence[int]) -> tuple[int, Iterator[int]]:
    """How many of `indices` have their bit set in `bitmap`, and the others, lazily. A
    range (a new job's list, a script's job) is counted without a look at each index."""
    if isinstance(indices, range):
        pending = (i for i in pending_indices(bitmap, indices.stop) if i >= indices.start)
        return count_bits(bitmap, indices.start, indices.stop), pending
    bits = done_bits(bitmap, indices)
    return sum(bits), (i for i, done in zip(indices, bits, strict=True) if not done)


def pack(indices: Iterable[int]) -> bytes:
    """Indices as 4-byte little-endian integers (a list of a million: 4 MB)."""
    packed = array("I", indices)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack(data: bytes) -> array[int]:
    packed = array("I")
    packed.frombytes(data)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed


def batches(items: Iterable[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    """(offset, up to `size` items) from any iterable, without holding more."""
    batch: list[Any] = []
    offset = 0
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield offset, batch
            offset, batch = offset + size, []
    if batch:
        yield offset, batch


def by_bucket(digests: list[bytes], level: int, split: int) -> dict[int, list[int]]:
    """The positions of `digests` by the index bucket each lives in (as index.ADD places them)."""
    buckets: dict[int, list[int]] = {}
    for i, digest in enumerate(digests):
        h = int.from_bytes(digest[:4], "big")
        at = h % (1 << level)
        buckets.setdefault(h % (2 << level) if at < split else at, []).append(i)
    return buckets


def byte_batches(count: int, payload: Callable[[int], bytes], most: int = BATCH) -> Iterator[tuple[int, list[bytes]]]:
    """(first position, payloads) of the `count` payloads, made as they are needed, in
    batches of at most `most` and about BATCH_BYTES."""
    batch: list[bytes] = []
    size = start = 0
    for i in range(count):
        data = payload(i)
        if batch and (len(batch) == most or size + len(data) > BATCH_BYTES):
            yield start, batch
            batch, size, start = [], 0, i
        batch.append(data)
        size += len(data)
    if batch:
        yield start, batch
