"""Per-project pseudonyms: keyed HMAC-SHA256 of the person identifier.

One master key (32 random bytes) lives hub side in a 0600 file in a 0700 directory, never
under the extracts directory, so it is never mounted into a workspace, put in its environment
or written to its files. Each project gets its own key derived from it
(``HMAC(master, "sde-pseudonym-v1:" + project)``), so the same patient has a different
pseudonym in two projects and the same one on every rebuild of one project's extract.

:func:`pseudonym` is the reference; :func:`pseudonym_sql` computes the same value inside
DuckDB (HMAC written out as two SHA-256 passes over the key pads), so an extract of millions
of rows never goes through Python row by row.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32
PSEUDONYM_HEX = 32  # 128 bits: collisions are out of reach for any national population
_DERIVE = b"sde-pseudonym-v1:"
_KEY_ID = b"sde-key-id-v1"


class PseudonymKeyError(RuntimeError):
    """The pseudonym key cannot be read or created safely."""


def load_or_create_master_key(path: str | os.PathLike) -> bytes:
    """Read the master key, creating it (0600, directory 0700) on first use.

    Refuses a key file that is not a regular file of 32 bytes, or that others can read.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise PseudonymKeyError(f"pseudonym key {p} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PseudonymKeyError(f"pseudonym key {p} is not a regular file")
        if st.st_mode & 0o077:
            raise PseudonymKeyError(f"pseudonym key {p} is readable by others (mode must be 0600)")
        key = fh.read()
    if len(key) != KEY_BYTES:
        raise PseudonymKeyError(f"pseudonym key {p} must hold {KEY_BYTES} bytes, not {len(key)}")
    return key


def project_key(master: bytes, project: str) -> bytes:
    """The key of one project's pseudonyms."""
    return hmac.digest(master, _DERIVE + project.encode(), "sha256")


def key_id(key: bytes) -> str:
    """A public name for a key (recorded in manifests so a new key means a new extract)."""
    return hmac.digest(key, _KEY_ID, "sha256").hex()[:16]


def pseudonym(key: bytes, identifier: str) -> str:
    """The pseudonym of one identifier under one project key."""
    return hmac.digest(key, identifier.encode(), "sha256").hex()[:PSEUDONYM_HEX]


def pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer key pads (RFC 2104) for SHA-256's 64-byte block."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)


def pseudonym_sql(column: str, ipad_param: str = "$ipad", opad_param: str = "$opad") -> str:
    """DuckDB expression equal to :func:`pseudonym` of ``column`` (VARCHAR); the pads are bound
    as BLOB parameters, never written into the SQL text."""
    inner = f"unhex(sha256({ipad_param}::BLOB || encode({column})))"
    return f"substr(sha256({opad_param}::BLOB || {inner}), 1, {PSEUDONYM_HEX})"
