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
  change what was submitted, and an edit during the upload fails it with a reason.

Refusal codes (``ExportRefused.code``): ``bad_path``, ``parent``, ``outside``, ``missing``,
``symlink``, ``directory``, ``special``, ``suffix``, ``hardlink``, ``too_large``, ``changed``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

#: File types a project may export by default: tables, text, figures, documents, notebooks.
#: No archives (.zip, .tar.gz: they hide their content from a checker), no databases, no
#: pickles or other opaque binaries, and no SVG (as in ACRO's ``blocked_extensions``: a vector
#: plot carries the exact value of every point it draws, i.e. the rows behind a scatter plot,
#: which a checker looking at the picture cannot see; export a PNG). No Parquet or PDF either:
#: the checkers' pages cannot show them, and a checker must see what leaves (export the table
#: as CSV, the figure as PNG). Override per deployment with ``c.EgressApp.allowed_suffixes``.
DEFAULT_ALLOWED_SUFFIXES = (
    ".csv",
    ".tsv",
    ".txt",
    ".md",
    ".png",
    ".jpg",
    ".jpeg",
    ".ipynb",
    ".html",
    ".json",
)
DEFAULT_MAX_FILE_SIZE = 200 * 1024 * 1024
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
    """What may leave: files under ``root`` with an allowed suffix, at most ``max_file_size``."""

    root: str
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    allowed_suffixes: tuple[str, ...] = DEFAULT_ALLOWED_SUFFIXES

    def suffix_allowed(self, name: str) -> bool:
        lower = name.lower()
        return any(lower.endswith(s.lower()) for s in self.allowed_suffixes)


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


def human_size(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``: sizes in refusal messages."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _suffix_of(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return f".{ext.lower()}" if dot and _ else "(none)"


def relative_path(policy: ExportPolicy, path: object) -> str:
    """The requested ``path`` as a normalised path relative to the home directory.

    Accepts a path relative to home or an absolute path under it; refuses anything with
    ``..``, an absolute path elsewhere, an empty path or the home directory itself.
    """
    if not isinstance(path, str) or not path.strip():
        raise ExportRefused("bad_path", "no file path given", status=400)
    if "\x00" in path or len(path) > 4096:
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
    name = rel.rsplit("/", 1)[-1]
    if not policy.suffix_allowed(name):
        allowed = ", ".join(policy.allowed_suffixes)
        raise ExportRefused(
            "suffix",
            f"{rel}: files of type {_suffix_of(name)} may not be exported under this "
            f"project's policy (allowed: {allowed})",
            path=rel,
        )
    if st.st_nlink > 1:
        raise ExportRefused(
            "hardlink",
            f"{rel} has {st.st_nlink} hard links: a file with several names may share its "
            "bytes with a file outside your home directory; export a copy (cp) instead",
            path=rel,
        )
    if st.st_size > policy.max_file_size:
        raise ExportRefused(
            "too_large",
            f"{rel} is {human_size(st.st_size)}, over the export limit of "
            f"{human_size(policy.max_file_size)} per file",
            path=rel,
        )


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


def take_snapshot(fd: int, *, max_size: int | None = None, chunk: int = READ_CHUNK) -> Snapshot:
    """Fix the bytes of the open file ``fd`` by their size and SHA-256: one read pass.

    The bytes are read with ``pread`` from offset 0 (the descriptor's position is left
    alone). ``max_size`` refuses a file that grew past the limit after it was checked.
    """
    digest = hashlib.sha256()
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
