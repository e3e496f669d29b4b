"""The one layer that changes export requests: every rule is checked here, and every change
is written together with its audit row in the caller's transaction.

Operations take a SQLAlchemy session and plain arguments (who is acting comes from the
authenticated identity, never from a request body), return plain dicts, and raise
:class:`Refused` (with a reason a person can read) when a rule says no. :func:`perform` runs an
operation in its own transaction: it commits on success; on a refusal it rolls the change back
and commits the *denied* audit event in a fresh transaction, then re-raises.

:func:`transition` is the only code that moves a request between states; it checks
:data:`~sde_spawner.checking.states.TRANSITIONS` and the actor's role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from sde_airlock.rules import ExportRules, TypeCheck, summary
from sde_spawner import audit
from sde_spawner.audit.canonical import format_timestamp
from sde_spawner.checking import manifest as manifest_mod
from sde_spawner.checking import sweep, uploads
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
from sde_spawner.checking.states import (
    DECIDED,
    EDITABLE,
    REASON_CODES,
    RELEASABLE,
    REVIEWABLE,
    Actor,
    Decision,
    State,
    allowed_actor,
)
from sde_spawner.registry.models import Membership, Person, PersonStatus, Project, Role

T = TypeVar("T")

MAX_COMMENT = 5_000
#: The export rules (types, sizes, counts, text lengths) are the airlock's: sde_airlock.rules.
DEFAULT_RULES = ExportRules()
DEFAULT_MAX_FILE_BYTES = DEFAULT_RULES.max_file_bytes


# --- who acts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who takes an action: a person (by hub username) or the service itself."""

    name: str
    system: bool = False


SYSTEM = Principal("system", system=True)


def _principal(actor: Principal | str) -> Principal:
    return actor if isinstance(actor, Principal) else Principal(str(actor))


# --- refusals -------------------------------------------------------------------------------


class Refused(Exception):
    """A rule said no. ``reason`` is for people; ``action`` names the audited action."""

    status = 403

    def __init__(
        self,
        action: str,
        reason: str,
        *,
        actor: str | None,
        project: str | None = None,
        details: dict | None = None,
        status: int | None = None,
    ):
        super().__init__(reason)
        self.action = action
        self.reason = reason
        self.actor = actor
        self.project = project
        self.details = details or {}
        if status is not None:
            self.status = status


class IllegalTransition(Refused):
    """The transition table (or the actor's role) does not allow this state change."""


class NotFound(Refused):
    status = 404


class Invalid(Refused):
    """The caller sent something malformed."""

    status = 400


def perform(sessionmaker, operation: Callable[..., T], /, *args, **kwargs) -> T:
    """Run ``operation(session, *args, **kwargs)`` in one transaction.

    Commits on success. On :class:`Refused` the transaction is rolled back and the denial is
    audited (outcome ``denied``) and committed in a transaction of its own, then re-raised.
    """
    return perform_gated(sessionmaker, None, operation, *args, **kwargs)


def perform_gated(
    sessionmaker,
    audit_denial: Callable[[Refused], bool] | None,
    operation: Callable[..., T],
    /,
    *args,
    **kwargs,
) -> T:
    """:func:`perform`, where ``audit_denial(exc)`` decides whether a refusal gets its own
    audit row (False: the flood limiter counts it into an aggregated row instead)."""
    with sessionmaker() as session:
        try:
            result = operation(session, *args, **kwargs)
            session.commit()
            return result
        except Refused as exc:
            session.rollback()
            if audit_denial is None or audit_denial(exc):
                record_denial(session, exc)
                session.commit()
            raise


def record_denial(session: Session, exc: Refused) -> None:
    audit.append(
        session,
        exc.action,
        actor=(exc.actor or "(unidentified)")[:64],
        project=exc.project,
        outcome="denied",
        reason=exc.reason[:2000],
        details=exc.details or None,
    )


# --- registry facts -------------------------------------------------------------------------


def _person(session: Session, username: str) -> Person | None:
    return session.scalar(select(Person).where(Person.username == username))


def _project(session: Session, slug: str) -> Project | None:
    return session.scalar(select(Project).where(Project.slug == slug))


def checker_projects(session: Session, username: str) -> list[str]:
    """Projects on which ``username`` is an output checker (and currently active)."""
    return sorted(
        session.scalars(
            select(Project.slug)
            .join(Membership, Membership.project_id == Project.id)
            .join(Person, Person.id == Membership.person_id)
            .where(
                Person.username == username,
                Person.status == PersonStatus.active,
                Membership.role == Role.output_checker,
            )
        )
    )


def is_checker(session: Session, username: str, project: str) -> bool:
    return project in checker_projects(session, username)


def roles_for(session: Session, request: ExportRequest, actor: Principal | str) -> set[Actor]:
    """The roles ``actor`` holds on ``request``. The requester is never also its checker."""
    who = _principal(actor)
    if who.system:
        return {Actor.system}
    if who.name == request.requester:
        return {Actor.requester}
    if is_checker(session, who.name, request.project_slug):
        return {Actor.checker}
    return set()


# --- the state machine ----------------------------------------------------------------------


def transition(
    session: Session,
    request: ExportRequest,
    to_state: State | str,
    actor: Principal | str,
    *,
    reason: str | None = None,
    details: dict | None = None,
) -> None:
    """Move ``request`` to ``to_state`` if the table and ``actor``'s role allow it, and write
    the ``export.<to_state>`` audit row in the same transaction (the caller commits).

    Raises :class:`IllegalTransition` naming why otherwise (nothing is changed).
    """
    who = _principal(actor)
    try:
        target = State(to_state)
    except ValueError:
        raise IllegalTransition(
            f"export.{to_state}",
            f"{to_state!r} is not an export request state",
            actor=who.name,
            project=request.project_slug,
            details={"request": request.id},
        ) from None
    source = State(request.state)
    base = {"request": request.id, "from": str(source), "to": str(target)}
    needed = allowed_actor(source, target)
    if needed is None:
        raise IllegalTransition(
            f"export.{target}",
            f"export request {request.id} is {source}; it cannot become {target}",
            actor=who.name,
            project=request.project_slug,
            details=base,
        )
    if needed not in roles_for(session, request, who):
        raise IllegalTransition(
            f"export.{target}",
            f"only the {needed} may move an export request from {source} to {target}; "
            f"{who.name} is not the {needed} of request {request.id}",
            actor=who.name,
            project=request.project_slug,
            details={**base, "required_role": str(needed)},
        )
    now = utcnow()
    request.state = str(target)
    request.updated_at = now
    if target in (State.approved, State.rejected, State.returned):
        request.decided_at = now
    audit.append(
        session,
        f"export.{target}",
        actor=who.name,
        project=request.project_slug,
        reason=reason,
        details={**base, "version": request.current_version, **(details or {})},
    )
    session.flush()


# --- pure rules -----------------------------------------------------------------------------


def review_outcome(
    file_ids: Iterable[int], reviews: Mapping[str, Mapping[int, str]], required: int
) -> State | None:
    """The outcome of one version's review round, or None while fewer than ``required``
    distinct checkers have submitted.

    ``reviews`` maps checker -> {file id -> decision}. Every file approved by every checker
    -> approved; any reject -> rejected; anything else (changes requested) -> returned.
    """
    if len(reviews) < max(1, required):
        return None
    files = list(file_ids)
    decisions = [d.get(f) for d in reviews.values() for f in files]
    if any(d == Decision.reject for d in decisions):
        return State.rejected
    if all(d == Decision.approve for d in decisions):
        return State.approved
    return State.returned


def file_outcome(decisions: Iterable[str]) -> str:
    """One file's outcome from all checkers' decisions on it."""
    ds = list(decisions)
    if not ds:
        return "not reviewed"
    if any(d == Decision.reject for d in ds):
        return "rejected"
    if ds and all(d == Decision.approve for d in ds):
        return "approved"
    return "changes requested"


FileSpec = uploads.FileSpec


def validate_files(raw: Any, *, rules: ExportRules = DEFAULT_RULES) -> list[FileSpec]:
    """The declared files of a request body under the export rules (:mod:`sde_airlock.rules`);
    :class:`~sde_spawner.checking.uploads.RulesBroken` (a ``ValueError``) with every problem
    otherwise."""
    return uploads.declared_files(raw, rules)


# --- loading --------------------------------------------------------------------------------


def _load(
    session: Session, request_id: int, action: str, actor: str, *, lock: bool = False
) -> ExportRequest:
    """One request with its versions, files and reviews.

    ``lock=True`` (every operation that changes it) first takes the request's write lock
    with a no-op UPDATE — the row lock on PostgreSQL, the database write lock on SQLite — so
    concurrent changes of one request run one after the other and each sees the other's
    result (two checkers submitting at once: the second one completes the round).
    """
    if lock:
        session.execute(
            update(ExportRequest)
            .where(ExportRequest.id == request_id)
            .values(updated_at=ExportRequest.updated_at)
        )
    req = session.scalar(
        select(ExportRequest)
        .where(ExportRequest.id == request_id)
        .options(
            selectinload(ExportRequest.versions).selectinload(ExportVersion.files),
            selectinload(ExportRequest.versions)
            .selectinload(ExportVersion.reviews)
            .selectinload(Review.decisions),
        )
        .execution_options(populate_existing=True)
    )
    if req is None:
        raise NotFound(
            action,
            f"there is no export request {request_id}",
            actor=actor,
            details={"request": request_id},
        )
    return req


def _own(
    session: Session,
    request_id: int,
    action: str,
    username: str,
    project: str,
    *,
    lock: bool = False,
) -> ExportRequest:
    """A request of this person on this project (what a workspace may touch)."""
    req = _load(session, request_id, action, username, lock=lock)
    if req.requester != username or req.project_slug != project:
        # Same answer as a missing request: a workspace learns nothing about others' requests.
        raise NotFound(
            action,
            f"there is no export request {request_id} of {username} on {project}",
            actor=username,
            project=project,
            details={"request": request_id},
        )
    return req


def _active(session: Session, username: str, action: str, project: str | None) -> Person:
    person = _person(session, username)
    if person is None or person.status != PersonStatus.active:
        state = "unknown" if person is None else str(person.status)
        raise Refused(
            action,
            f"{username} is {state} in the registry and cannot take part in output checking",
            actor=username,
            project=project,
        )
    return person


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


def _request_body(
    body: Any,
    action: str,
    username: str,
    project: str,
    *,
    rules: ExportRules,
    justification: str | None = None,
) -> tuple[str, list[FileSpec]]:
    """``(justification, files)`` of a new request or version, or :class:`Invalid` naming
    every broken export rule (their codes in the audited details).

    ``justification`` is the one kept when a new version does not give its own.
    """
    try:
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(body) - {"justification", "files"}
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(sorted(unknown))} (requester and project "
                "come from the workspace token)"
            )
        problems = []
        try:
            text = uploads.justification_of(body.get("justification", justification), rules)
        except uploads.RulesBroken as exc:
            problems += exc.problems
        try:
            files = validate_files(body.get("files"), rules=rules)
        except uploads.RulesBroken as exc:
            problems += exc.problems
        if problems:
            raise uploads.RulesBroken(problems)
    except uploads.RulesBroken as exc:
        raise Invalid(
            action, str(exc), actor=username, project=project, details=exc.details
        ) from None
    except ValueError as exc:
        raise Invalid(
            action, str(exc), actor=username, project=project, details={"code": "bad_request"}
        ) from None
    return text, files


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
    justification, files = _request_body(body, action, username, project, rules=rules)
    _active(session, username, action, project)
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
    req = _own(session, request_id, action, username, project, lock=True)
    justification, files = _request_body(
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
    req = _own(session, request_id, action, username, project)
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
    req = _own(session, target.request_id, action, username, project, lock=True)
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
    req = _own(session, request_id, "export.submitted", username, project, lock=True)
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
    req = _own(session, request_id, "export.withdrawn", username, project, lock=True)
    transition(session, req, State.withdrawn, username)
    return {"id": req.id, "state": req.state}


def _requester_view(req: ExportRequest) -> dict:
    """What the requester may know: states, files, and (once decided) outcomes and comments
    without the checkers' names."""
    version = req.version
    decided = State(req.state) in DECIDED
    submitted_reviews = [r for r in version.reviews if r.submitted_at is not None]
    files = []
    for f in version.files:
        item = {
            "file_id": f.id,
            "index": f.position,
            "path": f.path,
            "description": f.description,
            "size": f.size,
            "sha256": f.sha256,
            "uploaded": f.blob_key is not None,
            "outcome": None,
            "comments": [],
        }
        if decided and submitted_reviews:
            ds = [d for r in submitted_reviews for d in r.decisions if d.file_id == f.id]
            item["outcome"] = file_outcome(d.decision for d in ds)
            item["comments"] = [
                {"decision": d.decision, "reason_code": d.reason_code, "comment": d.comment}
                for d in ds
                if d.decision != Decision.approve or d.comment
            ]
        files.append(item)
    return {
        "id": req.id,
        "number": req.number,
        "project": req.project_slug,
        "state": req.state,
        "version": version.number,
        "justification": req.justification,
        "created_at": format_timestamp(req.created_at),
        "updated_at": format_timestamp(req.updated_at),
        "submitted_at": format_timestamp(version.submitted_at) if version.submitted_at else None,
        "decided_at": format_timestamp(req.decided_at) if decided and req.decided_at else None,
        "files": files,
    }


def _own_requests(session: Session, username: str, project: str | None) -> list[ExportRequest]:
    stmt = (
        select(ExportRequest)
        .where(ExportRequest.requester == username)
        .options(
            selectinload(ExportRequest.versions).selectinload(ExportVersion.files),
            selectinload(ExportRequest.versions)
            .selectinload(ExportVersion.reviews)
            .selectinload(Review.decisions),
        )
        .order_by(ExportRequest.id.desc())
    )
    if project is not None:
        stmt = stmt.where(ExportRequest.project_slug == project)
    return list(session.scalars(stmt))


def list_own(session: Session, username: str, project: str) -> list[dict]:
    """The requester's requests on this project (the workspace's view)."""
    return [_requester_view(r) for r in _own_requests(session, username, project)]


def get_own(session: Session, username: str, project: str, request_id: int) -> dict:
    return _requester_view(_own(session, request_id, "export.viewed", username, project))


# --- checkers -------------------------------------------------------------------------------


def _may_review(
    session: Session, username: str, req: ExportRequest, action: str, *, claimed_ok: bool
) -> Review | None:
    """Refuse unless ``username`` may review the current version now; their claim, if any."""
    project = req.project_slug
    details = {"request": req.id, "version": req.current_version}
    if username == req.requester:
        raise Refused(
            action,
            f"{username} made export request {req.id}; a requester can never review their "
            "own request",
            actor=username,
            project=project,
            details=details,
        )
    _active(session, username, action, project)
    if not is_checker(session, username, project):
        raise Refused(
            action,
            f"{username} is not an output checker on project {project}",
            actor=username,
            project=project,
            details=details,
        )
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
    req = _load(session, request_id, "export.claimed", username, lock=True)
    _may_review(session, username, req, "export.claimed", claimed_ok=False)
    _claim(session, username, req)
    return {"id": req.id, "state": req.state}


@dataclass(frozen=True)
class FileVerdict:
    decision: str
    reason_code: str | None = None
    comment: str = ""


def submit_review(
    session: Session,
    username: str,
    request_id: int,
    version: int,
    verdicts: Mapping[int, FileVerdict],
    failed_checks: Mapping[str, str] | None = None,
) -> dict:
    """A checker's whole review of one version: a decision for every file.

    ``failed_checks`` maps a file's sha256 to the automated disclosure rules it fails
    (:mod:`sde_airlock.sdc`); approving such a file needs a comment saying why it is
    safe, and the override is recorded with the decision.

    Once ``required_approvals`` distinct checkers have submitted, the outcome is computed and
    the system moves the request to approved, rejected or returned (with the manifest fixed
    on approval).
    """
    failed_checks = failed_checks or {}
    action = "export.reviewed"
    req = _load(session, request_id, action, username, lock=True)
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
    problems = _check_verdicts(files, verdicts, failed_checks)
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
    required = _required_approvals(session, project)
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
            req.manifest = manifest_mod.canonical(build_manifest(req, required, failed_checks))
    return {"id": req.id, "state": req.state, "outcome": str(outcome) if outcome else None}


def _check_verdicts(
    files: list[ExportFile],
    verdicts: Mapping[int, FileVerdict],
    failed_checks: Mapping[str, str],
) -> list[str]:
    problems = []
    ids = {f.id for f in files}
    extra = set(verdicts) - ids
    if extra:
        problems.append(f"decisions for files not in this version: {sorted(extra)}")
    for f in files:
        v = verdicts.get(f.id)
        if v is None or not v.decision:
            problems.append(f"no decision for {f.path}")
            continue
        if v.decision not in set(Decision):
            problems.append(f"{f.path}: decision must be approve, changes or reject")
            continue
        if v.reason_code and v.reason_code not in REASON_CODES:
            problems.append(f"{f.path}: unknown reason code {v.reason_code!r}")
        if v.decision != Decision.approve and not v.reason_code:
            problems.append(f"{f.path}: a reason is required to request changes or reject")
        failed = failed_checks.get(f.sha256)
        if v.decision == Decision.approve and failed and not (v.comment or "").strip():
            problems.append(
                f"{f.path} fails automated disclosure rules ({failed}): approving it needs a "
                "comment saying why it is safe to release"
            )
        if len(v.comment or "") > MAX_COMMENT:
            problems.append(f"{f.path}: comment longer than {MAX_COMMENT} characters")
    return problems


def _required_approvals(session: Session, project: str) -> int:
    proj = _project(session, project)
    return max(1, proj.required_approvals) if proj is not None and proj.required_approvals else 2


def build_manifest(
    req: ExportRequest, required: int, failed_checks: Mapping[str, str] | None = None
) -> dict:
    """The release manifest of an approved request (pure: built from its rows).

    A file that failed automated disclosure rules carries them (``failed_checks``); the
    checkers' comments saying why it was approved anyway are in their decisions.
    """
    failed_checks = failed_checks or {}
    version = req.version
    reviews = [r for r in version.reviews if r.submitted_at is not None]
    by_id = {f.id: f for f in version.files}
    return {
        "format": manifest_mod.FORMAT,
        "request": req.number,  # the requester's number, not the global id (a channel)
        "project": req.project_slug,
        "requester": req.requester,
        "version": version.number,
        "justification": version.justification,
        "submitted_at": format_timestamp(version.submitted_at) if version.submitted_at else None,
        "approved_at": format_timestamp(req.decided_at) if req.decided_at else None,
        "required_approvals": required,
        "files": [
            {
                "path": f.path,
                "description": f.description,
                "size": f.size,
                "sha256": f.sha256,
                **({"failed_checks": failed_checks[f.sha256]} if f.sha256 in failed_checks else {}),
            }
            for f in version.files
        ],
        "reviews": [
            {
                "checker": r.checker,
                "submitted_at": format_timestamp(r.submitted_at),
                "decisions": [
                    {
                        "path": by_id[d.file_id].path,
                        "sha256": by_id[d.file_id].sha256,
                        "decision": d.decision,
                        "reason_code": d.reason_code,
                        "comment": d.comment,
                    }
                    for d in sorted(r.decisions, key=lambda d: by_id[d.file_id].position)
                ],
            }
            for r in sorted(reviews, key=lambda r: r.checker)
        ],
    }


# --- checker views --------------------------------------------------------------------------


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


OPEN = "open"


@dataclass
class QueueFilter:
    project: str | None = None
    state: str = OPEN  # "open" (submitted + in_review), "all" or one state
    older_than_days: float | None = None


def queue(session: Session, username: str, flt: QueueFilter | None = None) -> dict:
    """The checker's queue: submitted requests on the projects they check, oldest first."""
    flt = flt or QueueFilter()
    projects = checker_projects(session, username)
    now = datetime.now(UTC)
    stmt = (
        select(ExportRequest)
        .where(
            ExportRequest.project_slug.in_(projects),
            ExportRequest.state != str(State.draft),
        )
        .options(
            selectinload(ExportRequest.versions).selectinload(ExportVersion.files),
            selectinload(ExportRequest.versions).selectinload(ExportVersion.reviews),
        )
    )
    if flt.project:
        stmt = stmt.where(ExportRequest.project_slug == flt.project)
    if flt.state == OPEN:
        stmt = stmt.where(ExportRequest.state.in_([str(s) for s in REVIEWABLE]))
    elif flt.state and flt.state != "all":
        stmt = stmt.where(ExportRequest.state == flt.state)
    required = {slug: _required_approvals(session, slug) for slug in projects}
    items = []
    for req in session.scalars(stmt):
        version = req.version
        submitted = version.submitted_at
        if flt.older_than_days is not None and (
            submitted is None or now - submitted < timedelta(days=flt.older_than_days)
        ):
            continue
        mine = next((r for r in version.reviews if r.checker == username), None)
        items.append(
            {
                "id": req.id,
                "project": req.project_slug,
                "requester": req.requester,
                "state": req.state,
                "version": version.number,
                "files": len(version.files),
                "bytes": sum(f.size for f in version.files),
                "submitted_at": submitted,
                "age": _age(submitted, now),
                "reviews_done": sum(1 for r in version.reviews if r.submitted_at is not None),
                "required": required.get(req.project_slug, 2),
                "mine": (
                    "reviewed"
                    if mine is not None and mine.submitted_at
                    else "claimed"
                    if mine is not None
                    else ""
                ),
                "own": req.requester == username,
            }
        )
    items.sort(key=lambda i: (i["submitted_at"] or now, i["id"]))
    return {"projects": projects, "items": items, "filter": flt}


def review_page(session: Session, username: str, request_id: int) -> dict:
    """What a checker sees of one request. Other checkers' decisions stay hidden until this
    checker has submitted their own review (or the round is decided)."""
    action = "export.request.viewed"
    req = _load(session, request_id, action, username)
    project = req.project_slug
    if username == req.requester:
        raise Refused(
            action,
            f"{username} made export request {req.id}; a requester cannot open it for "
            "review (see your releases page for its status)",
            actor=username,
            project=project,
            details={"request": req.id},
        )
    _active(session, username, action, project)
    if not is_checker(session, username, project):
        raise Refused(
            action,
            f"{username} is not an output checker on project {project}",
            actor=username,
            project=project,
            details={"request": req.id},
        )
    if req.state == State.draft:
        raise NotFound(
            action,
            f"export request {req.id} has not been submitted",
            actor=username,
            project=project,
        )
    version = req.version
    mine = next((r for r in version.reviews if r.checker == username), None)
    mine_done = mine is not None and mine.submitted_at is not None
    show_others = mine_done or State(req.state) in DECIDED
    others = [
        {
            "checker": r.checker,
            "submitted_at": r.submitted_at,
            "decisions": {d.file_id: d for d in r.decisions},
        }
        for r in version.reviews
        if r.checker != username and r.submitted_at is not None and show_others
    ]
    reviewable = State(req.state) in REVIEWABLE and not mine_done
    history = [
        {
            "number": v.number,
            "submitted_at": v.submitted_at,
            "files": [
                {
                    "path": f.path,
                    "outcome": file_outcome(
                        d.decision for r in v.reviews for d in r.decisions if d.file_id == f.id
                    ),
                    "comments": [
                        d.comment
                        for r in v.reviews
                        for d in r.decisions
                        if d.file_id == f.id and d.comment
                    ],
                }
                for f in v.files
            ],
        }
        for v in req.versions
        if v.number < version.number
    ]
    return {
        "req": {
            "id": req.id,
            "project": project,
            "requester": req.requester,
            "state": req.state,
            "justification": version.justification,
            "created_at": req.created_at,
            "submitted_at": version.submitted_at,
            "decided_at": req.decided_at,
            "version": version.number,
        },
        "files": [
            {
                "id": f.id,
                "path": f.path,
                "description": f.description,
                "size": f.size,
                "sha256": f.sha256,
                "blob_key": f.blob_key,
            }
            for f in version.files
        ],
        "mine": (
            None
            if mine is None
            else {
                "claimed_at": mine.claimed_at,
                "submitted_at": mine.submitted_at,
                "decisions": {d.file_id: d for d in mine.decisions},
            }
        ),
        "others": others,
        "others_hidden": not show_others,
        "reviews_done": sum(1 for r in version.reviews if r.submitted_at is not None),
        "required": _required_approvals(session, project),
        "can_claim": reviewable and mine is None,
        "can_review": reviewable and mine is not None,
        "history": history,
    }


@dataclass(frozen=True)
class BlobRef:
    file_id: int
    request_id: int
    project: str
    path: str
    size: int
    sha256: str
    blob_key: str


def current_files(session: Session, request_id: int) -> list[tuple[str, str, str | None]]:
    """(path, sha256, blob key) of the files of a request's current version. No access check
    and no audit: for the service's own use before :func:`submit_review` (which checks)."""
    req = session.get(ExportRequest, request_id)
    if req is None or req.version is None:
        return []
    return [(f.path, f.sha256, f.blob_key) for f in req.version.files]


def file_for_checker(session: Session, username: str, file_id: int) -> BlobRef:
    """A file a checker may preview (any version of a request on a project they check)."""
    action = "export.file.viewed"
    f = session.get(ExportFile, file_id)
    if f is None or f.blob_key is None:
        raise NotFound(action, f"there is no exported file {file_id}", actor=username)
    req = f.version.request
    project = req.project_slug
    details = {"request": req.id, "file": f.id, "path": f.path}
    if username == req.requester:
        raise Refused(
            action,
            f"{username} made export request {req.id}; requesters do not review their files",
            actor=username,
            project=project,
            details=details,
        )
    _active(session, username, action, project)
    if not is_checker(session, username, project) or req.state == State.draft:
        raise Refused(
            action,
            f"{username} is not an output checker on project {project}",
            actor=username,
            project=project,
            details=details,
        )
    audit.append(
        session, action, actor=username, project=project, details={**details, "sha256": f.sha256}
    )
    return BlobRef(f.id, req.id, project, f.path, f.size, f.sha256, f.blob_key)


# --- release --------------------------------------------------------------------------------


#: What the workspace wrote about a file: shown outside the workspace only once approved.
_WORKSPACE_AUTHORED = ("path", "description", "size", "sha256")


def releases(session: Session, username: str) -> list[dict]:
    """The person's submitted requests (all projects) as seen *outside* the workspace.

    Everything the workspace wrote — the justification, file names, descriptions, declared
    sizes and digests — is text that has not left the environment until checkers approve
    it, so this page shows it only for approved files of approved (or released) requests.
    Otherwise it shows the state, the file numbers and the checkers' own comments; the
    researcher reads the rest on the export page inside the workspace. Drafts (never seen by
    a checker) are not listed at all.
    """
    out = []
    for req in sorted(
        _own_requests(session, username, None), key=lambda r: r.number or 0, reverse=True
    ):
        if req.number is None:  # no checker has seen it yet (drafts, unclaimed, withdrawn)
            continue
        view = _requester_view(req)
        releasable = State(req.state) in RELEASABLE
        if not releasable:
            view["justification"] = None
        for f in view["files"]:
            if not (releasable and f["outcome"] == "approved"):
                for key in _WORKSPACE_AUTHORED:
                    f[key] = None
        out.append(view)
    return out


def _releasable(
    session: Session, username: str, request_id: int, action: str, *, lock: bool = False
) -> ExportRequest:
    req = _load(session, request_id, action, username, lock=lock)
    project = req.project_slug
    if req.requester != username:
        raise Refused(
            action,
            f"only the requester ({req.requester}) may download the outputs of export "
            f"request {req.id}",
            actor=username,
            project=project,
            details={"request": req.id},
        )
    _active(session, username, action, project)
    if State(req.state) not in RELEASABLE:
        raise Refused(
            action,
            f"export request {req.id} is {req.state}: nothing is approved for release",
            actor=username,
            project=project,
            details={"request": req.id},
            status=409,
        )
    return req


def _by_number(session: Session, username: str, number: int, action: str) -> int:
    """The id of ``username``'s request numbered ``number`` (the number shown outside)."""
    rid = session.scalar(
        select(ExportRequest.id).where(
            ExportRequest.requester == username, ExportRequest.number == number
        )
    )
    if rid is None:
        raise NotFound(
            action,
            f"{username} has no export request number {number}",
            actor=username,
            details={"number": number},
        )
    return rid


def release_file_by_number(session: Session, username: str, number: int, position: int) -> BlobRef:
    """:func:`release_file` of the requester's request ``number``, file ``position`` (1-based,
    as the releases page numbers them): the outside page never names global ids."""
    action = "export.release.downloaded"
    req = _releasable(session, username, _by_number(session, username, number, action), action)
    f = next((f for f in req.version.files if f.position == position - 1), None)
    if f is None:
        raise NotFound(
            action,
            f"request {number} has no approved file {position}",
            actor=username,
            project=req.project_slug,
            details={"request": req.id, "position": position},
        )
    return release_file(session, username, req.id, f.id)


def release_manifest_by_number(
    session: Session, username: str, number: int
) -> tuple[int, str, str]:
    """:func:`release_manifest` of the requester's own request ``number``."""
    action = "export.manifest.viewed"
    return release_manifest(session, username, _by_number(session, username, number, action))


def release_file(session: Session, username: str, request_id: int, file_id: int) -> BlobRef:
    """The approved file the requester asks for (checked; nothing recorded yet)."""
    action = "export.release.downloaded"
    req = _releasable(session, username, request_id, action)
    f = next((f for f in req.version.files if f.id == file_id), None)
    if f is None or f.blob_key is None:
        raise NotFound(
            action,
            f"file {file_id} is not part of the approved version of export request {req.id}",
            actor=username,
            project=req.project_slug,
            details={"request": req.id, "file": file_id},
        )
    return BlobRef(f.id, req.id, req.project_slug, f.path, f.size, f.sha256, f.blob_key)


def record_download(session: Session, username: str, ref: BlobRef, remote_ip: str = "") -> dict:
    """Audit one download of verified approved bytes; the first moves approved -> released."""
    req = _releasable(session, username, ref.request_id, "export.release.downloaded", lock=True)
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


def release_manifest(session: Session, username: str, request_id: int) -> tuple[int, str, str]:
    """(request id, project, canonical manifest text) for the requester or a checker."""
    action = "export.manifest.viewed"
    req = _load(session, request_id, action, username)
    project = req.project_slug
    if username != req.requester and not is_checker(session, username, project):
        raise Refused(
            action,
            f"{username} is neither the requester nor a checker of export request {req.id}",
            actor=username,
            project=project,
            details={"request": req.id},
        )
    if State(req.state) not in RELEASABLE or not req.manifest:
        raise NotFound(
            action,
            f"export request {req.id} is {req.state}: it has no release manifest",
            actor=username,
            project=project,
            details={"request": req.id},
        )
    return req.id, project, req.manifest
