"""The import rules: which files may come *into* a workspace, and what an import request holds.

The airlock's other door. A project member uploads files from the hub's pages (outside the
workspace); a checker approves them; approved files appear read-only under ``/imports``.
:class:`ImportRules` holds every limit of that door (allowed types, the largest file, the most
files and bytes in one request, the longest justification and description) with one set of
defaults, read from the ``SDE_IMPORT_*`` settings (:data:`SETTING_OF`,
:meth:`ImportRules.from_env`). It shares the export side's vocabulary and machinery: the byte
inspector of :mod:`sde_airlock.filetypes` decides what a file really is (so a program or an
archive renamed ``lookup.csv`` is refused, as on the way out), and problems are
:class:`~sde_airlock.filetypes.Problem`\\ s summarised by :func:`sde_airlock.rules.summary`.

File names are *names*, not paths: a name with a directory part, ``..``, a leading dot,
control characters or characters outside a plain set is refused (:meth:`ImportRules.check_name`),
so a name can never point outside the request's own directory under ``/imports``.

Problem codes: ``bad_name``, ``duplicate``, ``no_files``, ``too_many_files``, ``too_large``,
``justification``, ``description``, ``type_not_allowed`` and the byte inspector's
``type_mismatch``, ``archive``, ``executable``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from sde_airlock.filetypes import (
    ARCHIVE_SUFFIXES,
    EXECUTABLE_SUFFIXES,
    Problem,
    TypeCheck,
    check_bytes,
    suffix_of,
)
from sde_airlock.rules import human_size, rules_from_env

__all__ = ["DEFAULT_IMPORT_SUFFIXES", "SETTING_OF", "ImportRules", "Problem", "TypeCheck"]

#: What researchers bring in by default: code, lookup tables, code lists and reference text.
#: Never archives (nobody can check what is inside) and never programs (binaries, ``#!``
#: scripts, shell and batch files: the byte inspector refuses them whatever the name says).
DEFAULT_IMPORT_SUFFIXES = (
    ".csv",
    ".tsv",
    ".txt",
    ".md",
    ".json",
    ".py",
    ".r",
    ".sql",
    ".ipynb",
    ".yaml",
    ".yml",
    ".png",
)
DEFAULT_MAX_FILE_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_FILES = 10
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_JUSTIFICATION = 10_000
DEFAULT_MAX_DESCRIPTION = 5_000
MAX_NAME = 200

#: The setting (environment variable) behind each field of :class:`ImportRules`.
SETTING_OF = {
    "allowed_suffixes": "SDE_IMPORT_ALLOWED_TYPES",
    "max_file_bytes": "SDE_IMPORT_MAX_FILE_BYTES",
    "max_files": "SDE_IMPORT_MAX_FILES",
    "max_request_bytes": "SDE_IMPORT_MAX_REQUEST_BYTES",
    "max_justification": "SDE_IMPORT_MAX_JUSTIFICATION",
    "max_description": "SDE_IMPORT_MAX_DESCRIPTION",
}
IMPORT_SETTINGS = tuple(SETTING_OF.values())

#: A plain file name: starts with a letter or digit; letters, digits, ``._-+()``
#: ``+`` and single spaces after that.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+()\- ]*$")


def _never(suffix: str) -> str | None:
    if suffix in ARCHIVE_SUFFIXES:
        return "archives are never imported, since a checker cannot see inside them"
    if suffix in EXECUTABLE_SUFFIXES:
        return "programs are never imported"
    return None


@dataclass(frozen=True)
class ImportRules:
    """Every import limit; the defaults are the project's (see the module docstring)."""

    allowed_suffixes: tuple[str, ...] = DEFAULT_IMPORT_SUFFIXES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_files: int = DEFAULT_MAX_FILES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_justification: int = DEFAULT_MAX_JUSTIFICATION
    max_description: int = DEFAULT_MAX_DESCRIPTION
    _allowed: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.allowed_suffixes, str):
            raise ValueError("allowed_suffixes must be a list of name endings, not one string")
        suffixes = []
        for raw in self.allowed_suffixes:
            text = raw.strip().lower()
            suffix = text if text.startswith(".") else f".{text}"
            if suffix == "." or "/" in suffix or suffix.count(".") > 1:
                raise ValueError(f"{suffix!r} is not one file name ending (such as .csv)")
            why = _never(suffix)
            if why:
                raise ValueError(f"{suffix} cannot be an allowed import type: {why}")
            suffixes.append(suffix)
        object.__setattr__(self, "allowed_suffixes", tuple(dict.fromkeys(suffixes)))
        object.__setattr__(self, "_allowed", frozenset(suffixes))
        for f in fields(self):
            if f.name.startswith("max_"):
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{f.name} must be a positive whole number, not {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ImportRules:
        """The rules from the ``SDE_IMPORT_*`` settings (unset or empty: the default); a bad
        value raises ``ValueError`` naming the setting."""
        return rules_from_env(cls, SETTING_OF, env, "import")

    # --- one file ---------------------------------------------------------------------------

    def check_name(self, name: object) -> list[Problem]:
        """A plain file name: no directory part, no ``..``, no leading dot, no control or
        unusual characters, at most :data:`MAX_NAME` characters."""
        if not isinstance(name, str) or not name.strip():
            return [Problem("bad_name", "each file needs a name")]
        shown = name[:80]
        if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
            return [Problem("bad_name", f"{shown!r}: the name holds control characters", shown)]
        if "/" in name or "\\" in name or name in (".", "..") or ".." in name:
            return [
                Problem(
                    "bad_name",
                    f"{shown}: a file name only, without folders or '..' (files are placed in "
                    "the request's own folder under /imports)",
                    shown,
                )
            ]
        if len(name) > MAX_NAME or not _NAME.match(name) or name.endswith((" ", ".")):
            return [
                Problem(
                    "bad_name",
                    f"{shown!r}: names start with a letter or digit and use only letters, "
                    f"digits, '.', '_', '-', '+', brackets and spaces (at most {MAX_NAME} "
                    "characters)",
                    shown,
                )
            ]
        return []

    def check_type(self, name: str) -> list[Problem]:
        suffix = suffix_of(name)
        allowed = ", ".join(self.allowed_suffixes)
        why = _never(suffix)
        if why:
            return [
                Problem(
                    "type_not_allowed",
                    f"{name}: files of type {suffix} may not be imported under any policy: "
                    f"{why} (allowed: {allowed})",
                    name,
                )
            ]
        if not suffix or suffix not in self._allowed:
            return [
                Problem(
                    "type_not_allowed",
                    f"{name}: files of type {suffix or '(none)'} may not be imported "
                    f"(allowed: {allowed})",
                    name,
                )
            ]
        return []

    def check_size(self, name: str, size: int) -> list[Problem]:
        if size > self.max_file_bytes:
            return [
                Problem(
                    "too_large",
                    f"{name} is {human_size(size)}, over the import limit of "
                    f"{human_size(self.max_file_bytes)} per file",
                    name,
                )
            ]
        return []

    def check_bytes(self, name: str, data: bytes) -> TypeCheck:
        """What the bytes of ``name`` really are (the airlock's byte inspector)."""
        return check_bytes(name, data)

    # --- a whole request ----------------------------------------------------------------------

    def check_text(self, what: str, text: object, limit: int, needed: str) -> list[Problem]:
        if not isinstance(text, str) or not text.strip():
            return [Problem(what, needed)]
        if len(text) > limit:
            return [Problem(what, f"the {what} is longer than {limit} characters")]
        return []

    def check_request(
        self, justification: object, description: object, files: Sequence[tuple[str, int]]
    ) -> list[Problem]:
        """Every problem a request shows before its bytes are inspected: ``files`` are
        ``(name, size)`` pairs."""
        problems = self.check_text(
            "justification",
            justification,
            self.max_justification,
            "a justification is required: say what the files are and why the project needs them",
        )
        if description:
            problems += self.check_text(
                "description", description, self.max_description, "describe the files"
            )
        if not files:
            problems.append(Problem("no_files", "choose at least one file to import"))
        elif len(files) > self.max_files:
            problems.append(
                Problem(
                    "too_many_files",
                    f"one import holds at most {self.max_files} files ({len(files)} given)",
                )
            )
        total = 0
        seen: set[str] = set()
        for name, size in files:
            found = self.check_name(name)
            problems += found or self.check_type(name)
            problems += self.check_size(str(name)[:80], size)
            total += size
            if name in seen:
                problems.append(Problem("duplicate", f"{name} is chosen twice", name))
            seen.add(name)
        if total > self.max_request_bytes:
            problems.append(
                Problem(
                    "too_large",
                    f"the files hold {human_size(total)} together, over the limit of "
                    f"{human_size(self.max_request_bytes)} per import",
                )
            )
        return problems
