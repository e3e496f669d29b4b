"""The one layer that changes import requests: every rule is checked here, and every change is
written together with its audit row in the caller's transaction.

Operations take a SQLAlchemy session and plain arguments (who acts comes from the
authenticated identity, never from a form), return plain dicts and raise
:class:`~sde_spawner.checking.errors.Refused` with a reason a person can read; they run through
:func:`~sde_spawner.checking.errors.perform`, which rolls a refused change back and commits the
*denied* audit row on its own. :func:`transition` is the only code that moves a request
between states; it checks :data:`~sde_spawner.imports.states.TRANSITIONS` and the actor's role.

Who may do what: a member (any role, active, on an approved project) may import into that
project; an output checker of the project who is not the requester, and active, may review
(:func:`check_can_review`); the requester may withdraw while it waits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from sde_airlock.imports import ImportRules
from sde_airlock.rules import summary
from sde_spawner import audit
from sde_spawner.checking.errors import IllegalTransition, Invalid, NotFound, Refused
from sde_spawner.checking.models import utcnow
from sde_spawner.checking.permissions import (
    Principal,
    active_person,
    checker_projects,
    is_checker,
)
from sde_spawner.checking.permissions import check_can_review as check_can_review_request
from sde_spawner.checking.permissions import principal as _principal
from sde_spawner.checking.storage import BlobStore
from sde_spawner.checking.uploads import refusal_details
from sde_spawner.imports.models import ImportFile, ImportRequest, ImportReview
from sde_spawner.imports.states import (
    MOUNTED,
    REVIEWABLE,
    Action,
    Actor,
    Decision,
    State,
    allowed_actor,
    outcome,
)
from sde_spawner.registry.models import Membership, Person, PersonStatus, Project, ProjectStatus

MAX_COMMENT = 5_000
#: The project output-policy key that sets how many checkers must approve an import.
POLICY_KEY = "import_required_approvals"
DEFAULT_REQUIRED = 1


# --- registry facts -------------------------------------------------------------------------


def member_projects(session: Session, username: str) -> list[str]:
    """Approved projects ``username`` (active) is a member of, in any role."""
    return sorted(
        set(
            session.scalars(
                select(Project.slug)
                .join(Membership, Membership.project_id == Project.id)
                .join(Person, Person.id == Membership.person_id)
                .where(
                    Person.username == username,
                    Person.status == PersonStatus.active,
                    Project.status == ProjectStatus.approved,
                )
            )
        )
    )


def required_approvals(session: Session, project: str) -> int:
    """Approvals an import into ``project`` needs: the project's policy, 1 by default."""
    proj = session.scalar(select(Project).where(Project.slug == project))
    value = (proj.output_policy if proj is not None else {}).get(POLICY_KEY, DEFAULT_REQUIRED)
    return max(1, int(value))


def roles_for(session: Session, req: ImportRequest, actor: Principal | str) -> set[Actor]:
    """The roles ``actor`` holds on ``req``. The requester is never also its checker."""
    who = _principal(actor)
    if who.system:
        return {Actor.system}
    if who.name == req.requester:
        return {Actor.requester}
    if is_checker(session, who.name, req.project_slug):
        return {Actor.checker}
    return set()


# --- the state machine ----------------------------------------------------------------------


def transition(
    session: Session,
    req: ImportRequest,
    to_state: State | str,
    actor: Principal | str,
    *,
    reason: str | None = None,
    details: dict | None = None,
) -> None:
    """Move ``req`` to ``to_state`` if the table and ``actor``'s role allow it, and write the
    ``import.<to_state>`` audit row in the same transaction (the caller commits)."""
    who = _principal(actor)
    try:
        target = State(to_state)
    except ValueError:
        raise IllegalTransition(
            Action.refused,
            f"{to_state!r} is not an import request state",
            actor=who.name,
            project=req.project_slug,
            details={"import": req.id},
        ) from None
    source = State(req.state)
    base = {"import": req.id, "from": str(source), "to": str(target)}
    needed = allowed_actor(source, target)
    action = Action(f"import.{target}")
    if needed is None:
        raise IllegalTransition(
            action,
            f"import request {req.id} is {source}; it cannot become {target}",
            actor=who.name,
            project=req.project_slug,
            details=base,
            status=409,
        )
    if needed not in roles_for(session, req, who):
        raise IllegalTransition(
            action,
            f"only the {needed} may move an import request from {source} to {target}; "
            f"{who.name} is not the {needed} of import {req.id}",
            actor=who.name,
            project=req.project_slug,
            details={**base, "required_role": str(needed)},
        )
    now = utcnow()
    req.state = str(target)
    req.updated_at = now
    if target in (State.approved, State.rejected):
        req.decided_at = now
    audit.append(
        session,
        action,
        actor=who.name,
        project=req.project_slug,
        reason=reason,
        details={**base, **(details or {})},
    )
    session.flush()


# --- the requester ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One file as it arrived in the upload form: its name (as the browser sent it) and bytes."""

    name: str
    data: bytes


def _inward(problem):
    """The byte inspector's words for the way in (it speaks of exports)."""
    text = problem.message.replace("never exported", "never imported")
    text = text.replace("export the files in it", "upload the files in it one by one")
    return replace(problem, message=text)


def _refuse(username: str, project: str, problems, **extra) -> Refused:
    return Refused(
        Action.refused,
        summary(problems),
        actor=username,
        project=project,
        details=refusal_details(problems, **extra),
        status=422,
    )


def submit_import(
    session: Session,
    store: BlobStore,
    rules: ImportRules,
    username: str,
    project: str,
    justification: Any,
    description: Any,
    files: list[Upload],
) -> dict:
    """Check and store one upload of files into ``project``; the request is ``submitted``.

    Refuses (audited ``import.refused``) unless ``username`` is an active member of the
    approved project and every file passes the import rules: its name, type, size and what
    its *bytes* are (programs, archives and bytes that are not what the name says are refused
    by the airlock's byte inspector). Nothing is stored unless every file passes.
    """
    if project not in member_projects(session, username):
        raise Refused(
            Action.refused,
            f"{username} is not an active member of an approved project {project!r}",
            actor=username,
            project=project or None,
        )
    problems = rules.check_request(
        justification, description, [(f.name, len(f.data)) for f in files]
    )
    if problems:
        raise _refuse(username, project, problems, files=[f.name[:200] for f in files][:20])
    checks = [rules.check_bytes(f.name, f.data) for f in files]
    problems = [_inward(p) for c in checks for p in c.problems]
    if problems:
        raise _refuse(
            username,
            project,
            problems,
            files=[{"name": c.name, "detected": c.detected, "size": c.size} for c in checks],
        )
    req = ImportRequest(
        project_slug=project,
        requester=username,
        state=str(State.submitted),
        justification=justification.strip(),
        description=(description or "").strip(),
        required_approvals=required_approvals(session, project),
    )
    session.add(req)
    for position, (f, check) in enumerate(zip(files, checks, strict=True)):
        key = store.put(f.data)
        req.files.append(
            ImportFile(
                position=position,
                name=f.name,
                size=len(f.data),
                sha256=key,
                detected=check.detected,
            )
        )
    session.flush()
    audit.append(
        session,
        Action.submitted,
        actor=username,
        project=project,
        details={
            "import": req.id,
            "required_approvals": req.required_approvals,
            "files": [
                {"name": f.name, "size": f.size, "sha256": f.sha256, "detected": f.detected}
                for f in req.files
            ],
        },
    )
    return {"id": req.id, "state": req.state, "files": len(req.files)}


def _load(session: Session, request_id: int, action: str, username: str) -> ImportRequest:
    req = session.get(ImportRequest, request_id, with_for_update=True)
    if req is None:
        raise NotFound(
            action, f"import request {request_id} does not exist", actor=username, details={}
        )
    return req


def withdraw(session: Session, username: str, request_id: int) -> dict:
    """The requester takes back a request that is still waiting for review."""
    req = _load(session, request_id, Action.withdrawn, username)
    transition(session, req, State.withdrawn, username)
    return {"id": req.id, "state": req.state}


# --- checkers ---------------------------------------------------------------------------------


def check_can_review(session: Session, username: str, req: ImportRequest, action: str) -> None:
    """Refuse unless ``username`` may review ``req`` now: never the requester; an active
    output checker of the request's project; the request waiting; one review per checker."""
    details = {"import": req.id}
    project = req.project_slug
    check_can_review_request(
        session,
        username,
        project=project,
        requester=req.requester,
        action=action,
        subject=f"import request {req.id}",
        details=details,
    )
    if State(req.state) not in REVIEWABLE:
        raise Refused(
            action,
            f"import request {req.id} is {req.state}, not waiting for review",
            actor=username,
            project=project,
            details=details,
            status=409,
        )
    if any(r.checker == username for r in req.reviews):
        raise Refused(
            action,
            f"{username} already reviewed import request {req.id}; one checker counts once",
            actor=username,
            project=project,
            details=details,
            status=409,
        )


def review(
    session: Session, username: str, request_id: int, decision: str, comment: str = ""
) -> dict:
    """One checker's decision on a whole request; the request moves on when the reviews add up
    (any reject: rejected; the project's required approvals: approved)."""
    action = Action.reviewed
    req = _load(session, request_id, action, username)
    check_can_review(session, username, req, action)
    comment = (comment or "").strip()
    try:
        verdict = Decision(decision)
    except ValueError:
        raise Invalid(
            action,
            "choose approve or reject",
            actor=username,
            project=req.project_slug,
            details={"import": req.id},
        ) from None
    if len(comment) > MAX_COMMENT:
        raise Invalid(
            action,
            f"the comment is longer than {MAX_COMMENT} characters",
            actor=username,
            project=req.project_slug,
        )
    if verdict == Decision.reject and not comment:
        raise Invalid(
            action,
            "say why the files are rejected (the requester reads the comment)",
            actor=username,
            project=req.project_slug,
            details={"import": req.id},
        )
    if req.state == State.submitted:
        transition(session, req, State.in_review, username)
    session.add(ImportReview(request=req, checker=username, decision=str(verdict), comment=comment))
    session.flush()
    audit.append(
        session,
        action,
        actor=username,
        project=req.project_slug,
        details={"import": req.id, "decision": str(verdict), "comment": comment[:500]},
    )
    result = outcome([r.decision for r in req.reviews], req.required_approvals)
    if result is not None:
        transition(
            session,
            req,
            result,
            Principal("system", system=True),
            details={"checkers": [r.checker for r in req.reviews]},
        )
    return {"id": req.id, "state": req.state}


def revoke(session: Session, username: str, request_id: int, comment: str = "") -> dict:
    """A checker of the project withdraws an approval: the files leave /imports at the next
    start of each workspace."""
    req = _load(session, request_id, Action.revoked, username)
    if not (comment or "").strip():
        raise Invalid(
            Action.revoked,
            "say why the approval is revoked",
            actor=username,
            project=req.project_slug,
            details={"import": req.id},
        )
    active_person(session, username, Action.revoked, req.project_slug)
    transition(session, req, State.revoked, username, reason=comment.strip()[:2000])
    return {"id": req.id, "state": req.state}


# --- reading ----------------------------------------------------------------------------------


def _summary(req: ImportRequest) -> dict:
    return {
        "id": req.id,
        "project": req.project_slug,
        "requester": req.requester,
        "state": req.state,
        "justification": req.justification,
        "description": req.description,
        "required_approvals": req.required_approvals,
        "created_at": req.created_at,
        "decided_at": req.decided_at,
        "files": [
            {"id": f.id, "name": f.name, "size": f.size, "sha256": f.sha256, "detected": f.detected}
            for f in req.files
        ],
        "reviews": [
            {"checker": r.checker, "decision": r.decision, "comment": r.comment, "at": r.at}
            for r in req.reviews
        ],
    }


def _requests(session: Session, *where) -> list[ImportRequest]:
    return list(
        session.scalars(
            select(ImportRequest)
            .where(*where)
            .options(selectinload(ImportRequest.files), selectinload(ImportRequest.reviews))
            .order_by(ImportRequest.id.desc())
        )
    )


def own_page(session: Session, username: str) -> dict:
    """The requester's page: the projects they may import into and their requests."""
    return {
        "projects": member_projects(session, username),
        "items": [_summary(r) for r in _requests(session, ImportRequest.requester == username)],
    }


def queue(session: Session, username: str) -> dict:
    """Import requests of the projects ``username`` checks, those waiting first."""
    projects = checker_projects(session, username)
    items = [_summary(r) for r in _requests(session, ImportRequest.project_slug.in_(projects))]
    items.sort(key=lambda r: (State(r["state"]) not in REVIEWABLE, -r["id"]))
    for item in items:
        item["mine"] = item["requester"] == username
        item["reviewed"] = any(r["checker"] == username for r in item["reviews"])
    return {"projects": projects, "items": items}


def _may_see(session: Session, username: str, req: ImportRequest, action: str) -> None:
    if username == req.requester:
        return
    active_person(session, username, action, req.project_slug)
    if not is_checker(session, username, req.project_slug):
        raise NotFound(
            action,
            f"import request {req.id} is not one {username} may see",
            actor=username,
            project=req.project_slug,
            details={"import": req.id},
        )


def request_page(session: Session, username: str, request_id: int) -> dict:
    """One request for its requester or a checker of its project."""
    req = _load(session, request_id, Action.page, username)
    _may_see(session, username, req, Action.page)
    data = _summary(req)
    data["can_review"] = (
        username != req.requester
        and State(req.state) in REVIEWABLE
        and not any(r.checker == username for r in req.reviews)
        and is_checker(session, username, req.project_slug)
    )
    data["can_revoke"] = (
        username != req.requester
        and State(req.state) == State.approved
        and is_checker(session, username, req.project_slug)
    )
    data["can_withdraw"] = username == req.requester and State(req.state) in REVIEWABLE
    return data


@dataclass(frozen=True)
class FileRef:
    import_id: int
    file_id: int
    project: str
    name: str
    size: int
    sha256: str


def file_for_viewer(session: Session, username: str, file_id: int) -> FileRef:
    """A file to preview, for its requester or a checker of the project (audited)."""
    f = session.get(ImportFile, file_id)
    if f is None:
        raise NotFound(
            Action.viewed, f"import file {file_id} does not exist", actor=username, details={}
        )
    req = f.request
    _may_see(session, username, req, Action.viewed)
    audit.append(
        session,
        Action.viewed,
        actor=username,
        project=req.project_slug,
        details={"import": req.id, "file": f.id, "name": f.name, "sha256": f.sha256},
    )
    return FileRef(req.id, f.id, req.project_slug, f.name, f.size, f.sha256)


@dataclass(frozen=True)
class Mounted:
    """One approved file as it appears in a workspace: ``/imports/<import>/<name>``."""

    import_id: int
    name: str
    size: int
    sha256: str

    @property
    def relpath(self) -> str:
        return f"{self.import_id}/{self.name}"


def approved_files(session: Session, project: str) -> list[Mounted]:
    """Every file of the project's approved imports, in request then file order."""
    return [
        Mounted(r.id, f.name, f.size, f.sha256)
        for r in sorted(
            _requests(
                session,
                ImportRequest.project_slug == project,
                ImportRequest.state.in_([str(s) for s in MOUNTED]),
            ),
            key=lambda r: r.id,
        )
        for f in r.files
    ]
