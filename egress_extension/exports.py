"""One export request, from the paths a researcher names to a submitted request on the service.

:func:`submit_export` is the single code path behind the export page, the HTTP API and the
``sde-export`` command line:

1. :func:`parse_request` checks the body against the airlock's rules
   (:class:`sde_airlock.rules.ExportRules`, the ones the service enforces again): a
   justification, 1..``max_files`` files, each with a path and a description, no path twice,
   text within its length; every problem is named at once.
2. Every path is confined and opened (:func:`egress_extension.files.open_confined`); the
   first refusal ends the request before anything is copied.
3. Each open file is snapshotted: its bytes are fixed by their size and SHA-256 (one read
   pass, no copy in the workspace), and the same pass checks that they are what the file's
   name says (:mod:`sde_airlock.filetypes`).
4. The request is declared to the service (paths, descriptions, sizes, digests), each file
   is streamed from its open descriptor to the upload URL the service returned (the service
   re-hashes the bytes and keeps them only if they match the declared digest), and the
   request is submitted. The service's copy is what checkers review and what is released;
   a file edited while it was being sent fails the request with a reason (``changed``)
   instead of sending bytes nobody declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any

from egress_extension.files import (
    ExportPolicy,
    ExportRefused,
    Snapshot,
    open_confined,
    take_snapshot,
)
from egress_extension.service import ExportService, ServiceError
from sde_airlock.rules import DeclaredFile, ExportRules, Problem, summary
from sde_airlock.sdc import INFO, Finding, Report, Rules, check


@dataclass(frozen=True)
class FileRequest:
    path: str
    description: str


def parse_request(body: Any, *, rules: ExportRules) -> tuple[list[FileRequest], str]:
    """``(files, justification)`` of an export request body, or :class:`ExportRefused` (400)
    naming every problem the airlock's rules find."""

    def bad(message: str) -> ExportRefused:
        return ExportRefused("bad_request", message, status=400)

    if not isinstance(body, dict):
        raise bad("the request must be a JSON object with 'files' and 'justification'")
    unknown = set(body) - {"files", "justification"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    justification = body.get("justification")
    files = body.get("files")
    if not isinstance(files, list):
        files = []
    declared: list[DeclaredFile] = []
    for item in files:
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or set(item) - {"path", "description"}:
            raise bad("each file must be an object with 'path' and 'description'")
        declared.append(DeclaredFile(item.get("path"), item.get("description", "")))
    # Names and sizes are checked on the real file, once it is confined and opened.
    problems = [
        p
        for p in rules.check_request(justification, declared)
        if p.code not in ("type_not_allowed", "bad_path")
    ]
    problems += [p for f in declared for p in _path_problem(f.path)]
    if problems:
        raise bad(summary(problems))
    return (
        [FileRequest(path=f.path, description=f.description.strip()) for f in declared],
        justification.strip(),
    )


def _path_problem(path: object) -> list[Problem]:
    """Only a missing path here: the rest is :func:`~egress_extension.files.open_confined`'s."""
    if isinstance(path, str) and path.strip():
        return []
    return [Problem("bad_path", "each file needs a path")]


def _take_snapshots(policy: ExportPolicy, files: list[FileRequest]) -> list[tuple[str, Snapshot]]:
    """Confine and open every file first, then snapshot each; ``[(relative path, snapshot)]``.

    On success the caller owns the snapshots' descriptors (:func:`_close`); on a refusal
    every descriptor opened so far is closed here.
    """
    opened: list[tuple[int, str]] = []
    try:
        for f in files:
            fd, _st, rel = open_confined(policy, f.path)
            opened.append((fd, rel))
        taken: list[tuple[str, Snapshot]] = []
        for fd, rel in opened:
            try:
                taken.append((rel, take_snapshot(fd, max_size=policy.max_file_size, inspect=rel)))
            except ExportRefused as refused:
                refused.path = rel
                if not refused.message.startswith(f"{rel}: "):
                    refused.message = f"{rel}: {refused.message}"
                raise
        return taken
    except BaseException:
        for fd, _rel in opened:
            os.close(fd)
        raise


def _close(snaps: list[tuple[str, Snapshot]]) -> None:
    for _rel, snap in snaps:
        with contextlib.suppress(OSError):
            os.close(snap.fd)


async def submit_export(
    service: ExportService,
    policy: ExportPolicy,
    files: list[FileRequest],
    justification: str,
    *,
    resubmit: int | None = None,
) -> dict:
    """Snapshot, declare, upload and submit; the request as the researcher should see it.

    Raises :class:`ExportRefused` for a file that may not leave (nothing was sent) or that
    changed while it was being sent (nothing of it was stored), and :class:`ServiceError`
    when the service refuses or fails (with ``request`` set when a draft was already
    created). ``resubmit`` is the id of a returned request to which the files are added as a
    new version.
    """
    snaps = await asyncio.to_thread(_take_snapshots, policy, files)
    request_id: int | None = resubmit
    try:
        declared = [
            {"path": rel, "description": f.description, "size": s.size, "sha256": s.sha256}
            for f, (rel, s) in zip(files, snaps, strict=True)
        ]
        if resubmit is None:
            created = await service.create(justification, declared)
        else:
            created = await service.new_version(resubmit, justification, declared)
        request_id = int(created["id"])
        uploads = {int(u["index"]): u.get("url") for u in created.get("uploads", [])}
        for index, (rel, snap) in enumerate(snaps):
            url = uploads.get(index) or f"api/exports/{request_id}/files/{index}"
            try:
                await service.upload(url, snap.fd, snap.size)
            except ServiceError:
                if snap.changed():
                    raise ExportRefused(
                        "changed",
                        f"{rel} changed while it was being sent, so none of it was kept: "
                        f"export request {request_id} was not submitted. Wait until nothing "
                        "is writing to the file and export it again",
                        status=409,
                        path=rel,
                    ) from None
                raise
        submitted = await service.submit(request_id)
    except ServiceError as exc:
        exc.request = request_id  # type: ignore[attr-defined]
        raise
    finally:
        _close(snaps)
    return {
        "id": request_id,
        "state": submitted.get("state", "submitted"),
        "version": submitted.get("version", created.get("version", 1)),
        "files": declared,
    }


def precheck(policy: ExportPolicy, path: str, rules: Rules, *, max_bytes: int) -> dict:
    """The automated disclosure checks of one file, before it is submitted.

    The same confinement and byte check as an export (a file that could not be exported is
    refused with the same reason) and the same rules the checkers' page shows
    (:mod:`sde_airlock.sdc`); files over ``max_bytes`` are left to the service.
    """
    fd, st, rel = open_confined(policy, path)
    try:
        if st.st_size > max_bytes:
            report = Report(
                "other",
                ["nothing here: the file is too large to check in the workspace"],
                [Finding("manual", INFO, "file", "the checkers' service will run the checks")],
            )
        else:
            with open(fd, "rb", closefd=False) as fh:
                data = fh.read(max_bytes)
            found = policy.rules.check_bytes(rel, data)
            if not found.ok:  # the service would refuse the upload for the same reasons
                raise ExportRefused(
                    found.problems[0].code,
                    "; ".join(p.message for p in found.problems),
                    status=422,
                    path=rel,
                )
            report = check(rel, data, rules)
    finally:
        os.close(fd)
    return {"path": rel, **report.to_dict()}
