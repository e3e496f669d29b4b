"""The export rules: which files may leave a workspace and what an export request must hold.

One :class:`ExportRules` value holds every limit (allowed file types, the largest file, the
most files in one request, the longest justification, description and path), with the one
set of defaults for both sides. The hub reads it from the ``SDE_EXPORT_*`` settings
(:data:`EXPORT_SETTINGS`, :meth:`ExportRules.from_env`), gives the same variables to the
``sde`` service and to every workspace, and so the workspace extension's early feedback and
the service's decision agree. The service is the authority: a workspace can call it
directly, so everything here is checked there again.

Each ``check_*`` method returns *every* problem it finds (a list of
:class:`~sde_airlock.filetypes.Problem`, empty when all is well), so a researcher can fix a
request in one go. What the bytes of a file are is :mod:`sde_airlock.filetypes`'s business;
:meth:`ExportRules.inspector` starts that check for one declared file.

Problem codes: ``bad_request``, ``justification``, ``no_files``, ``too_many_files``,
``bad_path``, ``duplicate``, ``description``, ``type_not_allowed``, ``too_large``, and those
of :mod:`sde_airlock.filetypes` (``type_mismatch``, ``archive``, ``executable``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from sde_airlock.filetypes import (
    ARCHIVE_SUFFIXES,
    EXECUTABLE_SUFFIXES,
    Inspector,
    Problem,
    TypeCheck,
    check_bytes,
    suffix_of,
)

__all__ = [
    "DEFAULT_ALLOWED_SUFFIXES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_FILE_BYTES",
    "EXPORT_SETTINGS",
    "DeclaredFile",
    "ExportRules",
    "Problem",
    "TypeCheck",
    "summary",
]

#: File types a project may export by default: tables, text, figures, documents, notebooks.
#: No archives (.zip, .tar.gz: they hide their content from a checker), no databases, no
#: pickles or other opaque binaries, and no SVG (as in ACRO's ``blocked_extensions``: a vector
#: plot carries the exact value of every point it draws, i.e. the rows behind a scatter plot,
#: which a checker looking at the picture cannot see; export a PNG). No Parquet or PDF either:
#: the checkers' pages cannot show them, and a checker must see what leaves (export the table
#: as CSV, the figure as PNG). Archives and programs can never be allowed.
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
DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_FILES = 20
DEFAULT_MAX_JUSTIFICATION = 10_000
DEFAULT_MAX_DESCRIPTION = 5_000
DEFAULT_MAX_PATH = 1024

#: The setting (environment variable) behind each field of :class:`ExportRules`.
SETTING_OF = {
    "allowed_suffixes": "SDE_EXPORT_ALLOWED_TYPES",
    "max_file_bytes": "SDE_EXPORT_MAX_FILE_BYTES",
    "max_files": "SDE_EXPORT_MAX_FILES",
    "max_justification": "SDE_EXPORT_MAX_JUSTIFICATION",
    "max_description": "SDE_EXPORT_MAX_DESCRIPTION",
    "max_path": "SDE_EXPORT_MAX_PATH",
}
#: Settings the hub passes to the ``sde`` service and to every workspace, unchanged.
EXPORT_SETTINGS = tuple(SETTING_OF.values())


def _normal_suffix(raw: str) -> str:
    text = raw.strip().lower()
    return text if text.startswith(".") else f".{text}"


def _never(suffix: str) -> str | None:
    if suffix in ARCHIVE_SUFFIXES:
        return "archives are never exported, since a checker cannot see inside them"
    if suffix in EXECUTABLE_SUFFIXES:
        return "programs are never exported"
    return None


def human_size(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``: sizes in messages."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class DeclaredFile:
    """One file of a request as declared: its path, description and (if known) size."""

    path: str
    description: str = ""
    size: int | None = None


@dataclass(frozen=True)
class ExportRules:
    """Every export limit; the defaults are the project's (see the module docstring)."""

    allowed_suffixes: tuple[str, ...] = DEFAULT_ALLOWED_SUFFIXES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_files: int = DEFAULT_MAX_FILES
    max_justification: int = DEFAULT_MAX_JUSTIFICATION
    max_description: int = DEFAULT_MAX_DESCRIPTION
    max_path: int = DEFAULT_MAX_PATH
    _allowed: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.allowed_suffixes, str):
            raise ValueError("allowed_suffixes must be a list of name endings, not one string")
        suffixes = tuple(dict.fromkeys(_normal_suffix(s) for s in self.allowed_suffixes if s))
        for suffix in suffixes:
            why = _never("." + suffix.rsplit(".", 1)[-1])
            if suffix == "." or "/" in suffix or (suffix.count(".") > 1 and not why):
                raise ValueError(f"{suffix!r} is not one file name ending (such as .csv)")
            if why:
                raise ValueError(f"{suffix} cannot be an allowed export type: {why}")
        object.__setattr__(self, "allowed_suffixes", suffixes)
        object.__setattr__(self, "_allowed", frozenset(suffixes))
        for f in fields(self):
            if f.name.startswith("max_"):
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{f.name} must be a positive whole number, not {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExportRules:
        """The rules from the ``SDE_EXPORT_*`` settings (unset or empty: the default).

        ``SDE_EXPORT_ALLOWED_TYPES`` is a comma-separated list of endings (``.csv,.png``);
        the others are whole numbers. A bad value raises ``ValueError`` naming the setting.
        """
        return rules_from_env(cls, SETTING_OF, env, "export")

    def to_env(self) -> dict[str, str]:
        """The settings that give these rules (for a workspace or a service process)."""
        return {
            setting: ",".join(value) if isinstance(value, tuple) else str(value)
            for name, setting in SETTING_OF.items()
            for value in [getattr(self, name)]
        }

    def to_dict(self) -> dict:
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name in SETTING_OF
            for value in [getattr(self, name)]
        }

    # --- one file ---------------------------------------------------------------------------

    def suffix_allowed(self, name: str) -> bool:
        suffix = suffix_of(name)
        return bool(suffix) and suffix in self._allowed and _never(suffix) is None

    def check_type(self, path: str) -> list[Problem]:
        """Is the file's type, as its name says, one that may leave?"""
        suffix = suffix_of(path)
        why = _never(suffix)
        if why:
            return [
                Problem(
                    "type_not_allowed",
                    f"{path}: files of type {suffix} may not be exported under any policy: "
                    f"{why} (allowed: {', '.join(self.allowed_suffixes)})",
                    path,
                )
            ]
        if not self.suffix_allowed(path):
            return [
                Problem(
                    "type_not_allowed",
                    f"{path}: files of type {suffix or '(none)'} may not be exported under "
                    f"this project's policy (allowed: {', '.join(self.allowed_suffixes)})",
                    path,
                )
            ]
        return []

    def check_path(self, path: object) -> list[Problem]:
        """A plain relative path: not empty, not too long, no NUL or control characters,
        no ``..`` and not absolute."""
        if not isinstance(path, str) or not path.strip():
            return [Problem("bad_path", "each file needs a path")]
        shown = path[:200]
        out = []
        if len(path) > self.max_path:
            out.append(
                Problem("bad_path", f"{shown}…: the path is longer than {self.max_path} characters")
            )
        if any(unicodedata.category(ch) == "Cc" for ch in path):
            out.append(Problem("bad_path", f"{shown!r}: the path holds control characters", shown))
        if path.startswith("/") or ".." in path.split("/"):
            out.append(
                Problem(
                    "bad_path",
                    f"{shown}: not a plain path relative to the home directory ('..' and "
                    "absolute paths are not allowed)",
                    shown,
                )
            )
        return out

    def check_size(self, path: str, size: int) -> list[Problem]:
        if size > self.max_file_bytes:
            return [
                Problem(
                    "too_large",
                    f"{path} is {human_size(size)}, over the export limit of "
                    f"{human_size(self.max_file_bytes)} per file",
                    path,
                )
            ]
        return []

    def check_description(self, path: str, description: object) -> list[Problem]:
        if not isinstance(description, str) or not description.strip():
            return [
                Problem(
                    "description",
                    f"{path}: describe what the file contains (a description is required)",
                    path,
                )
            ]
        if len(description) > self.max_description:
            return [
                Problem(
                    "description",
                    f"{path}: the description is longer than {self.max_description} characters",
                    path,
                )
            ]
        return []

    def check_file(self, f: DeclaredFile) -> list[Problem]:
        """Every problem with one declared file that its declaration shows (not its bytes)."""
        problems = self.check_path(f.path)
        if problems and not isinstance(f.path, str):
            return problems
        problems += self.check_type(f.path)
        problems += self.check_description(f.path, f.description)
        if f.size is not None:
            problems += self.check_size(f.path, f.size)
        return problems

    # --- a whole request ----------------------------------------------------------------------

    def check_justification(self, justification: object) -> list[Problem]:
        if not isinstance(justification, str) or not justification.strip():
            return [
                Problem(
                    "justification",
                    "a justification is required: say what the files are and why they must leave",
                )
            ]
        if len(justification) > self.max_justification:
            return [
                Problem(
                    "justification",
                    f"the justification is longer than {self.max_justification} characters",
                )
            ]
        return []

    def check_request(self, justification: object, files: Sequence[DeclaredFile]) -> list[Problem]:
        """Every problem with a request: its justification and :meth:`check_files`."""
        return self.check_justification(justification) + self.check_files(files)

    def check_files(self, files: Sequence[DeclaredFile]) -> list[Problem]:
        """Every problem with a request's files: their number, each file's declaration, and
        any path named twice."""
        problems: list[Problem] = []
        if not files:
            problems.append(Problem("no_files", "name at least one file to export"))
        elif len(files) > self.max_files:
            problems.append(
                Problem(
                    "too_many_files",
                    f"one request holds at most {self.max_files} files ({len(files)} given)",
                )
            )
        seen: set[str] = set()
        for f in files:
            problems += self.check_file(f)
            if isinstance(f.path, str) and f.path in seen:
                problems.append(Problem("duplicate", f"{f.path} is listed twice", f.path))
            seen.add(f.path if isinstance(f.path, str) else "")
        return problems

    # --- the bytes ----------------------------------------------------------------------------

    def inspector(self, path: str) -> Inspector:
        """The streamed check of the bytes of the declared file ``path``."""
        return Inspector(path)

    def check_bytes(self, path: str, data: bytes) -> TypeCheck:
        """The same check over bytes in memory."""
        return check_bytes(path, data)


def summary(problems: Iterable[Problem]) -> str:
    """All problems in one sentence for a person (``'2 problems: …; …'``)."""
    items = [p.message for p in problems]
    if len(items) == 1:
        return items[0]
    return f"{len(items)} problems: " + "; ".join(items)


def rules_from_env(cls, setting_of: Mapping[str, str], env: Mapping[str, str], what: str):
    """``cls(**values)`` from the settings named in ``setting_of`` (field -> variable): unset
    or empty keeps the default, ``allowed_suffixes`` is a comma-separated list, the rest whole
    numbers; a bad value raises ``ValueError`` naming the setting. Shared by the export and the
    import rules."""
    values: dict = {}
    for name, setting in setting_of.items():
        raw = (env.get(setting) or "").strip()
        if not raw:
            continue
        if name == "allowed_suffixes":
            values[name] = tuple(s for s in raw.replace(" ", ",").split(",") if s.strip())
            continue
        try:
            values[name] = int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{setting}={raw!r} is not a whole number") from None
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{what} settings: {exc}") from None
