"""Breaches of an agreement and their sanctions, as registry operations (see ``ops``).

:func:`record_breach` validates everything, records the breach, applies its sanction and
appends the audit events, all in the caller's transaction: a *warning* is recorded only; a
*suspension* suspends the person through :func:`ops.suspend_person` (the ``sde`` service sees
the ``person.suspended`` event and closes their rooms within seconds); a *removal* takes every
role of the person on the project away through :func:`ops.remove_member`. Sanctions are counted
in the public register (:mod:`sde_spawner.register`), by project, never by name.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from sde_spawner import audit
from sde_spawner.registry import ops
from sde_spawner.registry.models import Breach, Membership, Sanction
from sde_spawner.registry.rules import Problem, parse_date

SANCTIONS = ", ".join(s.value for s in Sanction)


def record_breach(session, actor, username, project_slug, *, what, sanction, on=None, today=None):
    """Record a breach by ``username`` on ``project_slug`` and apply its sanction."""
    problems: list[Problem] = []
    person = ops.get_person(session, username)
    ops._exists(person, "person", username, problems)
    project = ops.get_project(session, project_slug)
    ops._exists(project, "project", project_slug, problems)
    if not (what or "").strip():
        problems.append(("what", "say what the breach was (it is recorded)"))
    try:
        sanction_ = Sanction(sanction)
    except ValueError:
        sanction_ = None
        problems.append(("sanction", f"unknown sanction {sanction!r} (one of: {SANCTIONS})"))
    today = today or date.today()
    occurred = parse_date(on, "date", problems) if on is not None else today
    if occurred is not None and occurred > today:
        problems.append(("date", f"a breach cannot be recorded for a future date ({occurred})"))
    roles = []
    if person is not None and project is not None:
        roles = sorted(
            m.role.value
            for m in session.scalars(
                select(Membership).filter_by(person_id=person.id, project_id=project.id)
            )
        )
        if not roles and sanction_ == Sanction.removal:
            problems.append(("member", f"{username} has no role on {project_slug} to remove"))
    ops._refuse(
        "breach.record", problems, actor, project=project_slug, target=f"{username}:{sanction}"
    )
    breach = Breach(
        username=username,
        project_slug=project_slug,
        occurred_on=occurred,
        what=what.strip(),
        sanction=sanction_,
        recorded_by=actor[:64],
    )
    session.add(breach)
    session.flush()
    audit.append(
        session,
        "breach.recorded",
        actor=actor,
        project=project_slug,
        reason=breach.what[:2000],
        details={
            "target": username,
            "breach": breach.id,
            "sanction": sanction_.value,
            "date": occurred.isoformat(),
        },
    )
    notes = []
    reason = f"breach #{breach.id} on {project_slug}: {breach.what}"[:2000]
    if sanction_ == Sanction.suspension:
        notes.append(ops.suspend_person(session, actor, username, reason).line())
    elif sanction_ == Sanction.removal:
        for role in roles:
            notes.append(ops.remove_member(session, actor, project_slug, username, role).line())
    return ops.Outcome(
        f"breach #{breach.id} by {username} on {project_slug}",
        f"recorded ({sanction_.value})",
        note="; ".join(notes),
        obj=breach,
    )


def list_breaches(session, project_slug: str | None = None) -> list[Breach]:
    stmt = select(Breach).order_by(Breach.id)
    if project_slug is not None:
        stmt = stmt.where(Breach.project_slug == project_slug)
    return list(session.scalars(stmt))


def set_register_names(session, actor, project_slug, publish: bool):
    """Record whether the project agreed that the public register names its researchers."""
    problems: list[Problem] = []
    project = ops.get_project(session, project_slug)
    ops._exists(project, "project", project_slug, problems)
    ops._refuse("project.register_names", problems, actor, project=project_slug)
    label = f"project {project_slug} register names"
    if project.register_names == bool(publish):
        return ops.Outcome(label, "unchanged", obj=project)
    old, project.register_names = project.register_names, bool(publish)
    audit.append(
        session,
        "project.updated",
        actor=actor,
        project=project_slug,
        details={"target": project_slug, "changes": {"register_names": [old, bool(publish)]}},
    )
    return ops.Outcome(label, "published" if publish else "withheld", obj=project)
