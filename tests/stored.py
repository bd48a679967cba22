"""Reading a job's stored inputs and results as Redis holds them: each in a field of its
own, or packed in its chunk (see nbtasks.store.chunks)."""

from __future__ import annotations

import redis

from nbtasks.store.chunks import CHUNK, open_chunk


def payload(r: redis.Redis, key: str, index: int) -> bytes | None:
    """What the hash `key` holds for item `index`."""
    own = r.hget(key, index)
    return own if own is not None else open_chunk(r.hget(key, f"c{index // CHUNK}"))[index % CHUNK]


def payloads(r: redis.Redis, key: str) -> dict[int, bytes]:
    """Every item's payload the hash `key` holds."""
    out: dict[int, bytes] = {}
    for name, value in r.hgetall(key).items():
        if name.startswith(b"c"):
            k = int(name[1:])
            out.update({k * CHUNK + j: p for j, p in enumerate(open_chunk(value)) if p is not None})
    out.update({int(name): value for name, value in r.hgetall(key).items() if name.isdigit()})
    return out


def put(r: redis.Redis, key: str, index: int, blob: bytes) -> None:
    """Replace item `index`'s payload where the hash `key` keeps it: in its chunk, else in
    a field of its own (as someone with write access to Redis could)."""
    name = f"c{index // CHUNK}"
    slots = open_chunk(r.hget(key, name))
    if slots[index % CHUNK] is None:
        r.hset(key, index, blob)
        return
    slots[index % CHUNK] = blob
    r.hset(key, name, _packed(slots))


def _packed(slots: list[bytes | None]) -> bytes:
    """A chunk of `slots`, each kept as it is (flag 0); a slot may hold up to 255 bytes."""
    assert all(len(p) < 256 for p in slots if p is not None), "too large for a chunk"
    return bytes([0, *(len(p or b"") for p in slots)]) + b"".join(p for p in slots if p is not None)


def drop(r: redis.Redis, key: str, index: int) -> None:
    """Delete item `index`'s payload from the hash `key`, from its chunk too."""
    r.hdel(key, index)
    name = f"c{index // CHUNK}"
    slots = open_chunk(r.hget(key, name))
    if slots[index % CHUNK] is not None:
        slots[index % CHUNK] = None
        r.hset(key, name, _packed(slots))
