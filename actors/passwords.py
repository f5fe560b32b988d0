"""Password hashing for identity: scrypt with a per-user salt, checked in constant time.

A hash is one self-describing string, ``scrypt$<n>$<r>$<p>$<salt b64>$<key b64>``, so the
parameters can be raised later without breaking stored hashes. Hashing is deliberately
slow and memory-hard (n=2**14, r=8: 16 MiB, tens of milliseconds), so the async helpers
run it on a thread and never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = ["ScryptParams", "hash_password", "hash_password_sync", "verify_password",
           "verify_password_sync"]

_SCHEME = "scrypt"
_KEY_BYTES = 32
_SALT_BYTES = 16


@dataclass(frozen=True)
class ScryptParams:
    """scrypt's cost parameters; the defaults are the ones every new hash uses."""

    n: int = 2**14
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        """What OpenSSL must be allowed to allocate for these parameters (with headroom)."""
        return 128 * self.n * self.r * self.p + (1 << 20) * 4


DEFAULT = ScryptParams()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=params.n, r=params.r, p=params.p,
        maxmem=params.maxmem, dklen=_KEY_BYTES,
    )


def hash_password_sync(password: str, params: ScryptParams = DEFAULT) -> str:
    """A new hash string for ``password`` with a fresh random salt (blocking)."""
    salt = os.urandom(_SALT_BYTES)
    key = _derive(password, salt, params)
    return f"{_SCHEME}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(key)}"


def verify_password_sync(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded``; False for a mismatch or a malformed hash."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != _SCHEME:
            return False
        params = ScryptParams(int(n), int(r), int(p))
        expected = _unb64(key)
        actual = _derive(password, _unb64(salt), params)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


async def hash_password(password: str, params: ScryptParams = DEFAULT) -> str:
    """`hash_password_sync` on a worker thread."""
    return await asyncio.to_thread(hash_password_sync, password, params)


async def verify_password(password: str, encoded: str) -> bool:
    """`verify_password_sync` on a worker thread."""
    return await asyncio.to_thread(verify_password_sync, password, encoded)
