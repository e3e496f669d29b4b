"""The blob store: content-addressed, verified while streaming, write-once, re-hashed on read."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from sde_spawner.checking.storage import BlobError, BlobStore


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    return BlobStore.for_state_dir(tmp_path)


def leftovers(store: BlobStore) -> list[str]:
    return [p.name for p in store.root.iterdir() if p.is_file()]


def test_streamed_upload_is_stored_read_only_under_its_hash(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    w = store.writer(len(data), digest(data), max_size=10 * 2**20)
    for i in range(0, len(data), 65536):
        w.write(data[i : i + 65536])
    key = w.finish()
    assert key == digest(data)
    path = store.path(key)
    assert path == tmp_path / "exports" / "blobs" / key[:2] / key
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.read_verified(key, key) == data
    assert leftovers(store) == []  # no temp file left behind


def test_a_large_upload_has_its_writeback_started_while_it_streams(store, monkeypatch):
    """Each completed 8 MiB is handed to the disk as it arrives (the closing fsync then waits
    only for the tail); the ranges follow each other and the bytes are unchanged."""
    from sde_spawner.checking import storage

    if storage._START_WRITEBACK is None:
        pytest.skip("no sync_file_range here")
    asked: list[tuple[int, int]] = []
    real = storage._START_WRITEBACK

    def recorded(fd, offset, length, flags):
        asked.append((offset, length))
        assert os.fstat(fd).st_size >= offset + length  # flushed before it is asked for
        return real(fd, offset, length, flags)

    monkeypatch.setattr(storage, "_START_WRITEBACK", recorded)
    data = os.urandom(20 * 2**20 + 5)
    w = store.writer(len(data), digest(data), max_size=32 * 2**20)
    for i in range(0, len(data), 3 * 65536 + 1):  # pieces that do not divide 8 MiB
        w.write(data[i : i + 3 * 65536 + 1])
    key = w.finish()
    assert [o for o, _ in asked] == [0, asked[0][1]]
    assert all(n >= storage.WRITEBACK_BYTES for _, n in asked)
    assert sum(n for _, n in asked) <= len(data)
    assert store.read_verified(key, key) == data


@pytest.mark.parametrize(
    ("declared", "sent", "message"),
    [
        (b"abc", b"abcd", "larger than the declared 3 bytes"),
        (b"abcd", b"abc", "has 3 bytes, 4 were declared"),
        (b"abc", b"abd", "does not match the declared"),
    ],
)
def test_upload_that_does_not_match_its_declaration_is_refused(store, declared, sent, message):
    w = store.writer(len(declared), digest(declared), max_size=100)
    with pytest.raises(BlobError, match=message):
        w.write(sent)
        w.finish()
    assert not store.exists(digest(declared))
    assert leftovers(store) == []


def test_limits_and_declarations_are_checked_before_any_byte(store):
    with pytest.raises(BlobError, match="over the limit of 10 bytes"):
        store.writer(11, "a" * 64, max_size=10)
    with pytest.raises(BlobError, match="64 lowercase hex"):
        store.writer(1, "A" * 64, max_size=10)
    with pytest.raises(BlobError, match="not a blob key"):
        store.path("../../etc/passwd")


def test_identical_bytes_are_stored_once(store):
    a = store.put(b"same")
    b = store.put(b"same")
    assert a == b and len(list(store.root.glob("*/*"))) == 1


def test_a_tampered_or_missing_blob_is_never_served(store):
    key = store.put(b"approved bytes")
    path = store.path(key)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered bytes")
    with pytest.raises(BlobError, match="no longer matches its approved sha256"):
        store.read_verified(key, key)
    with pytest.raises(BlobError, match="no longer matches"), store.open_verified(key, key):
        pass
    path.unlink()
    with pytest.raises(BlobError, match="missing"):
        store.read_verified(key, key)
