"""The approved imports of a project, laid out on the hub side for a read-only bind mount.

Imports live in their own write-once blob store, ``{SDE_STATE_DIR}/imports/blobs`` (the same
:class:`~sde_spawner.checking.storage.BlobStore` as export snapshots, but its own root: the
export store's sweep collects blobs no export references). When a workspace starts, the
spawner calls :func:`prepare_imports`, which lays the project's approved files out as
``{imports_dir}/mounts/<project>/<digest>/<import id>/<name>`` and returns that directory; the
container builder mounts it read-only at ``/imports``.

* The layout is a pure function of the approved files (:func:`layout_digest`): the same
  approvals give the same directory (reused), a new approval a new one, so a running
  workspace's mount never changes under it. New approvals appear at the workspace's **next
  start**.
* Every file is written from verified blob bytes (re-hashed as they are copied) into a fresh
  temporary directory with ``O_CREAT | O_EXCL | O_NOFOLLOW``: no symlink, no existing file and
  no name with a directory part (:meth:`sde_airlock.imports.ImportRules.check_name` is asked
  again) can point a write elsewhere. Files are 0444 and folders 0555; the finished directory
  is renamed into place in one step, so a half-written layout is never mounted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from sde_airlock.imports import ImportRules
from sde_spawner.checking.storage import CHUNK, BlobError, BlobStore
from sde_spawner.containers import escape
from sde_spawner.imports.logic import Mounted, approved_files

_NAMES = ImportRules()


def blob_store(imports_dir: str | os.PathLike) -> BlobStore:
    """The imports' blob store under ``imports_dir`` (``{SDE_STATE_DIR}/imports``)."""
    return BlobStore(Path(imports_dir) / "blobs")


def layout_digest(files: list[Mounted]) -> str:
    """The name of the layout of ``files``: a digest of every (path, sha256), in order."""
    text = json.dumps([[f.relpath, f.sha256] for f in files], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _write(store: BlobStore, f: Mounted, folder: Path) -> None:
    if _NAMES.check_name(f.name) or not isinstance(f.import_id, int):
        raise BlobError(f"import {f.import_id}: {f.name!r} is not a plain file name")
    folder.mkdir(mode=0o755, exist_ok=True)
    fd = os.open(folder / f.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, store.open_verified(f.sha256, f.sha256) as src:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != f.sha256:
        raise BlobError(f"import {f.import_id}: {f.name} changed while it was copied")


def materialise(store: BlobStore, files: list[Mounted], project_dir: Path) -> Path:
    """The read-only layout of ``files`` under ``project_dir`` (built once, then reused)."""
    target = project_dir / layout_digest(files)
    if target.is_dir() and not target.is_symlink():
        return target
    project_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=project_dir))
    try:
        for f in files:
            _write(store, f, tmp / str(f.import_id))
        for folder in {tmp / str(f.import_id) for f in files}:
            os.chmod(folder, 0o555)  # noqa: S103 - read-only, readable by the workspace
        os.chmod(tmp, 0o555)  # noqa: S103 - read-only, readable by the workspace
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not "another start built it meanwhile"
                raise
            _remove(tmp)
    except BaseException:
        _remove(tmp)
        raise
    return target


def _remove(path: Path) -> None:
    if not path.exists():
        return
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
    os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def prepare_imports(sessionmaker, imports_dir: str, project: str) -> tuple[Path, list[Mounted]]:
    """The layout of ``project``'s approved imports (hub side) and the files in it."""
    with sessionmaker() as s:
        files = approved_files(s, project)
    root = Path(imports_dir)
    path = materialise(blob_store(root), files, root / "mounts" / escape(project))
    return path, files
