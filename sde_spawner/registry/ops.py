"""Every change to the registry, its rules and its audit event, in one layer.

Each operation takes an open session and the actor, validates *everything* first (so a refusal
names every problem, not the first), makes the change and appends the audit event in the
caller's transaction, and returns an :class:`Outcome` (``created``, ``updated``,
``unchanged``, ``removed``...). A refusal is one exception type, :class:`RegistryError`.
:func:`perform` runs an operation in a transaction of its own: commit on success; on a
refusal, roll back, then audit the denial (outcome ``denied``) in a second transaction.

The ``sde-admin`` commands, ``sde-admin apply`` (:mod:`sde_spawner.registry.apply`) and the demo
seed all call these functions; they only parse and print. The rules themselves are the pure
checks of :mod:`sde_spawner.registry.rules`, shared with ``apply``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from sde_spawner import audit
from sde_spawner.db import perform_audited
from sde_spawner.registry.models import (
    WORKSPACE_ROLES,
    Agreement,
    Dataset,
    Grant,
    Membership,
    Person,
    PersonStatus,
    Project,
    ProjectStatus,
    Workspace,
)
from sde_spawner.registry.rules import (
    Problem,
    agreement_problems,
    approval_problems,
    dataset_columns,
    grant_problems,
    idle_problems,
    idp_subject_problems,
    limits_problems,
    output_policy_problems,
    parse_date,
    parse_organisation_kind,
    parse_purpose,
    parse_role,
    slug_problems,
    username_problems,
)

T = TypeVar("T")
#: Pass as a value to set a nullable field back to NULL (``None`` means "leave as it is").
CLEAR = type("Clear", (), {"__repr__": lambda self: "CLEAR"})()
NO_CHANGE = frozenset({"unchanged", "not a member", "not granted", "not open"})


class RegistryError(ValueError):
    """A refused registry operation; ``problems`` lists every reason, ``str()`` joins them."""

    def __init__(
        self,
        action: str,
        problems: list[Problem] | list[str],
        *,
        actor: str | None = None,
        project: str | None = None,
        target: str | None = None,
    ):
        self.action = action
        self.problems = [p if isinstance(p, str) else p[1] for p in problems]
        self.actor = actor
        self.project = project
        self.target = target
        super().__init__("; ".join(self.problems))


@dataclass
class Outcome:
    """What one operation did: ``label: status``, plus the field changes (old, new)."""

    label: str
    status: str
    changes: dict = field(default_factory=dict)
    note: str = ""
    obj: object = None

    @property
    def changed(self) -> bool:
        """Did the registry change? (``already suspended``, ``left suspended``: no.)"""
        return self.status not in NO_CHANGE and not self.status.startswith(("already ", "left "))

    def line(self) -> str:
        return f"{self.label}: {self.status}" + (f" ({self.note})" if self.note else "")


def perform(sessionmaker, operation: Callable[..., T], /, *args, **kwargs) -> T:
    """Run ``operation(session, *args, **kwargs)`` in one transaction and commit it.

    On :class:`RegistryError` the change is rolled back and the refusal is audited (outcome
    ``denied``) and committed in a transaction of its own, then re-raised
    (:func:`sde_spawner.db.perform_audited`).
    """
    return perform_audited(
        sessionmaker,
        operation,
        args,
        kwargs,
        refusal=RegistryError,
        record_denial=record_denial,
    )


def record_denial(session: Session, exc: RegistryError) -> None:
    audit.append(
        session,
        exc.action,
        actor=(exc.actor or "(unidentified)")[:64],
        project=exc.project,
        outcome="denied",
        reason=str(exc)[:2000],
        details={"target": exc.target, "problems": exc.problems[:50]} if exc.target else None,
    )


def _refuse(action: str, problems: list, actor: str, project=None, target=None) -> None:
    if problems:
        raise RegistryError(action, problems, actor=actor, project=project, target=target)


# ---- helpers -------------------------------------------------------------------------------
def plain(v):
    """A value as the audit trail and the output show it (dates ISO, enums by value)."""
    if isinstance(v, date):
        return v.isoformat()
    if hasattr(v, "value"):
        return v.value
    return v


def _changes(obj, values: dict) -> dict:
    """Set the given (non-None) values on obj; return {field: [old, new]} for those changed."""
    changed = {}
    for key, new in values.items():
        if new is None:
            continue
        if new is CLEAR:
            new = None
        old = getattr(obj, key)
        if old != new:
            changed[key] = [plain(old), plain(new)]
            setattr(obj, key, new)
    return changed


def _upsert(session, actor, model, lookup, values, action, *, label, project=None, target=""):
    obj = session.scalar(select(model).filter_by(**lookup))
    if obj is None:
        values = {k: v for k, v in values.items() if v is not None and v is not CLEAR}
        obj = model(**lookup, **values)
        session.add(obj)
        session.flush()
        created = {k: plain(v) for k, v in values.items()}
        audit.append(
            session,
            f"{action}.created",
            actor=actor,
            project=project,
            details={"target": target, **created},
        )
        return Outcome(label, "created", {k: [None, v] for k, v in created.items()}, obj=obj)
    changed = _changes(obj, values)
    if changed:
        session.flush()
        audit.append(
            session,
            f"{action}.updated",
            actor=actor,
            project=project,
            details={"target": target, "changes": changed},
        )
        return Outcome(label, "updated", changed, obj=obj)
    return Outcome(label, "unchanged", obj=obj)


def get_person(session: Session, username: str) -> Person | None:
    return session.scalar(select(Person).where(Person.username == username))


def get_project(session: Session, slug: str) -> Project | None:
    return session.scalar(select(Project).where(Project.slug == slug))


def get_dataset(session: Session, slug: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.slug == slug))


def _exists(obj, what: str, key: str, problems: list) -> None:
    if obj is None:
        problems.append((what, f"no such {what}: {key}"))


# ---- people --------------------------------------------------------------------------------
def add_person(
    session,
    actor,
    username,
    *,
    display_name=None,
    email=None,
    training_expires=None,
    idp_subject=None,
):
    """Create a person, or update the given fields. ``idp_subject`` binds the person to one
    account at the OpenID Connect provider (:mod:`sde_spawner.oidc`); ``CLEAR`` unbinds."""
    problems = username_problems(username)
    training = parse_date(training_expires, "training_expires", problems)
    if idp_subject is not None and idp_subject is not CLEAR:
        problems += idp_subject_problems(idp_subject)
        holder = session.scalar(select(Person).where(Person.idp_subject == idp_subject))
        if holder is not None and holder.username != username:
            problems.append(
                ("idp_subject", f"idp_subject {idp_subject!r} already belongs to {holder.username}")
            )
    _refuse("person.add", problems, actor, target=str(username))
    return _upsert(
        session,
        actor,
        Person,
        {"username": username},
        {
            "display_name": display_name,
            "email": email,
            "training_expires": training,
            "idp_subject": idp_subject,
        },
        "person",
        label=f"person {username}",
        target=username,
    )


def _set_person_status(session, actor, username, status: PersonStatus, reason, verb):
    problems: list[Problem] = []
    p = get_person(session, username)
    _exists(p, "person", username, problems)
    if not (reason or "").strip():
        problems.append(("reason", "a reason is needed (it is recorded in the audit trail)"))
    _refuse(f"person.{verb}", problems, actor, target=username)
    if p.status == status:
        return Outcome(f"person {username}", f"already {status.value}", obj=p)
    old, p.status = p.status, status
    audit.append(
        session, f"person.{status.value}", actor=actor, reason=reason, details={"target": username}
    )
    return Outcome(f"person {username}", status.value, {"status": [old.value, status.value]}, obj=p)


def suspend_person(session, actor, username, reason):
    """Suspend a person: no new workspace starts; the lifecycle sweep closes running ones."""
    return _set_person_status(session, actor, username, PersonStatus.suspended, reason, "suspend")


def reactivate_person(session, actor, username, reason):
    return _set_person_status(session, actor, username, PersonStatus.active, reason, "reactivate")


# ---- projects ------------------------------------------------------------------------------
def add_project(
    session,
    actor,
    slug,
    *,
    title=None,
    purpose=None,
    ethics_reference=None,
    lay_summary=None,
    public_benefit=None,
    organisation=None,
    organisation_kind=None,
    required_approvals=None,
    output_policy: dict | None = None,
    cpu_limit=None,
    mem_limit=None,
    idle_timeout=None,
    today: date | None = None,
):
    """Create a project (as draft), or update the given fields. An approved project keeps
    everything its approval rests on. ``CLEAR`` as a limit resets it to the spawner's default."""
    problems = slug_problems(slug, "project")
    values = {
        "title": title,
        "purpose": parse_purpose(purpose, problems),
        "ethics_reference": ethics_reference,
        "lay_summary": lay_summary,
        "public_benefit": public_benefit,
        "organisation": organisation,
        "organisation_kind": parse_organisation_kind(organisation_kind, problems),
        "required_approvals": required_approvals,
        "cpu_limit": float(cpu_limit) if isinstance(cpu_limit, int | float) else cpu_limit,
        "mem_limit": mem_limit,
        "idle_timeout": idle_timeout,
    }
    if required_approvals is not None and (
        not isinstance(required_approvals, int) or not 1 <= required_approvals <= 5
    ):
        problems.append(("required_approvals", "required_approvals must be 1 to 5"))
    problems += limits_problems(
        None if cpu_limit is CLEAR else cpu_limit, None if mem_limit is CLEAR else mem_limit
    )
    problems += idle_problems(None if idle_timeout is CLEAR else idle_timeout)
    if output_policy is not None:
        problems += output_policy_problems(output_policy)
        values["output_policy_json"] = json.dumps(output_policy, sort_keys=True)
    existing = get_project(session, slug) if not problems else None
    if existing is None and not problems and not title:
        problems.append(("title", "a new project needs a title"))
    _refuse("project.add", problems, actor, project=slug, target=slug)
    # What an approved project already lacked (approved before revision 0006, say) may be
    # filled in; an update may not take away what its approval rests on.
    lacked = set(approval_problems(existing, today)) if existing is not None else set()
    out = _upsert(
        session,
        actor,
        Project,
        {"slug": slug},
        values,
        "project",
        label=f"project {slug}",
        project=slug,
        target=slug,
    )
    project = out.obj
    if project.status == ProjectStatus.approved and out.changed:
        lacking = [p for p in approval_problems(project, today) if p not in lacked]
        _refuse(
            "project.add",
            [f"an approved project needs it: {m}" for _, m in lacking],
            actor,
            slug,
            slug,
        )
    return out


def approve_project(
    session,
    actor,
    slug,
    *,
    dac_reference,
    dac_date,
    lay_member=None,
    lay_member_signed=None,
    today: date | None = None,
):
    """Record the Data Access Committee's approval (and the lay member's sign-off) and mark
    the project approved, when it has everything an approval needs."""
    problems: list[Problem] = []
    project = get_project(session, slug)
    _exists(project, "project", slug, problems)
    dac_on = parse_date(dac_date, "dac_date", problems)
    lay_on = parse_date(lay_member_signed, "lay_member_signed", problems)
    if project is not None and not problems:
        with session.no_autoflush:
            changed = _changes(
                project,
                {
                    "dac_reference": dac_reference or None,
                    "dac_approved_on": dac_on,
                    "lay_member_name": lay_member or None,
                    "lay_member_signed_on": lay_on,
                },
            )
            problems += approval_problems(project, today)
            if project.status == ProjectStatus.closed:
                problems.append(("status", f"project {slug} is closed"))
    _refuse("project.approve", problems, actor, project=slug, target=slug)
    if project.status != ProjectStatus.approved:
        changed["status"] = [project.status.value, "approved"]
        project.status = ProjectStatus.approved
    if not changed:
        return Outcome(f"project {slug}", "unchanged", obj=project)
    audit.append(
        session, "project.approved", actor=actor, project=slug, details={"changes": changed}
    )
    return Outcome(f"project {slug}", "approved", changed, obj=project)


def suspend_project(session, actor, slug, reason):
    """Suspend a project: no workspace starts on it; the lifecycle sweep closes open ones."""
    problems: list[Problem] = []
    project = get_project(session, slug)
    _exists(project, "project", slug, problems)
    if not (reason or "").strip():
        problems.append(("reason", "a reason is needed (it is recorded in the audit trail)"))
    _refuse("project.suspend", problems, actor, project=slug, target=slug)
    if project.status == ProjectStatus.suspended:
        return Outcome(f"project {slug}", "already suspended", obj=project)
    old, project.status = project.status, ProjectStatus.suspended
    audit.append(session, "project.suspended", actor=actor, project=slug, reason=reason)
    return Outcome(
        f"project {slug}", "suspended", {"status": [old.value, "suspended"]}, obj=project
    )


# ---- agreements ----------------------------------------------------------------------------
def add_agreement(session, actor, project_slug, reference, *, signed, start, end, delete_by):
    """Record an agreement for a project (create or update by reference)."""
    problems: list[Problem] = []
    project = get_project(session, project_slug)
    _exists(project, "project", project_slug, problems)
    if not (reference or "").strip():
        problems.append(("reference", "an agreement needs a reference"))
    dates = {
        "signed_on": parse_date(signed, "signed", problems),
        "starts_on": parse_date(start, "start", problems),
        "ends_on": parse_date(end, "end", problems),
        "data_deletion_on": parse_date(delete_by, "delete_by", problems),
    }
    for key, name in (
        ("starts_on", "start"),
        ("ends_on", "end"),
        ("data_deletion_on", "delete_by"),
    ):
        if dates[key] is None and not any(f == name for f, _ in problems):
            problems.append((name, f"{name} date is needed"))
    problems += agreement_problems(*dates.values())
    _refuse("agreement.add", problems, actor, project=project_slug, target=reference)
    return _upsert(
        session,
        actor,
        Agreement,
        {"project_id": project.id, "reference": reference},
        dates,
        "agreement",
        label=f"agreement {reference}",
        project=project_slug,
        target=reference,
    )


# ---- members -------------------------------------------------------------------------------
def _membership_facts(session, project_slug, username, role, problems):
    project = get_project(session, project_slug)
    _exists(project, "project", project_slug, problems)
    person = get_person(session, username)
    _exists(person, "person", username, problems)
    role_ = parse_role(role, problems)
    return project, person, role_


def _membership(session, project, person, role):
    return session.scalar(
        select(Membership).filter_by(project_id=project.id, person_id=person.id, role=role)
    )


def add_member(session, actor, project_slug, username, role):
    """Give a person a role on a project."""
    problems: list[Problem] = []
    project, person, role_ = _membership_facts(session, project_slug, username, role, problems)
    _refuse("membership.add", problems, actor, project=project_slug, target=f"{username}:{role}")
    return _upsert(
        session,
        actor,
        Membership,
        {"project_id": project.id, "person_id": person.id, "role": role_},
        {},
        "membership",
        label=f"member {username} ({role_.value}) on {project_slug}",
        project=project_slug,
        target=f"{username}:{role_.value}",
    )


def remove_member(session, actor, project_slug, username, role):
    """Take a role away; its grants go with it (each audited)."""
    problems: list[Problem] = []
    project, person, role_ = _membership_facts(session, project_slug, username, role, problems)
    _refuse("membership.remove", problems, actor, project=project_slug, target=f"{username}:{role}")
    label = f"member {username} ({role_.value}) on {project_slug}"
    m = _membership(session, project, person, role_)
    if m is None:
        return Outcome(label, "not a member")
    gone = sorted(g.dataset.slug for g in m.grants)
    for g in list(m.grants):
        _delete_grant(session, actor, g, project_slug, username)
    session.flush()  # the grants first (each audited), then the membership without them
    session.expire(m, ["grants"])
    session.delete(m)
    session.flush()
    audit.append(
        session,
        "membership.deleted",
        actor=actor,
        project=project_slug,
        details={"target": f"{username}:{role_.value}"},
    )
    note = "workspaces on it close at the next lifecycle sweep"
    if gone:
        note = f"with its grants of {', '.join(gone)}; {note}"
    return Outcome(label, "removed", note=note)


# ---- datasets and grants -------------------------------------------------------------------
def add_dataset(session, actor, slug, source_path, *, title=None, identifier_column=None):
    """Register (or move) a dataset's CSV or Parquet source file, with its person-identifier
    (NHS number) column if it holds data about people: opt-outs are removed by it and it is
    replaced by a per-project pseudonym in every extract."""
    problems = slug_problems(slug, "dataset")
    source = os.path.abspath(source_path) if source_path else ""
    if not source_path:
        problems.append(("source", "a dataset needs a source file"))
    elif not os.path.isfile(source):
        problems.append(("source", f"source file {source} does not exist"))
    elif not source.lower().endswith((".csv", ".parquet")):
        problems.append(("source", "source must be a .csv or .parquet file"))
    else:
        try:
            if not dataset_columns(source):
                problems.append(("source", f"source file {source} has no columns"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(("source", f"source file {source} cannot be read: {exc}"))
        if identifier_column and not problems:
            from sde_spawner.datasets.extract import ExtractError, check_identifier

            try:
                check_identifier(source, identifier_column)
            except ExtractError as exc:
                problems.append(("identifier", str(exc)))
    _refuse("dataset.add", problems, actor, target=str(slug))
    values = {"source_path": source, "title": title}
    if identifier_column is not None:
        values["identifier_column"] = identifier_column or None
    return _upsert(
        session,
        actor,
        Dataset,
        {"slug": slug},
        values,
        "dataset",
        label=f"dataset {slug}",
        target=slug,
    )


def known_columns(dataset: Dataset, problems: list[Problem]) -> list[str] | None:
    """The columns a grant may name: the source's, except that a dataset about people has
    its identifier column replaced by ``pseudonym`` (the NHS number itself is never
    granted: every extract carries the per-project pseudonym instead)."""
    try:
        columns = dataset_columns(dataset.source_path)
        if dataset.identifier_column:
            from sde_spawner.datasets.extract import PSEUDONYM_COLUMN

            columns = [c for c in columns if c != dataset.identifier_column]
            columns.append(PSEUDONYM_COLUMN)
        return columns
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(("dataset", f"dataset {dataset.slug}'s source cannot be read: {exc}"))
        return None


def add_grant(
    session,
    actor,
    project_slug,
    username,
    dataset_slug,
    *,
    columns,
    row_filter: str | None = None,
    clear_filter: bool = False,
    role="researcher",
):
    """Grant a member columns and rows of a dataset. ``row_filter=None`` keeps the grant's
    current row filter; ``clear_filter`` removes it (all rows)."""
    problems: list[Problem] = []
    project, person, role_ = _membership_facts(session, project_slug, username, role, problems)
    ds = get_dataset(session, dataset_slug)
    _exists(ds, "dataset", dataset_slug, problems)
    if row_filter is not None and clear_filter:
        problems.append(("filter", "give a row filter or clear it, not both"))
    if role_ is not None and role_ not in WORKSPACE_ROLES:
        problems.append(("role", f"a {role_.value} has no workspace, so no grant"))
    membership = None
    if project is not None and person is not None and role_ is not None:
        membership = _membership(session, project, person, role_)
        if membership is None:
            problems.append(("member", f"{username} is not a {role_.value} on {project_slug}"))
    known = known_columns(ds, problems) if ds is not None else None
    existing = (
        session.scalar(select(Grant).filter_by(membership_id=membership.id, dataset_id=ds.id))
        if membership is not None and ds is not None
        else None
    )
    kept = (
        existing.row_filter
        if existing is not None and row_filter is None and not clear_filter
        else None
    )
    effective = "" if clear_filter else (row_filter if row_filter is not None else (kept or ""))
    problems += grant_problems(columns, effective, known)
    target = f"{username}:{dataset_slug}"
    _refuse("grant.add", problems, actor, project=project_slug, target=target)
    out = _upsert(
        session,
        actor,
        Grant,
        {"membership_id": membership.id, "dataset_id": ds.id},
        {"columns_json": json.dumps(list(columns)), "row_filter": effective},
        "grant",
        label=f"grant {dataset_slug} to {username} on {project_slug}",
        project=project_slug,
        target=target,
    )
    if kept:
        out.note = f"row filter kept: {kept}; --clear-filter removes it"
    return out


def _delete_grant(session, actor, grant: Grant, project_slug: str, username: str) -> None:
    slug = grant.dataset.slug
    session.delete(grant)
    audit.append(
        session,
        "grant.deleted",
        actor=actor,
        project=project_slug,
        details={"target": f"{username}:{slug}"},
    )


def remove_grant(session, actor, project_slug, username, dataset_slug, *, role="researcher"):
    """Take a dataset away from a member."""
    problems: list[Problem] = []
    project, person, role_ = _membership_facts(session, project_slug, username, role, problems)
    ds = get_dataset(session, dataset_slug)
    _exists(ds, "dataset", dataset_slug, problems)
    _refuse(
        "grant.remove", problems, actor, project=project_slug, target=f"{username}:{dataset_slug}"
    )
    label = f"grant {dataset_slug} to {username} on {project_slug}"
    m = _membership(session, project, person, role_)
    g = session.scalar(select(Grant).filter_by(membership_id=m.id, dataset_id=ds.id)) if m else None
    if g is None:
        return Outcome(label, "not granted")
    _delete_grant(session, actor, g, project_slug, username)
    session.flush()
    return Outcome(label, "removed", note="workspaces with it close at the next lifecycle sweep")


# ---- workspaces ----------------------------------------------------------------------------
def open_workspaces(
    session: Session,
    *,
    username: str | None = None,
    server_name: str | None = None,
    address: str | None = None,
) -> list[Workspace]:
    """Workspaces started and not yet stopped, newest first (the one query for it)."""
    stmt = select(Workspace).where(Workspace.stopped_at.is_(None))
    if username is not None:
        stmt = stmt.where(Workspace.username == username)
    if server_name is not None:
        stmt = stmt.where(Workspace.server_name == server_name)
    if address is not None:
        stmt = stmt.where(Workspace.address == address)
    return list(session.scalars(stmt.order_by(Workspace.id.desc())))


def close_workspace(
    session, actor, *, username, server_name, project, now, audit_event=True, started_before=None
):
    """Mark (username, server) stopped; with ``audit_event``, write ``workspace.stopped``.
    ``started_before``: only rows started before then (not a newer start of the server)."""
    rows = open_workspaces(session, username=username, server_name=server_name)
    if started_before is not None:
        rows = [ws for ws in rows if ws.started_at < started_before]
    for ws in rows:
        ws.stopped_at = now
    if audit_event:
        audit.append(
            session,
            "workspace.stopped",
            actor=actor,
            project=project,
            details={"server": server_name},
        )
    return Outcome(f"workspace {username}/{server_name}", "stopped" if rows else "not open")


def open_workspace(
    session, actor, *, username, server_name, project, container, address, now, datasets
):
    """Record a started workspace (closing any stale row of the same server) and audit it."""
    close_workspace(
        session,
        actor,
        username=username,
        server_name=server_name,
        project=project,
        now=now,
        audit_event=False,
    )
    ws = Workspace(
        username=username,
        server_name=server_name,
        project_slug=project,
        container=container,
        address=address,
        started_at=now,
    )
    session.add(ws)
    audit.append(
        session,
        "spawn.started",
        actor=actor,
        project=project,
        details={"server": server_name, "container": container, "datasets": datasets},
    )
    return Outcome(f"workspace {username}/{server_name}", "started", obj=ws)
