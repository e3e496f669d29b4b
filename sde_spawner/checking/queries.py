"""What people and workspaces may read of export requests: loading, views and checks that
change nothing (except the audit row of a file a checker previews).

Every checker view passes :func:`~sde_spawner.checking.permissions.check_can_review_export`
first; the requester's views (:func:`list_own`, :func:`releases`) show only what the workspace
may know, and outside the workspace only what checkers approved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from sde_spawner import audit
from sde_spawner.audit.canonical import format_timestamp
from sde_spawner.checking.errors import NotFound, Refused
from sde_spawner.checking.models import ExportFile, ExportRequest, ExportVersion, Review
from sde_spawner.checking.permissions import (
    active_person,
    check_can_review_export,
    checker_projects,
    is_checker,
)
from sde_spawner.checking.permissions import project as project_of
from sde_spawner.checking.policies import file_outcome
from sde_spawner.checking.states import DECIDED, RELEASABLE, REVIEWABLE, Decision, State

# --- loading --------------------------------------------------------------------------------


def load(
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


def own(
    session: Session,
    request_id: int,
    action: str,
    username: str,
    project: str,
    *,
    lock: bool = False,
) -> ExportRequest:
    """A request of this person on this project (what a workspace may touch)."""
    req = load(session, request_id, action, username, lock=lock)
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


def requester_view(req: ExportRequest) -> dict:
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


def own_requests(session: Session, username: str, project: str | None) -> list[ExportRequest]:
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
    return [requester_view(r) for r in own_requests(session, username, project)]


def get_own(session: Session, username: str, project: str, request_id: int) -> dict:
    return requester_view(own(session, request_id, "export.viewed", username, project))


def required_approvals(session: Session, project: str) -> int:
    proj = project_of(session, project)
    return max(1, proj.required_approvals) if proj is not None and proj.required_approvals else 2


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
    required = {slug: required_approvals(session, slug) for slug in projects}
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
    req = load(session, request_id, action, username)
    project = req.project_slug
    check_can_review_export(session, username, req, action)
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
        "required": required_approvals(session, project),
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


@dataclass(frozen=True)
class ReleasedFile:
    """One file of an earlier approved (or released) request of a project."""

    request_id: int
    path: str
    sha256: str
    blob_key: str

    @property
    def label(self) -> str:
        """How a ``differencing`` finding names it."""
        return f"export request {self.request_id}'s released file {self.path}"


def released_files(
    session: Session, project: str, *, excluding: int | None = None
) -> list[ReleasedFile]:
    """The approved files of the project's approved or released requests (other than
    ``excluding``), oldest first: what each request's tables are compared with for
    differencing. No access check and no audit, like :func:`current_files`."""
    stmt = (
        select(ExportRequest.id, ExportFile.path, ExportFile.sha256, ExportFile.blob_key)
        .join(ExportVersion, ExportVersion.request_id == ExportRequest.id)
        .join(ExportFile, ExportFile.version_id == ExportVersion.id)
        .where(
            ExportRequest.project_slug == project,
            ExportRequest.state.in_([str(s) for s in RELEASABLE]),
            ExportVersion.number == ExportRequest.current_version,
            ExportFile.blob_key.is_not(None),
        )
        .order_by(ExportRequest.id, ExportFile.position)
    )
    if excluding is not None:
        stmt = stmt.where(ExportRequest.id != excluding)
    return [ReleasedFile(*row) for row in session.execute(stmt)]


def check_inputs(
    session: Session, request_id: int
) -> tuple[list[tuple[str, str, str | None]], list[ReleasedFile]]:
    """What the automated checks of a request's current version read: its files
    (:func:`current_files`) and its project's earlier releases (:func:`released_files`)."""
    req = session.get(ExportRequest, request_id)
    if req is None:
        return [], []
    return current_files(session, request_id), released_files(
        session, req.project_slug, excluding=req.id
    )


def file_for_checker(session: Session, username: str, file_id: int) -> BlobRef:
    """A file a checker may preview (any version of a request on a project they check)."""
    action = "export.file.viewed"
    f = session.get(ExportFile, file_id)
    if f is None or f.blob_key is None:
        raise NotFound(action, f"there is no exported file {file_id}", actor=username)
    req = f.version.request
    project = req.project_slug
    details = {"request": req.id, "file": f.id, "path": f.path}
    check_can_review_export(session, username, req, action, details)
    if req.state == State.draft:
        raise NotFound(
            action,
            f"export request {req.id} has not been submitted",
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
        own_requests(session, username, None), key=lambda r: r.number or 0, reverse=True
    ):
        if req.number is None:  # no checker has seen it yet (drafts, unclaimed, withdrawn)
            continue
        view = requester_view(req)
        releasable = State(req.state) in RELEASABLE
        if not releasable:
            view["justification"] = None
        for f in view["files"]:
            if not (releasable and f["outcome"] == "approved"):
                for key in _WORKSPACE_AUTHORED:
                    f[key] = None
        out.append(view)
    return out


def releasable(
    session: Session, username: str, request_id: int, action: str, *, lock: bool = False
) -> ExportRequest:
    req = load(session, request_id, action, username, lock=lock)
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
    active_person(session, username, action, project)
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
    req = releasable(session, username, _by_number(session, username, number, action), action)
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
    req = releasable(session, username, request_id, action)
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


def release_manifest(session: Session, username: str, request_id: int) -> tuple[int, str, str]:
    """(request id, project, canonical manifest text) for the requester or a checker."""
    action = "export.manifest.viewed"
    req = load(session, request_id, action, username)
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
