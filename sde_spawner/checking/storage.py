"""Content-addressed, write-once blob store for exported file snapshots.

Blobs live under ``{SDE_STATE_DIR}/exports/blobs/`` as ``ab/abcdef…`` (the SHA-256 of the
bytes). A blob is written by streaming into a temporary file in the same directory while
hashing; the size and hash are checked against what the requester declared, then the file is
fsynced, renamed into place and made read-only (0444). While an upload streams in, the kernel
is asked to start writing each completed 8 MiB to disk (Linux ``sync_file_range``), so the
closing fsync waits for the last few MiB instead of the whole file. Nothing ever rewrites a
blob, so what a checker saw and what is released are the bytes that were uploaded at submission
time; edits in the workspace afterwards cannot reach them. Reads re-hash before serving
(:meth:`open_verified`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024
#: an upload asks for writeback of what it has written every this many bytes
WRITEBACK_BYTES = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback, do not wait


def _sync_file_range():
    """libc's ``sync_file_range`` where there is one (Linux), else ``None``."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_START_WRITEBACK = _sync_file_range()


class BlobError(Exception):
    """An upload that does not match its declaration, or a blob that no longer matches."""


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


class BlobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike) -> BlobStore:
        return cls(Path(state_dir) / "exports" / "blobs")

    def path(self, key: str) -> Path:
        if not is_sha256(key):
            raise BlobError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def writer(self, expected_size: int, expected_sha256: str, max_size: int) -> BlobWriter:
        if not is_sha256(expected_sha256):
            raise BlobError("declared sha256 must be 64 lowercase hex digits")
        if expected_size < 0 or expected_size > max_size:
            raise BlobError(f"declared size {expected_size} is over the limit of {max_size} bytes")
        return BlobWriter(self, expected_size, expected_sha256)

    def put(self, data: bytes) -> str:
        """Store ``data`` (tests and small files); returns its key."""
        digest = hashlib.sha256(data).hexdigest()
        w = self.writer(len(data), digest, len(data))
        w.write(data)
        return w.finish()

    @contextlib.contextmanager
    def open_verified(self, key: str, sha256: str) -> Iterator[BinaryIO]:
        """Open a blob after re-hashing it through the same descriptor; yields it at offset 0.

        Raises :class:`BlobError` if the blob is missing or its bytes no longer hash to
        ``sha256`` (never serve bytes that were not the approved ones).
        """
        with self.open_verified_handle(key, sha256) as fh:
            yield fh

    def open_verified_handle(self, key: str, sha256: str) -> BinaryIO:
        """Like :meth:`open_verified` but the caller closes the file: a download verifies
        the whole blob through this descriptor *before* its first byte is sent, then serves
        from the same descriptor (a blob replaced on disk meanwhile is not what it reads)."""
        try:
            fh = self.path(key).open("rb")
        except FileNotFoundError:
            raise BlobError(f"blob {key[:12]}… is missing from the store") from None
        try:
            h = hashlib.sha256()
            while chunk := fh.read(CHUNK):
                h.update(chunk)
            if h.hexdigest() != sha256:
                raise BlobError(
                    f"blob {key[:12]}… no longer matches its approved sha256 (store tampered)"
                )
            fh.seek(0)
        except BaseException:
            fh.close()
            raise
        return fh

    def read_verified(self, key: str, sha256: str) -> bytes:
        with self.open_verified(key, sha256) as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BlobError(f"blob {key[:12]}… changed while it was read")
        return data


class BlobWriter:
    """One streamed upload: ``write`` chunks, then ``finish`` (checks, fsync, rename) or
    ``abort``."""

    def __init__(self, store: BlobStore, expected_size: int, expected_sha256: str):
        self.store = store
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.size = 0
        self._written_back = 0  # bytes whose writeback has been asked for
        self._hash = hashlib.sha256()
        store.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=store.root)
        self._tmp = Path(name)
        self._fh = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if self._fh is None:
            raise BlobError("upload already finished")
        self.size += len(chunk)
        if self.size > self.expected_size:
            self.abort()
            raise BlobError(f"upload is larger than the declared {self.expected_size} bytes")
        self._hash.update(chunk)
        self._fh.write(chunk)
        if self.size - self._written_back >= WRITEBACK_BYTES and _START_WRITEBACK is not None:
            # the closing fsync still decides durability: this only starts the disk early
            self._fh.flush()
            _START_WRITEBACK(
                self._fh.fileno(),
                self._written_back,
                self.size - self._written_back,
                _SYNC_FILE_RANGE_WRITE,
            )
            self._written_back = self.size

    def finish(self, inspect: Callable[[Path], None] | None = None) -> str:
        """Verify size and hash, make the blob durable and read-only; returns its key.

        ``inspect(path)`` is called with the complete, verified temporary file before it is
        kept; if it raises, the upload is aborted (nothing stored) and the exception passes on.
        """
        if self._fh is None:
            raise BlobError("upload already finished")
        if self.size != self.expected_size:
            self.abort()
            raise BlobError(f"upload has {self.size} bytes, {self.expected_size} were declared")
        digest = self._hash.hexdigest()
        if digest != self.expected_sha256:
            self.abort()
            raise BlobError(
                f"upload's sha256 {digest[:12]}… does not match the declared "
                f"{self.expected_sha256[:12]}…"
            )
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        if inspect is not None:
            try:
                inspect(self._tmp)
            except BaseException:
                self.abort()
                raise
        final = self.store.path(digest)
        final.parent.mkdir(exist_ok=True)
        if final.exists():  # identical bytes already stored: keep the existing, read-only one
            self._tmp.unlink()
            os.utime(final)  # reused now: the sweep's grace period starts again
        else:
            os.chmod(self._tmp, 0o444)
            os.replace(self._tmp, final)
            _fsync_dir(final.parent)
        return digest

    def abort(self) -> None:
        """Close and remove the temporary. On a full disk closing fails too (the buffered
        bytes cannot be flushed): the temporary is removed all the same."""
        fh, self._fh = self._fh, None
        try:
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
