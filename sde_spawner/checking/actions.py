"""Every change to an export request: the requester's (create, version, upload, submit,
withdraw, download) and the checkers' (claim, review).

Each operation checks its rules — who may (:mod:`~sde_spawner.checking.permissions`), what is
allowed (:mod:`~sde_spawner.checking.policies`) — then changes the rows and appends its audit
row in the caller's transaction; states move only through
:func:`~sde_spawner.checking.transitions.transition`. Run an operation with
:func:`~sde_spawner.checking.errors.perform`: a refusal is rolled back and audited as denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from sde_airlock.rules import ExportRules, TypeCheck, summary
from sde_spawner import audit
from sde_spawner.checking import manifest as manifest_mod
from sde_spawner.checking import sweep, uploads
from sde_spawner.checking.errors import IllegalTransition, Invalid, NotFound, Refused
from sde_spawner.checking.limits import LimitSettings, quota_problem, space_problem
from sde_spawner.checking.models import (
    ExportFile,
    ExportRequest,
    ExportVersion,
    FileDecision,
    ReleaseDownload,
    Review,
    utcnow,
)
from sde_spawner.checking.permissions import SYSTEM, active_person, check_can_review_export
from sde_spawner.checking.policies import (
    DEFAULT_RULES,
    AutomatedChecks,
    FileSpec,
    FileVerdict,
    check_verdicts,
    request_body,
    review_outcome,
)
from sde_spawner.checking.queries import (
    BlobRef,
    load,
    own,
    releasable,
    required_approvals,
)
from sde_spawner.checking.states import EDITABLE, REVIEWABLE, Decision, State
from sde_spawner.checking.transitions import transition
from sde_spawner.registry.models import Person

# --- requester: workspace API ---------------------------------------------------------------


def _add_version(
    session: Session, req: ExportRequest, number: int, justification: str, files
) -> ExportVersion:
    version = ExportVersion(request=req, number=number, justification=justification)
    session.add(version)
    for i, f in enumerate(files):
        session.add(
            ExportFile(
                version=version,
                position=i,
                path=f.path,
                description=f.description,
                size=f.size,
                sha256=f.sha256,
            )
        )
    session.flush()
    return version


def _upload_list(req: ExportRequest) -> list[dict]:
    return [
        {"index": f.position, "path": f.path, "uploaded": f.blob_key is not None}
        for f in req.version.files
    ]


def create_request(
    session: Session,
    username: str,
    project: str,
    server_name: str,
    body: Any,
    *,
    rules: ExportRules = DEFAULT_RULES,
    quotas: LimitSettings | None = None,
) -> dict:
    """A new draft request (version 1) of ``username`` on ``project`` with declared files
    (within ``quotas``, if given)."""
    action = "export.created"
    justification, files = request_body(body, action, username, project, rules=rules)
    active_person(session, username, action, project)
    _check_quota(session, action, username, project, files, quotas, new_draft=True)
    now = utcnow()
    req = ExportRequest(
        project_slug=project,
        requester=username,
        server_name=server_name,
        state=str(State.draft),
        justification=justification,
        current_version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(req)
    session.flush()
    _add_version(session, req, 1, justification, files)
    audit.append(
        session,
        action,
        actor=username,
        project=project,
        details={
            "request": req.id,
            "version": 1,
            "server": server_name,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
        },
    )
    return {"id": req.id, "version": 1, "state": req.state, "files": _upload_list(req)}


def new_version(
    session: Session,
    username: str,
    project: str,
    request_id: int,
    body: Any,
    *,
    rules: ExportRules = DEFAULT_RULES,
    quotas: LimitSettings | None = None,
) -> dict:
    """After "returned": a new snapshot version (the old version's reviews stay with it)."""
    action = "export.version.created"
    req = own(session, request_id, action, username, project, lock=True)
    justification, files = request_body(
        body, action, username, project, rules=rules, justification=req.justification
    )
    if req.state != State.returned or req.version.submitted_at is None:
        raise Refused(
            action,
            f"export request {req.id} is {req.state}"
            + (
                f" and version {req.current_version} is not submitted yet"
                if req.state == State.returned
                else ""
            )
            + "; a new version can only follow a returned review",
            actor=username,
            project=project,
            details={"request": req.id},
            status=409,
        )
    _check_quota(
        session, action, username, project, files, quotas, new_draft=False, request_id=req.id
    )
    number = req.current_version + 1
    _add_version(session, req, number, justification, files)
    req.current_version = number
    req.justification = justification
    req.updated_at = utcnow()
    session.flush()
    audit.append(
        session,
        action,
        actor=username,
        project=project,
        details={
            "request": req.id,
            "version": number,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
        },
    )
    return {"id": req.id, "version": number, "state": req.state, "files": _upload_list(req)}


def _check_quota(
    session: Session,
    action: str,
    username: str,
    project: str,
    files: list[FileSpec],
    quotas: LimitSettings | None,
    *,
    new_draft: bool,
    request_id: int | None = None,
) -> None:
    """Refuse (429: too many drafts, 413: too many bytes) a draft or version over a quota."""
    if quotas is None:
        return
    # the requester's Person row lock: one person's drafts are counted one after the other
    session.execute(
        update(Person).where(Person.username == username).values(username=Person.username)
    )
    declared = sum(f.size for f in files)
    held = sweep.usage(session, username, project, exclude_request=request_id)
    problem = quota_problem(held, quotas, new_draft=new_draft, declared=declared)
    if problem is not None:
        status, reason = problem
        raise Refused(
            action,
            reason,
            actor=username,
            project=project,
            details={"quota": True, "declared": declared, "request": request_id},
            status=status,
        )


@dataclass(frozen=True)
class UploadTarget:
    request_id: int
    version: int
    position: int
    path: str
    size: int
    sha256: str


def upload_target(
    session: Session,
    username: str,
    project: str,
    request_id: int,
    position: int,
    *,
    quotas: LimitSettings | None = None,
    free_bytes: int | None = None,
) -> UploadTarget:
    """What an upload to (request, file index) must be, if one is allowed now (and, with
    ``quotas``, fits the project's stored bytes and the ``free_bytes`` of the store)."""
    action = "export.file.uploaded"
    req = own(session, request_id, action, username, project)
    version = req.version
    if req.state not in EDITABLE or version.submitted_at is not None:
        raise Refused(
            action,
            f"export request {req.id} is {req.state}: its files are fixed (a snapshot)",
            actor=username,
            project=project,
            details={"request": req.id, "index": position},
            status=409,
        )
    file = next((f for f in version.files if f.position == position), None)
    if file is None:
        raise NotFound(
            action,
            f"export request {req.id} version {version.number} has no file {position}",
            actor=username,
            project=project,
            details={"request": req.id, "index": position},
        )
    if quotas is not None and file.blob_key is None:
        problem = space_problem(
            sweep.usage(session, username, project),
            quotas,
            size=file.size,
            free_bytes=free_bytes if free_bytes is not None else 2**63,
        )
        if problem is not None:
            raise Refused(
                action,
                problem[1],
                actor=username,
                project=project,
                details={"request": req.id, "index": position, "quota": True},
                status=problem[0],
            )
    return UploadTarget(req.id, version.number, position, file.path, file.size, file.sha256)


def accept_upload(
    session: Session,
    username: str,
    project: str,
    target: UploadTarget,
    blob_key: str | None,
    *,
    content: TypeCheck,
) -> dict:
    """Record that the verified bytes of one declared file are in the blob store.

    ``content`` is what the airlock's inspector found the bytes to be
    (:class:`~sde_spawner.checking.uploads.CheckedUpload`); bytes that are not what the
    file's name says, archives and programs are refused here (and were never stored).
    """
    action = "export.file.uploaded"
    req = own(session, target.request_id, action, username, project, lock=True)
    if (
        req.state not in EDITABLE
        or req.current_version != target.version
        or req.version.submitted_at is not None
    ):
        raise Refused(
            action,
            f"export request {req.id} changed during the upload; upload again",
            actor=username,
            project=project,
            details={"request": req.id, "index": target.position},
            status=409,
        )
    file = next(f for f in req.version.files if f.position == target.position)
    if not content.ok or content.name != file.path:
        problems = list(content.problems) or [
            uploads.Problem("type_mismatch", f"{file.path}: the bytes were not inspected")
        ]
        raise Refused(
            action,
            summary(problems),
            actor=username,
            project=project,
            details=uploads.refusal_details(
                problems,
                request=req.id,
                index=file.position,
                path=file.path,
                detected=content.detected,
            ),
            status=422,
        )
    if blob_key != file.sha256:
        raise Invalid(
            action,
            "uploaded bytes do not match the declared sha256",
            actor=username,
            project=project,
        )
    file.blob_key = blob_key
    file.uploaded_at = utcnow()
    audit.append(
        session,
        action,
        actor=username,
        project=project,
        details={
            "request": req.id,
            "version": req.current_version,
            "index": file.position,
            "path": file.path,
            "size": file.size,
            "sha256": file.sha256,
        },
    )
    return {"id": req.id, "index": file.position, "sha256": file.sha256, "size": file.size}


def submit(session: Session, username: str, project: str, request_id: int) -> dict:
    """draft/returned -> submitted, once every declared file's bytes were uploaded."""
    req = own(session, request_id, "export.submitted", username, project, lock=True)
    version = req.version
    missing = [f.path for f in version.files if f.blob_key is None]
    if missing:
        raise Refused(
            "export.submitted",
            f"{len(missing)} file(s) not uploaded yet: {', '.join(missing[:5])}",
            actor=username,
            project=project,
            details={"request": req.id, "missing": missing[:20]},
            status=409,
        )
    if req.state == State.returned and version.submitted_at is not None:
        raise IllegalTransition(
            "export.submitted",
            f"export request {req.id} was returned: create a new version with the changed "
            "files (POST .../versions) before resubmitting",
            actor=username,
            project=project,
            details={"request": req.id},
            status=409,
        )
    transition(session, req, State.submitted, username, details={"files": len(version.files)})
    version.submitted_at = utcnow()
    return {"id": req.id, "state": req.state, "version": version.number}


def _next_number(session: Session, username: str) -> int:
    """The requester's next request number, taken when a checker first claims a request —
    so every number shown outside the workspace is of a request a checker saw (drafts and
    requests withdrawn before review never take one). Under the requester's Person row lock,
    so two claims at once cannot take the same number."""
    session.execute(
        update(Person).where(Person.username == username).values(username=Person.username)
    )
    last = session.scalar(
        select(func.max(ExportRequest.number)).where(ExportRequest.requester == username)
    )
    return (last or 0) + 1


def withdraw(session: Session, username: str, project: str, request_id: int) -> dict:
    req = own(session, request_id, "export.withdrawn", username, project, lock=True)
    transition(session, req, State.withdrawn, username)
    return {"id": req.id, "state": req.state}


# --- checkers -------------------------------------------------------------------------------


def _may_review(
    session: Session, username: str, req: ExportRequest, action: str, *, claimed_ok: bool
) -> Review | None:
    """Refuse unless ``username`` may review the current version now; their claim, if any."""
    project = req.project_slug
    details = {"request": req.id, "version": req.current_version}
    check_can_review_export(session, username, req, action, details)
    mine = next((r for r in req.version.reviews if r.checker == username), None)
    if mine is not None and mine.submitted_at is not None:
        raise Refused(
            action,
            f"{username} already reviewed version {req.current_version} of export request "
            f"{req.id}; one checker counts once",
            actor=username,
            project=project,
            details=details,
            status=409,
        )
    if State(req.state) not in REVIEWABLE:
        raise Refused(
            action,
            f"export request {req.id} is {req.state}, not waiting for review",
            actor=username,
            project=project,
            details=details,
            status=409,
        )
    if mine is not None and not claimed_ok:
        raise Refused(
            action,
            f"{username} already claimed export request {req.id}",
            actor=username,
            project=project,
            details=details,
            status=409,
        )
    return mine


def _claim(session: Session, username: str, req: ExportRequest) -> Review:
    review = Review(version=req.version, checker=username, claimed_at=utcnow())
    session.add(review)
    if req.state == State.submitted:
        transition(session, req, State.in_review, username, details={"claimed_by": username})
    if req.number is None:
        req.number = _next_number(session, req.requester)
    audit.append(
        session,
        "export.claimed",
        actor=username,
        project=req.project_slug,
        details={"request": req.id, "version": req.current_version},
    )
    session.flush()
    return review


def claim(session: Session, username: str, request_id: int) -> dict:
    """A checker takes the current version for review (first claim: submitted -> in_review)."""
    req = load(session, request_id, "export.claimed", username, lock=True)
    _may_review(session, username, req, "export.claimed", claimed_ok=False)
    _claim(session, username, req)
    return {"id": req.id, "state": req.state}


def submit_review(
    session: Session,
    username: str,
    request_id: int,
    version: int,
    verdicts: Mapping[int, FileVerdict],
    checks: AutomatedChecks | None = None,
) -> dict:
    """A checker's whole review of one version: a decision for every file.

    ``checks`` are the automated disclosure checks of the version's files
    (:class:`~sde_spawner.checking.policies.AutomatedChecks`); approving a file that fails a
    rule (or could not be checked whole) needs a comment saying why it is safe, and the
    override is recorded with the decision (audit row, then the manifest).

    Once ``required_approvals`` distinct checkers have submitted, the outcome is computed and
    the system moves the request to approved, rejected or returned (with the manifest fixed
    on approval).
    """
    failed_checks = checks.failed() if checks is not None else {}
    action = "export.reviewed"
    req = load(session, request_id, action, username, lock=True)
    mine = _may_review(session, username, req, action, claimed_ok=True)
    project = req.project_slug
    if version != req.current_version:
        raise Refused(
            action,
            f"this review is of version {version}, but export request {req.id} is now at "
            f"version {req.current_version}; reload the page",
            actor=username,
            project=project,
            details={"request": req.id, "version": version},
            status=409,
        )
    files = req.version.files
    problems = check_verdicts(files, verdicts, failed_checks)
    if problems:
        raise Invalid(
            action,
            "; ".join(problems),
            actor=username,
            project=project,
            details={"request": req.id},
        )
    if mine is None:
        mine = _claim(session, username, req)
    now = utcnow()
    for f in files:
        v = verdicts[f.id]
        session.add(
            FileDecision(
                review=mine,
                file_id=f.id,
                decision=str(Decision(v.decision)),
                reason_code=v.reason_code or None,
                comment=(v.comment or "").strip(),
            )
        )
    mine.submitted_at = now
    session.flush()
    audit.append(
        session,
        action,
        actor=username,
        project=project,
        details={
            "request": req.id,
            "version": req.current_version,
            "decisions": [
                {
                    "path": f.path,
                    "sha256": f.sha256,
                    "decision": str(verdicts[f.id].decision),
                    "reason_code": verdicts[f.id].reason_code or None,
                    **(
                        {"failed_checks": failed_checks[f.sha256]}
                        if f.sha256 in failed_checks
                        else {}
                    ),
                }
                for f in files
            ],
        },
    )
    required = required_approvals(session, project)
    reviews = {
        r.checker: {d.file_id: d.decision for d in r.decisions}
        for r in req.version.reviews
        if r.submitted_at is not None
    }
    outcome = review_outcome([f.id for f in files], reviews, required)
    if outcome is not None:
        transition(
            session,
            req,
            outcome,
            SYSTEM,
            reason=f"{len(reviews)} of {required} required reviews submitted",
            details={"checkers": sorted(reviews), "completed_by": username},
        )
        if outcome == State.approved:
            req.manifest = manifest_mod.canonical(
                manifest_mod.build_manifest(req, required, checks, _overrides(session, req))
            )
    return {"id": req.id, "state": req.state, "outcome": str(outcome) if outcome else None}


def _overrides(session: Session, req: ExportRequest) -> dict[tuple[str, str], list[str]]:
    """(checker, sha256) -> the automated rules that checker overrode by approving the file,
    as their ``export.reviewed`` audit row of the current version recorded them (what each
    checker saw when they decided; the checks can change between two reviews, e.g. when an
    earlier release of the project appears)."""
    out = {}
    for event in audit.query(session, project=req.project_slug, action="export.reviewed"):
        row = event.to_dict()
        details = row["details"] or {}
        if row["outcome"] != "allowed" or details.get("request") != req.id:
            continue
        if details.get("version") != req.current_version:
            continue
        for d in details.get("decisions", []):
            if d.get("decision") == Decision.approve and d.get("failed_checks"):
                out[(row["actor"], d["sha256"])] = list(d["failed_checks"])
    return out


# --- release --------------------------------------------------------------------------------


def record_download(session: Session, username: str, ref: BlobRef, remote_ip: str = "") -> dict:
    """Audit one download of verified approved bytes; the first moves approved -> released."""
    req = releasable(session, username, ref.request_id, "export.release.downloaded", lock=True)
    session.add(
        ReleaseDownload(
            request_id=req.id,
            file_id=ref.file_id,
            person=username,
            sha256=ref.sha256,
            remote_ip=remote_ip[:64],
        )
    )
    if req.state == State.approved:
        transition(session, req, State.released, username, details={"first_file": ref.path})
    audit.append(
        session,
        "export.release.downloaded",
        actor=username,
        project=req.project_slug,
        details={
            "request": req.id,
            "file": ref.file_id,
            "path": ref.path,
            "size": ref.size,
            "sha256": ref.sha256,
            "remote": remote_ip,
        },
    )
    return {"id": req.id, "state": req.state}
