"""The export rules on the trusted side: declarations at create, bytes as they arrive.

A workspace can call the ``sde`` service's export API directly with its own token (from a
terminal or a kernel), past every check of the workspace extension; so the service applies
the same rules itself (:mod:`sde_airlock.rules`, one source of defaults for both sides):

* :func:`declared_files` turns the ``files`` of a request body into :class:`FileSpec`\\ s or
  raises :class:`RulesBroken` with *every* problem: the shape of each entry (the service's
  own business: ``size`` and ``sha256`` fields) and the airlock's rules (allowed types by
  name, sizes, count, path and description lengths, duplicates).
* :class:`CheckedUpload` wraps the blob writer of one upload with the airlock's byte
  inspector (:mod:`sde_airlock.filetypes`): every piece is inspected as it is written (the
  first bytes give the magic number, text is checked as it streams); a file whose bytes
  already fail is not written any further. At completion, once the bytes match their
  declared digest, the whole is judged (JSON and notebooks are parsed from the temporary
  file) *before* the blob is kept: refused bytes never enter the store.

:func:`~sde_spawner.checking.actions.accept_upload` turns a failed :class:`TypeCheck` into an
audited refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sde_airlock.rules import DeclaredFile, ExportRules, Problem, TypeCheck, summary
from sde_spawner.checking.storage import BlobWriter

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {"path", "description", "size", "sha256"}


@dataclass(frozen=True)
class FileSpec:
    path: str
    description: str
    size: int
    sha256: str


class RulesBroken(ValueError):
    """A request body that breaks the export rules; ``problems`` lists every one."""

    def __init__(self, problems: list[Problem]):
        super().__init__(summary(problems))
        self.problems = problems

    @property
    def details(self) -> dict:
        return refusal_details(self.problems)


def refusal_details(problems: list[Problem], **extra: Any) -> dict:
    """Audit details of a refusal: the first problem's code and every problem (at most 20)."""
    return {
        **extra,
        "code": problems[0].code,
        "problems": [p.to_dict() for p in problems[:20]],
    }


def declared_files(raw: Any, rules: ExportRules) -> list[FileSpec]:
    """The declared files of a request body, or :class:`RulesBroken` with every problem."""
    if not isinstance(raw, list):
        raise RulesBroken([Problem("bad_request", "'files' must be a non-empty list")])
    problems: list[Problem] = []
    declared: list[DeclaredFile] = []
    out: list[FileSpec] = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict):
            problems.append(Problem("bad_request", f"file {i} is not an object"))
            continue
        unknown = set(f) - _FIELDS
        if unknown:
            problems.append(
                Problem("bad_request", f"file {i}: unknown field(s) {', '.join(sorted(unknown))}")
            )
        path, desc, size, digest = (f.get(k) for k in ("path", "description", "size", "sha256"))
        desc = "" if desc is None else desc
        shown = path[:200] if isinstance(path, str) else f"file {i}"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(
                Problem("bad_request", f"{shown}: 'size' must be a non-negative integer", shown)
            )
            size = None
        if not isinstance(digest, str) or not _SHA256.match(digest):
            problems.append(
                Problem("bad_request", f"{shown}: 'sha256' must be 64 lowercase hex digits", shown)
            )
        declared.append(DeclaredFile(path, desc, size))  # type: ignore[arg-type]
        out.append(FileSpec(path, desc, size or 0, digest))  # type: ignore[arg-type]
    problems += rules.check_files(declared)
    if problems:
        raise RulesBroken(problems)
    return out


def justification_of(raw: Any, rules: ExportRules) -> str:
    """The request's justification, stripped, or :class:`RulesBroken`."""
    problems = rules.check_justification(raw)
    if problems:
        raise RulesBroken(problems)
    return raw.strip()


class _Refused(Exception):
    """Raised inside the blob writer's commit hook: the bytes are not kept."""


class CheckedUpload:
    """One upload: pieces go through the airlock's inspector, then into the blob writer.

    Runs on the upload's writer thread (never on the event loop). :meth:`finish` gives
    ``(blob key, check)``; the key is ``None`` when the bytes were refused (nothing stored).
    """

    def __init__(self, writer: BlobWriter, path: str, rules: ExportRules):
        self.writer = writer
        self.inspector = rules.inspector(path)
        # The name again (the rules may have changed since the request was declared).
        self.name_problems = tuple(rules.check_type(path))
        self.refused = bool(self.name_problems)
        if self.refused:
            writer.abort()

    def write(self, chunk: bytes) -> None:
        if self.refused:
            return  # the rest of a refused file is read and dropped, never written
        self.inspector.feed(chunk)
        if self.inspector.failed:
            self.refused = True
            self.writer.abort()
            return
        self.writer.write(chunk)

    def finish(self) -> tuple[str | None, TypeCheck]:
        """Judge the whole; keep the blob only if it passes. ``BlobError`` if the bytes do
        not match their declaration."""
        if self.refused:
            inspector = self.inspector
            if inspector.failed:  # the bytes fail on their own: no need to read them back
                check = inspector.result()
                return None, replace(check, problems=self.name_problems + check.problems)
            return None, TypeCheck(
                inspector.name, inspector.expected, "", inspector.size, self.name_problems
            )
        verdict: list[TypeCheck] = []

        def inspect(tmp: Path) -> None:
            verdict.append(self.inspector.result(tmp.read_bytes))
            if not verdict[0].ok:
                raise _Refused

        try:
            key = self.writer.finish(inspect=inspect)
        except _Refused:
            return None, verdict[0]
        return key, verdict[0]

    def abort(self) -> None:
        self.writer.abort()
