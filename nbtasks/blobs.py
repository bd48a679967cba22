"""Large payloads kept outside Redis: a folder on this machine, a shared folder, or an
object store (S3, GCS, Azure: anything fsspec reaches). Redis keeps a small reference.

Payloads are written in segments (one file per batch of payloads, several payloads each),
each written completely and made durable before anything refers to it: a crash leaves at
most an unreferenced file, never a reference to a partial one. Segments of one job live
under one folder, ``<root>/<store id>/<job folder>/``, so that deleting a job is one
removal. Knows nothing of Redis or of pickles.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import settings
from .errors import BlobsUnavailable, ConfigError
from .server import BLOBS, LOGFILE, SOCKET

T = TypeVar("T")
Part = tuple[str, int, int]  # (segment's path under the root, offset, length)

_opened: dict[str, Blobs] = {}
_opening = threading.Lock()


NONE = "none"  # blobs="none": every payload stays in Redis


def configured() -> str | None:
    """Where this process keeps large payloads by choice (configure(blobs=...), else
    NBTASKS_BLOBS); None when neither says, or when they say "none"."""
    chosen = settings().blobs
    return chosen if chosen and chosen != NONE else None


def place_of_job(recorded: str | None) -> str:
    """Where this process writes a job's large payloads: its own choice if it made one
    ("none": Redis), else where the job's caller keeps them (`recorded`); "" for Redis."""
    chosen = settings().blobs
    if chosen:
        return "" if chosen == NONE else chosen
    return recorded or ""


def place_for(redis_url: str) -> str:
    """Where a call on the server at `redis_url` keeps large payloads: the place this
    process chose; else, for a server nbtasks started (on a unix socket in a folder of
    its own), a folder beside it; else "" (Redis)."""
    if settings().blobs:
        return configured() or ""
    if redis_url.startswith("unix:"):
        socket = Path(urllib.parse.urlparse(redis_url).path)
        if socket.name == SOCKET and (socket.parent / LOGFILE).exists():
            return str(socket.parent / BLOBS)
    return ""


def job_folder(store_id: str, job: str) -> str:
    """The folder of a job's segments, under any root: readable, and unique per name."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", job)[:40]
    return f"{store_id}/{readable}-{hashlib.sha256(job.encode()).hexdigest()[:16]}"


class Blobs(ABC):
    """A place for segments: written once, read by ranges, removed a job at a time."""

    url: str

    @abstractmethod
    def write(self, path: str, chunks: Sequence[bytes]) -> None:
        """Store `chunks`, one after another, as the new segment `path`, durably, before
        returning."""

    @abstractmethod
    def read(self, parts: Sequence[Part]) -> list[bytes | None]:
        """The bytes of each part; None for one whose segment is missing or too short;
        BlobsUnavailable when the place itself cannot be read now."""

    @abstractmethod
    def remove(self, folder: str) -> int:
        """Delete a folder of segments; the bytes it held (0 if it was not there)."""


class LocalBlobs(Blobs):
    """Segments as files in a folder of this machine (or a shared folder mounted here)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self._made: set[Path] = set()  # folders known to exist, durably

    def write(self, path: str, chunks: Sequence[bytes]) -> None:
        target = self.root / path
        self._folder(target.parent)
        # O_EXCL: segment names are unique, so an existing file is someone else's.
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # another process deleted the job's folder (a reset): made again
            self._made.discard(target.parent)
            self._folder(target.parent)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            blocking(_write_all, fd, chunks)
        finally:
            os.close(fd)

    def _folder(self, folder: Path) -> None:
        if folder in self._made:
            return
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for made in reversed(missing):  # each new folder's entry made durable in its parent
            _fsync_folder(made.parent)
        self._made.add(folder)

    def read(self, parts: Sequence[Part]) -> list[bytes | None]:
        if parts and not self.root.is_dir():  # a shared folder not mounted here: nothing is lost
            raise BlobsUnavailable(f"The folder {self.root} of large payloads is not there (not mounted?).")
        out: list[bytes | None] = []
        files: dict[str, int | None] = {}
        try:
            for path, offset, length in parts:
                if path not in files:
                    try:
                        files[path] = os.open(self.root / path, os.O_RDONLY)
                    except FileNotFoundError:
                        files[path] = None
                fd = files[path]
                data = os.pread(fd, length, offset) if fd is not None else b""
                out.append(data if len(data) == length else None)
        finally:
            for fd in files.values():
                if fd is not None:
                    os.close(fd)
        return out

    def remove(self, folder: str) -> int:
        target = self.root / folder
        freed = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if target.is_dir() else 0
        shutil.rmtree(target, ignore_errors=True)
        self._made = {f for f in self._made if not f.is_relative_to(target)}
        return freed


def _write_all(fd: int, chunks: Sequence[bytes]) -> None:
    views = [memoryview(c) for c in chunks if c]
    while views:
        done = os.writev(fd, views[:1024])  # (at most IOV_MAX buffers per call)
        while done and views:
            if done >= len(views[0]):
                done -= len(views.pop(0))
            else:
                views[0], done = views[0][done:], 0
    os.fsync(fd)  # on disk before Redis refers to it


def _direct(call: Callable[..., T], *args: Any) -> T:
    return call(*args)


# How this process waits on a blocking write: directly, or (in an eventlet worker, see
# backends.green) in an OS thread while its green threads run on.
blocking: Callable[..., Any] = _direct


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RemoteBlobs(Blobs):
    """Segments as objects of an fsspec file system (``s3://bucket/prefix``, ``gs://``...).
    An object store's write is complete once it returns."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        try:
            self.fs, self.base = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"Cannot keep payloads at {url}: {exc}. Install the file system's package "
                "(e.g. `pip install s3fs` for s3://), or choose another place with configure(blobs=...)."
            ) from None
        self.base = self.base.rstrip("/")

    def _path(self, path: str) -> str:
        return f"{self.base}/{path}"

    def write(self, path: str, chunks: Sequence[bytes]) -> None:
        self.fs.pipe_file(self._path(path), b"".join(chunks))

    def read(self, parts: Sequence[Part]) -> list[bytes | None]:
        if not parts:
            return []
        paths = [self._path(p) for p, _, _ in parts]
        starts = [offset for _, offset, _ in parts]
        ends = [offset + length for _, offset, length in parts]
        # One call for all: an object store's file system fetches the ranges concurrently.
        found: list[Any] = self.fs.cat_ranges(paths, starts, ends, on_error="return")
        for failed in found:
            if isinstance(failed, BaseException) and not isinstance(failed, FileNotFoundError):
                why = f"{type(failed).__name__}: {failed}"
                raise BlobsUnavailable(f"Cannot read large payloads from {self.url}: {why}.")
        return [
            data if isinstance(data, bytes) and len(data) == length else None
            for data, (_, _, length) in zip(found, parts, strict=True)
        ]

    def remove(self, folder: str) -> int:
        path = self._path(folder)
        try:
            freed = int(self.fs.du(path))
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            return 0
        self.fs.invalidate_cache(path)
        return freed


def open_blobs(url: str) -> Blobs:
    """The place named by `url` (a folder path, ``file://...``, or an fsspec URL), one per URL."""
    with _opening:
        if (found := _opened.get(url)) is None:
            found = _opened[url] = _open(url)
        return found


def _open(url: str) -> Blobs:
    if url.startswith("file://"):
        return LocalBlobs(Path(url.removeprefix("file://")))
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"blobs={url!r}: give an absolute folder path, or a URL such as s3://bucket/prefix.")
        return LocalBlobs(path)
    return RemoteBlobs(url)
