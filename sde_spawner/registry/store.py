"""Registry queries the hub needs: the facts behind one eligibility decision.

Kept apart from the ORM models so the spawner, spawn form and lifecycle sweep read the same
facts the same way; the decision itself is :func:`sde_spawner.policy.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from sde_spawner.datasets.extract import GrantSpec
from sde_spawner.policy import Decision, current_agreement, decide
from sde_spawner.registry.models import Grant, Membership, Person, Project


@dataclass(frozen=True)
class Eligibility:
    username: str
    project: str
    decision: Decision
    grants: tuple[GrantSpec, ...]
    project_title: str = ""
    #: The project's own resource limits (None: the spawner's defaults).
    cpu_limit: float | None = None
    mem_limit: str | None = None
    #: The project's output policy (allowed file types, disclosure thresholds), as stored.
    output_policy: dict = field(default_factory=dict)


def get_person(session: Session, username: str) -> Person | None:
    return session.scalar(select(Person).where(Person.username == username))


def get_project(session: Session, slug: str) -> Project | None:
    return session.scalar(
        select(Project).where(Project.slug == slug).options(selectinload(Project.agreements))
    )


def eligibility(session: Session, username: str, slug: str, now: datetime) -> Eligibility:
    person = get_person(session, username)
    project = get_project(session, slug)
    memberships: list[Membership] = []
    grants: list[Grant] = []
    if person is not None and project is not None:
        memberships = list(
            session.scalars(
                select(Membership)
                .where(Membership.person_id == person.id, Membership.project_id == project.id)
                .options(selectinload(Membership.grants).selectinload(Grant.dataset))
            )
        )
        grants = [g for m in memberships for g in m.grants]
    agreement = current_agreement(project.agreements, now) if project else None
    decision = decide(person, project, memberships, agreement, grants, now)
    specs = tuple(
        GrantSpec(
            dataset=g.dataset.slug,
            source_path=g.dataset.source_path,
            columns=tuple(g.columns),
            row_filter=g.row_filter,
        )
        for g in sorted(grants, key=lambda g: g.dataset.slug)
    )
    if project is None:
        return Eligibility(username, slug, decision, specs)
    return Eligibility(
        username,
        slug,
        decision,
        specs,
        project.title,
        cpu_limit=project.cpu_limit,
        mem_limit=project.mem_limit,
        output_policy=project.output_policy,
    )


def projects_for(session: Session, username: str, now: datetime) -> list[Eligibility]:
    """Every project the person is a member of, with the decision for each."""
    person = get_person(session, username)
    if person is None:
        return []
    slugs = sorted(
        {
            p
            for p in session.scalars(
                select(Project.slug)
                .join(Membership, Membership.project_id == Project.id)
                .where(Membership.person_id == person.id)
            )
        }
    )
    return [eligibility(session, username, s, now) for s in slugs]
