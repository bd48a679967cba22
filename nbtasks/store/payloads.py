"""What Redis holds for an input or a result: the pickle itself, compressed when that
saves space, or, above BLOB_MIN bytes with a place for blobs, a reference to its bytes in a
segment outside Redis (`nbtasks.blobs`); signed in every case when a secret is set.

    stored    = signed(envelope)              (see nbtasks.trust; unsigned without a secret)
    envelope  = pickle                        (starts with b"\\x80")
              | ZSTD + zstd frame of a pickle
              | REF + check + flags + digest + offset + length + root + path
    the bytes at (root, path, offset, length) = a pickle, or ZSTD + frame, or (flag RAW)
                                                 a large bytes result itself (codec.Raw)

The reference carries a digest of the bytes it points to: with a secret their SHA-256, so
that the signature over the reference covers them too; without one (nobody's writes are
checked then) a CRC-32, a third of the cost, which still tells a missing or altered
segment. Either way such bytes are never unpickled.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import itertools
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import zstandard

from .. import codec
from ..blobs import Blobs, Part, configured, open_blobs
from ..codec import Raw
from ..errors import PayloadLost, PayloadRejected
from ..trust import INPUT, Signer

ZSTD, REF = b"NBZ1", b"NBR1"
PICKLE = b"\x80"  # how every pickle nbtasks makes begins (protocol 2 and later)
COMPRESS_MIN = 1024  # smaller pickles rarely shrink by enough to pay for a frame
SAVING = 0.9  # compressed only when it takes at most this share of the bytes
# Bytes after compression from which a payload leaves Redis, when a place for blobs is
# set; benchmarks/bench_threshold.py measures it (NBTASKS_BLOB_MIN changes it).
BLOB_MIN = int(os.environ.get("NBTASKS_BLOB_MIN") or 4 << 10)
SEGMENT_MAX = 64 << 20  # bytes per segment written at once
_HEAD = struct.Struct("<BB32sQQH")  # check, flags, digest, offset, length, length of the root's name
SHA256, CRC32 = 1, 2  # the checks
RAW = 1  # a flag: the bytes are a bytes result itself, not a pickle (see codec.Raw)
GROUP = 1000  # values unsealed at a time by unseal_all
PARALLEL = 8 << 20  # bytes each thread reads and checks at a time, when a batch holds more
SAMPLE = 64 << 10  # a larger pickle is compressed whole only if its start compresses

_local = threading.local()
Opened = bytes | Raw | None | PayloadRejected  # a payload read back: see unseal


class Ref(NamedTuple):
    """A reference, read: where the bytes are and how to check them."""

    root: str
    part: Part
    check: int
    flags: int
    digest: bytes


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    # One pair per thread: zstandard's contexts are not to be shared between threads.
    pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(_local, "pair", None)
    if pair is None:
        pair = _local.pair = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
    return pair


def compress(data: bytes) -> bytes:
    """`data` as an envelope: compressed when that saves enough."""
    if len(data) < COMPRESS_MIN or not _compresses(data):
        return data
    packed = _zstd()[0].compress(data)
    return ZSTD + packed if len(packed) + len(ZSTD) <= SAVING * len(data) else data


def _compresses(data: bytes) -> bool:
    """Whether `data` may compress: for a large one (an image, an archive, random
    bytes), its start tells, at a tenth of the cost of trying it all."""
    return len(data) <= 2 * SAMPLE or len(_zstd()[0].compress(data[:SAMPLE])) <= SAVING * SAMPLE


def _digest(check: int, data: bytes) -> bytes:
    if check == SHA256:
        return hashlib.sha256(data).digest()
    return zlib.crc32(data).to_bytes(4, "little")


def seal(
    signer: Signer, job: str, kind: bytes, items: Sequence[tuple[int, bytes | Raw]], blobs: Blobs | None, folder: str
) -> tuple[list[bytes], int]:
    """What Redis is to hold for each (index, pickle or Raw bytes), and how many bytes
    went to `blobs` (in segments under `folder`): large ones are written there first,
    durably. Raw bytes that compress, or that stay in Redis, are pickled first."""
    bodies = [_body(data) for _, data in items]
    envelopes: list[bytes] = [b""] * len(items)
    written = 0
    if blobs is not None:
        large = [n for n, body in enumerate(bodies) if len(_bytes(body)) >= BLOB_MIN]
        for segment in _segments(large, [_bytes(body) for body in bodies]):
            path = f"{folder}/{kind.decode()}-{uuid.uuid4().hex}"
            chunks = [_bytes(bodies[n]) for n in segment]
            blobs.write(path, chunks)
            root = blobs.url.encode()
            check = SHA256 if signer.enabled else CRC32
            offset = 0
            for n, chunk in zip(segment, chunks, strict=True):
                flags = RAW if isinstance(bodies[n], Raw) else 0
                head = _HEAD.pack(check, flags, _digest(check, chunk), offset, len(chunk), len(root))
                envelopes[n] = REF + head + root + path.encode()
                offset += len(chunk)
            written += offset
    for n, body in enumerate(bodies):
        if not envelopes[n]:
            envelopes[n] = compress(codec.pickled(body)) if isinstance(body, Raw) else body
    sealed = [signer.sign(job, index, kind, envelope) for (index, _), envelope in zip(items, envelopes, strict=True)]
    return sealed, written


def _body(data: bytes | Raw) -> bytes | Raw:
    """What is stored of a payload: compressed when that saves enough; Raw bytes kept
    as they are unless they compress."""
    if isinstance(data, Raw):
        return data if not _compresses(data.data) else compress(codec.pickled(data))
    return compress(data)


def _bytes(body: bytes | Raw) -> bytes:
    return body.data if isinstance(body, Raw) else body


def size(data: bytes | Raw) -> int:
    """How many bytes a payload holds (a Raw is a tuple: its len() is 1)."""
    return len(_bytes(data))


def _segments(chosen: list[int], envelopes: list[bytes]) -> list[list[int]]:
    """`chosen` in runs of at most SEGMENT_MAX bytes (a larger payload: a run of its own)."""
    out: list[list[int]] = []
    size = 0
    for n in chosen:
        if not out or size + len(envelopes[n]) > SEGMENT_MAX:
            out.append([])
            size = 0
        out[-1].append(n)
        size += len(envelopes[n])
    return out


def unseal(signer: Signer, job: str, kind: bytes, items: Sequence[tuple[int, bytes | None]]) -> list[Opened]:
    """The pickle of each (index, stored value), or the PayloadRejected (PayloadLost for
    a missing or altered segment) that says why it may not be loaded; None stays None."""
    out: list[Opened] = []
    refs: dict[int, Ref] = {}  # by position
    for position, (index, stored) in enumerate(items):
        if stored is None:
            out.append(None)
            continue
        try:
            envelope = signer.open(job, index, kind, stored)
        except PayloadRejected as exc:
            out.append(exc)
            continue
        if envelope[: len(REF)] == REF:
            check, flags, digest, offset, length, size = _HEAD.unpack_from(envelope, len(REF))
            start = len(REF) + _HEAD.size
            root = envelope[start : start + size].decode()
            path = envelope[start + size :].decode()
            refs[position] = Ref(root, (path, offset, length), check, flags, digest)
            out.append(None)  # (filled below)
        else:
            out.append(_inflate(envelope))
    if refs:
        _fetch(job, kind, items, refs, out)
    return out


def unseal_all(
    signer: Signer, job: str, kind: bytes, indices: Sequence[int], stored: Iterable[bytes | None]
) -> Iterator[list[Opened]]:
    """`unseal` for a long read, GROUP values at a time: plain pickles (unsigned,
    uncompressed) pass through as they are, with no per-item work. Raises the first
    PayloadRejected other than PayloadLost (a signature that fails)."""
    at = 0
    it = iter(stored)
    while batch := list(itertools.islice(it, GROUP)):
        mine, at = indices[at : at + len(batch)], at + len(batch)
        if not signer.enabled and all(v is None or v[:1] == PICKLE for v in batch):
            yield list(batch)  # (a finished job of small results)
        else:
            yield _checked(unseal(signer, job, kind, list(zip(mine, batch, strict=True))))


def _checked(opened: list[Opened]) -> list[Opened]:
    for value in opened:
        if isinstance(value, PayloadRejected) and not isinstance(value, PayloadLost):
            raise value
    return opened


def _fetch(
    job: str,
    kind: bytes,
    items: Sequence[tuple[int, bytes | None]],
    refs: dict[int, Ref],
    out: list[Opened],
) -> None:
    """Read the referenced bytes, a batch per place, and check each against its digest.
    Bytes not found where they were written are looked for in this process's own
    configured place too (the same shared folder may be mounted elsewhere here)."""
    by_root: dict[str, list[int]] = {}
    for position, ref in refs.items():
        by_root.setdefault(ref.root, []).append(position)
    mine = configured()
    then = f"Its input is gone: nbtasks.reset({job!r}) and call again." if kind == INPUT else ""
    for root, positions in by_root.items():
        place = open_blobs(root)
        chunks = _chunks(positions, refs)
        # Several threads read and check a large batch: reads and digests release the GIL.
        if len(chunks) > 1:
            found = [data for chunk in _pool().map(functools.partial(_read, place, refs), chunks) for data in chunk]
        else:
            found = _read(place, refs, positions)
        if mine and mine != root and any(isinstance(data, str) for data in found):
            again = [p for p, data in zip(positions, found, strict=True) if isinstance(data, str)]
            elsewhere = iter(_read(open_blobs(mine), refs, again))
            found = [next(elsewhere) if isinstance(data, str) else data for data in found]
        for position, data in zip(positions, found, strict=True):
            if isinstance(data, str):
                where = f"{root}/{refs[position].part[0]}"
                out[position] = PayloadLost(job, items[position][0], where, data, then)
            else:
                out[position] = Raw(data) if refs[position].flags & RAW else _inflate(data)


def _chunks(positions: list[int], refs: dict[int, Ref]) -> list[list[int]]:
    """`positions` in runs of about PARALLEL bytes each."""
    out: list[list[int]] = [[]]
    size = 0
    for p in positions:
        if size >= PARALLEL:
            out.append([])
            size = 0
        out[-1].append(p)
        size += refs[p].part[2]
    return out


def _read(place: Blobs, refs: dict[int, Ref], positions: list[int]) -> list[bytes | str]:
    """The bytes of each reference, checked; for one that fails, why (a str)."""
    out: list[bytes | str] = []
    for position, data in zip(positions, place.read([refs[p].part for p in positions]), strict=True):
        check, digest = refs[position].check, refs[position].digest
        if data is None:
            out.append("is missing")
        elif (fresh := _digest(check, data)) != digest[: len(fresh)]:  # (packed: padded to 32 bytes)
            out.append("is not the one recorded (altered)")
        else:
            out.append(data)
    return out


_threads: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _threads
    if _threads is None:
        _threads = concurrent.futures.ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2)), "nbtasks-read")
    return _threads


def _inflate(envelope: bytes) -> bytes:
    if envelope[: len(ZSTD)] == ZSTD:
        data: bytes = _zstd()[1].decompress(envelope[len(ZSTD) :])
        return data
    return envelope
