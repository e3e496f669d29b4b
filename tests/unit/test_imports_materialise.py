"""The hub-side layout of approved imports mounted at /imports: read-only, only approved
files, written from verified blobs, never through a symlink or a name with a folder in it."""

from __future__ import annotations

import os
import stat

import pytest

from sde_spawner.checking.storage import BlobError
from sde_spawner.imports.logic import Mounted
from sde_spawner.imports.materialise import blob_store, layout_digest, materialise

DATA = b"code,label\nE11,Type 2 diabetes\n"


@pytest.fixture
def store(tmp_path):
    return blob_store(tmp_path / "imports")


def test_layout_is_read_only_and_reused(store, tmp_path):
    key = store.put(DATA)
    files = [Mounted(3, "codes.csv", len(DATA), key), Mounted(7, "codes.csv", len(DATA), key)]
    path = materialise(store, files, tmp_path / "mounts" / "p1")
    assert path.name == layout_digest(files)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == [
        "3",
        "3/codes.csv",
        "7",
        "7/codes.csv",
    ]
    assert (path / "3" / "codes.csv").read_bytes() == DATA
    assert stat.S_IMODE(os.stat(path / "3" / "codes.csv").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(path / "3").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o555
    assert materialise(store, files, tmp_path / "mounts" / "p1") == path  # reused
    empty = materialise(store, [], tmp_path / "mounts" / "p1")
    assert empty != path and list(empty.iterdir()) == []
    # no half-built directories left behind
    assert not [p for p in (tmp_path / "mounts" / "p1").iterdir() if p.name.startswith(".")]


def test_tampered_blob_and_bad_names_are_refused(store, tmp_path):
    key = store.put(DATA)
    with pytest.raises(BlobError, match="not a plain file name"):
        materialise(store, [Mounted(1, "../../etc/x", 1, key)], tmp_path / "m")
    blob = store.path(key)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"tampered")
    with pytest.raises(BlobError, match="no longer matches"):
        materialise(store, [Mounted(1, "codes.csv", len(DATA), key)], tmp_path / "m")
    assert not [p for p in (tmp_path / "m").iterdir()]  # nothing half-written is left
