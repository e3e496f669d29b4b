"""Which files may leave the workspace, and taking their bytes exactly once.

Two steps, both pure file-system work with no Jupyter or network dependency:

* :func:`open_confined` turns a path the researcher typed into an open file descriptor of a
  regular file *inside the home directory*, or raises :class:`ExportRefused` with one reason
  a person can read. It walks the path one component at a time from a descriptor of the home
  directory (``openat`` with ``O_NOFOLLOW``), so no symbolic link anywhere on the way is
  followed, and then re-checks the opened descriptor with ``fstat`` (same device and inode as
  the name it checked, a regular file, one hard link, within the size limit). Swapping the
  file between the check and the open therefore fails instead of leaking something else.
* :func:`take_snapshot` fixes the bytes of that descriptor by their size and SHA-256 (one
  read pass, no copy). That digest, not the file's name, is what is declared; the service
  stores the uploaded bytes only if they hash to it, so an edit after submission cannot
  change what was submitted, and an edit during the upload fails it with a reason. The same
  pass runs the airlock's byte inspector (:mod:`sde_airlock.filetypes`), so a file whose
  bytes are not what its name says is refused here, before anything is sent.

Which types, sizes and text lengths are allowed is the airlock's rules
(:class:`sde_airlock.rules.ExportRules`, the same the service enforces); this module adds the
confinement only the workspace can do.

Refusal codes (``ExportRefused.code``): ``bad_path``, ``parent``, ``outside``, ``missing``,
``symlink``, ``directory``, ``special``, ``type_not_allowed``, ``hardlink``, ``too_large``,
``changed``, and the airlock's byte codes ``type_mismatch``, ``archive``, ``executable``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

from sde_airlock.filetypes import Inspector
from sde_airlock.rules import (
    DEFAULT_ALLOWED_SUFFIXES,
    DEFAULT_MAX_FILE_BYTES,
    ExportRules,
    human_size,
)

__all__ = [
    "DEFAULT_ALLOWED_SUFFIXES",
    "DEFAULT_MAX_FILE_SIZE",
    "ExportPolicy",
    "ExportRefused",
    "Snapshot",
    "human_size",
    "list_candidates",
    "open_confined",
    "relative_path",
    "take_snapshot",
]

#: The defaults are the airlock's (one source for the workspace and the service).
DEFAULT_MAX_FILE_SIZE = DEFAULT_MAX_FILE_BYTES
READ_CHUNK = 1024 * 1024


class ExportRefused(Exception):
    """A file that may not be exported, with one reason for the person who asked."""

    def __init__(self, code: str, message: str, *, status: int = 403, path: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.path = path


@dataclass(frozen=True)
class ExportPolicy:
    """What may leave: files under ``root`` that the airlock's ``rules`` allow."""

    root: str
    rules: ExportRules = field(default_factory=ExportRules)

    @property
    def max_file_size(self) -> int:
        return self.rules.max_file_bytes

    @property
    def allowed_suffixes(self) -> tuple[str, ...]:
        return self.rules.allowed_suffixes

    def suffix_allowed(self, name: str) -> bool:
        return self.rules.suffix_allowed(name)


@dataclass(frozen=True)
class Snapshot:
    """A file's bytes as they were at submission: its open descriptor, size and SHA-256.

    Nothing is copied inside the workspace: the bytes are sent from ``fd`` and the service
    re-hashes them on arrival, storing them only if they still hash to ``sha256``. An edit
    after the snapshot therefore cannot change what is stored; an edit *during* the upload
    makes the service refuse it (:meth:`changed` then tells the researcher why) instead of
    storing bytes nobody declared.
    """

    fd: int
    size: int
    sha256: str

    def changed(self) -> bool:
        """Do the file's bytes differ from the snapshot now? (Reads the file again.)"""
        try:
            again = take_snapshot(self.fd)
        except (OSError, ExportRefused):
            return True
        return (again.size, again.sha256) != (self.size, self.sha256)


def relative_path(policy: ExportPolicy, path: object) -> str:
    """The requested ``path`` as a normalised path relative to the home directory.

    Accepts a path relative to home or an absolute path under it; refuses anything with
    ``..``, an absolute path elsewhere, an empty path or the home directory itself.
    """
    if not isinstance(path, str) or not path.strip():
        raise ExportRefused("bad_path", "no file path given", status=400)
    if "\x00" in path or len(path) > policy.rules.max_path:
        raise ExportRefused("bad_path", "the file path is not valid", status=400, path=path[:200])
    text = path.strip()
    if text.startswith("/"):
        for root in dict.fromkeys((os.path.abspath(policy.root), os.path.realpath(policy.root))):
            prefix = root.rstrip("/") + "/"
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
        else:
            raise ExportRefused(
                "outside",
                f"{path} is outside your home directory ({policy.root}): "
                "only files under it can be exported",
                path=path,
            )
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ExportRefused(
            "parent",
            f"{path}: '..' is not allowed in an export path; name the file inside your home "
            "directory directly",
            status=400,
            path=path,
        )
    if not parts:
        raise ExportRefused(
            "directory", f"{path} is your home directory, not a file", status=400, path=path
        )
    return "/".join(parts)


def _link_target(name: str, dir_fd: int) -> str:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return "?"


def _refuse_type(rel: str, st: os.stat_result, name: str, dir_fd: int, root: str) -> None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        target = _link_target(name, dir_fd)
        where = os.path.normpath(os.path.join(root, os.path.dirname(rel), target))
        inside = (where + "/").startswith(root.rstrip("/") + "/")
        if inside:
            raise ExportRefused(
                "symlink",
                f"{rel} is a symbolic link (to {target}): export the file itself, not a link",
                path=rel,
            )
        raise ExportRefused(
            "symlink",
            f"{rel} is a symbolic link to {where}, outside your home directory: "
            "only files in your home directory can be exported",
            path=rel,
        )
    if stat.S_ISDIR(mode):
        raise ExportRefused(
            "directory",
            f"{rel} is a directory: choose the files in it one by one",
            status=400,
            path=rel,
        )
    if not stat.S_ISREG(mode):
        kind = (
            "a named pipe (FIFO)"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"
        )
        raise ExportRefused(
            "special",
            f"{rel} is {kind}: only regular files can be exported",
            status=400,
            path=rel,
        )


def _refuse_policy(policy: ExportPolicy, rel: str, st: os.stat_result) -> None:
    for problem in policy.rules.check_type(rel):
        raise ExportRefused(problem.code, problem.message, path=rel)
    if st.st_nlink > 1:
        raise ExportRefused(
            "hardlink",
            f"{rel} has {st.st_nlink} hard links: a file with several names may share its "
            "bytes with a file outside your home directory; export a copy (cp) instead",
            path=rel,
        )
    for problem in policy.rules.check_size(rel, st.st_size):
        raise ExportRefused(problem.code, problem.message, path=rel)


def _lstat_at(name: str, dir_fd: int, rel: str) -> os.stat_result:
    """``lstat`` of ``name`` in ``dir_fd``; a missing one is refused for the path ``rel``."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise ExportRefused(
            "missing", f"{rel}: no such file in your home directory", status=400, path=rel
        ) from None


def open_confined(policy: ExportPolicy, path: object) -> tuple[int, os.stat_result, str]:
    """Open ``path`` for export: ``(fd, fstat, relative path)`` or :class:`ExportRefused`.

    The caller owns the returned descriptor and must close it.
    """
    rel = relative_path(policy, path)
    parts = rel.split("/")
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dir_fd = os.open(policy.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked: list[str] = []
        for part in parts[:-1]:
            walked.append(part)
            st = _lstat_at(part, dir_fd, rel)
            if not stat.S_ISDIR(st.st_mode):
                _refuse_type("/".join(walked), st, part, dir_fd, policy.root)
                raise ExportRefused(
                    "missing", f"{rel}: {'/'.join(walked)} is not a folder", status=400, path=rel
                )
            new_fd = os.open(part, flags_dir, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = new_fd
        name = parts[-1]
        lst = _lstat_at(name, dir_fd, rel)
        _refuse_type(rel, lst, name, dir_fd, policy.root)
        _refuse_policy(policy, rel, lst)
        try:
            fd = os.open(
                name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise ExportRefused(
                "changed",
                f"{rel} changed while it was being checked ({exc.strerror}); try again",
                status=409,
                path=rel,
            ) from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino) or not stat.S_ISREG(st.st_mode):
            raise ExportRefused(
                "changed",
                f"{rel} changed while it was being checked; try again",
                status=409,
                path=rel,
            )
        _refuse_policy(policy, rel, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st, rel


def _read_all(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size and (piece := os.pread(fd, size - len(out), len(out))):
        out += piece
    return bytes(out)


def take_snapshot(
    fd: int,
    *,
    max_size: int | None = None,
    chunk: int = READ_CHUNK,
    inspect: str | None = None,
) -> Snapshot:
    """Fix the bytes of the open file ``fd`` by their size and SHA-256: one read pass.

    The bytes are read with ``pread`` from offset 0 (the descriptor's position is left
    alone). ``max_size`` refuses a file that grew past the limit after it was checked.
    ``inspect`` (the file's path) also runs the airlock's byte inspector over the same pass
    and refuses bytes that are not what the name says (``type_mismatch``), archives and
    programs, as the service would.
    """
    digest = hashlib.sha256()
    inspector = Inspector(inspect) if inspect is not None else None
    buf = memoryview(bytearray(chunk))
    size = 0
    while n := os.preadv(fd, [buf], size):
        size += n
        if max_size is not None and size > max_size:
            raise ExportRefused(
                "too_large",
                f"the file grew past the export limit of {human_size(max_size)} while it was "
                "being read",
            )
        digest.update(buf[:n])
        if inspector is not None:
            inspector.feed(buf[:n])
    if inspector is not None:
        check = inspector.result(lambda: _read_all(fd, size))
        if not check.ok:
            raise ExportRefused(
                check.problems[0].code,
                "; ".join(p.message for p in check.problems),  # each names the file
                status=422,
                path=inspect,
            )
    return Snapshot(fd=fd, size=size, sha256=digest.hexdigest())


def list_candidates(policy: ExportPolicy, *, limit: int = 2000, max_depth: int = 8) -> list[dict]:
    """Files under home a researcher might export, for the export page's picker.

    Hidden files and folders are skipped, links are not followed. Each entry says whether it
    may be exported and, if not, why (the same reasons :func:`open_confined` gives).
    """
    out: list[dict] = []
    stack: list[tuple[str, int]] = [("", 0)]
    while stack and len(out) < limit:
        rel_dir, depth = stack.pop()
        full = os.path.join(policy.root, rel_dir)
        try:
            entries = sorted(os.scandir(full), key=lambda e: e.name, reverse=True)
            dir_fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if depth + 1 < max_depth:
                        stack.append((rel, depth + 1))
                    continue
                item: dict = {"path": rel, "size": st.st_size, "exportable": True, "reason": ""}
                try:
                    _refuse_type(rel, st, entry.name, dir_fd, policy.root)
                    _refuse_policy(policy, rel, st)
                except ExportRefused as refused:
                    item.update(exportable=False, reason=refused.message)
                out.append(item)
                if len(out) >= limit:
                    break
        finally:
            os.close(dir_fd)
    out.sort(key=lambda item: item["path"])
    return out
