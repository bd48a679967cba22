"""Signed payloads: with a secret, every pickle that goes through Redis (the function,
inputs, results, failures) carries an HMAC-SHA256 tag bound to its job, its item index and
its kind, and nothing is unpickled before its tag verifies.

Unpickling runs code, so whoever can write to the Redis server could otherwise run code
in every worker, and a forged result could run code in the notebook. The secret comes
from ``NBTASKS_SECRET`` or from a key file readable only by its owner
(``NBTASKS_SECRET_FILE``, default ``~/.config/nbtasks/secret``); it is never stored in
Redis, never printed, and never put on a command line (workers inherit the environment).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from .errors import ConfigError, PayloadRejected

MAGIC = b"NBS1"  # a signed payload: MAGIC, a 32-byte tag, then the pickle
TAG = 32

# What a payload is, bound into its tag so that none can stand in for another.
FUNCTION, INPUT, RESULT, FAILURE = b"f", b"i", b"r", b"e"
INDEX, VIEW = b"x", b"v"  # an input's digest -> its index; a list's indices


def default_key_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("nbtasks")) / "secret"


def load_secret() -> bytes | None:
    """The secret in force: NBTASKS_SECRET, else the key file, else None (unsigned)."""
    if secret := os.environ.get("NBTASKS_SECRET"):
        return secret.encode()
    named = os.environ.get("NBTASKS_SECRET_FILE")
    path = Path(named) if named else default_key_file()
    try:
        info = path.stat()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"NBTASKS_SECRET_FILE names {path}, which does not exist.") from None
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or info.st_uid != os.getuid():
        raise ConfigError(f"The key file {path} must belong to you and be readable by you alone: chmod 600 {path}.")
    key = path.read_bytes().strip()
    if not key:
        raise ConfigError(f"The key file {path} is empty; put a long random string in it.")
    return key


class Signer:
    """Signs payloads on their way into Redis and checks them on their way out."""

    def __init__(self, secret: bytes | None) -> None:
        self._key = hashlib.sha256(b"nbtasks payload key\0" + secret).digest() if secret else None

    @classmethod
    def from_environment(cls) -> Signer:
        return cls(load_secret())

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def sign(self, job: str, index: int, kind: bytes, payload: bytes) -> bytes:
        if self._key is None:
            return payload
        return MAGIC + self._tag(job, index, kind, payload) + payload

    def open(self, job: str, index: int, kind: bytes, blob: bytes) -> bytes:
        """The payload inside `blob`, once its tag says it was made with this secret
        for this job, index and kind; PayloadRejected otherwise."""
        signed = blob[: len(MAGIC)] == MAGIC
        if self._key is None:
            if signed:
                raise PayloadRejected(job, index, "it is signed and no secret is set here (NBTASKS_SECRET)")
            return blob
        if not signed:
            raise PayloadRejected(job, index, "it carries no signature")
        tag, payload = blob[len(MAGIC) : len(MAGIC) + TAG], blob[len(MAGIC) + TAG :]
        if not hmac.compare_digest(tag, self._tag(job, index, kind, payload)):
            raise PayloadRejected(job, index, "its signature does not match (tampered, moved, or another secret)")
        return payload

    def _tag(self, job: str, index: int, kind: bytes, payload: bytes) -> bytes:
        assert self._key is not None
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(b"%s\0%s\0%d\0" % (job.encode(), kind, index))
        mac.update(payload)
        return mac.digest()
