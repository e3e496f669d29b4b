"""Who may act on an airlock request: the registry facts and the one checker guard.

:func:`check_can_review` is *the* guard of every checker entry point (claiming, reviewing,
opening a request's page, previewing one of its files): the requester never reviews their
own request, the checker is an active person in the registry, and an output checker of the
request's project. It takes plain facts (the person, the project, the requester), so any
kind of airlock request — an export or an import — is guarded by the same code;
:func:`check_can_review_export` is its form for an :class:`ExportRequest`.

:func:`roles_for` is what :func:`sde_spawner.checking.states.transition` checks the transition
table's roles against.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from sde_spawner.checking.errors import Refused
from sde_spawner.checking.models import ExportRequest
from sde_spawner.checking.states import Actor
from sde_spawner.registry.models import Membership, Person, PersonStatus, Project, Role


@dataclass(frozen=True)
class Principal:
    """Who takes an action: a person (by hub username) or the service itself."""

    name: str
    system: bool = False


SYSTEM = Principal("system", system=True)


def principal(actor: Principal | str) -> Principal:
    return actor if isinstance(actor, Principal) else Principal(str(actor))


# --- registry facts -------------------------------------------------------------------------


def person(session: Session, username: str) -> Person | None:
    return session.scalar(select(Person).where(Person.username == username))


def project(session: Session, slug: str) -> Project | None:
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


def active_person(
    session: Session,
    username: str,
    action: str,
    project: str | None,
    details: dict | None = None,
) -> Person:
    """The registry's active person ``username``, or :class:`Refused` (unknown, suspended)."""
    found = person(session, username)
    if found is None or found.status != PersonStatus.active:
        state = "unknown" if found is None else str(found.status)
        raise Refused(
            action,
            f"{username} is {state} in the registry and cannot take part in output checking",
            actor=username,
            project=project,
            details=details,
        )
    return found


# --- the checker guard ----------------------------------------------------------------------


def check_can_review(
    session: Session,
    username: str,
    *,
    project: str,
    requester: str,
    action: str,
    subject: str,
    details: dict | None = None,
) -> Person:
    """Refuse (:class:`Refused`, audited by the caller's :func:`~.errors.perform`) unless
    ``username`` may review a request of ``requester`` on ``project``; the checker's
    :class:`Person` otherwise.

    The rules, in order: the requester never reviews their own request; the checker is active
    in the registry; the checker is an output checker of ``project``. ``subject`` names the
    request in the refusal ("export request 7", "import request 3"); ``details`` go into the
    denied audit event.
    """
    if username == requester:
        raise Refused(
            action,
            f"{username} made {subject}; a requester can never review their own request",
            actor=username,
            project=project,
            details=details,
        )
    checker = active_person(session, username, action, project, details)
    if not is_checker(session, username, project):
        raise Refused(
            action,
            f"{username} is not an output checker on project {project}",
            actor=username,
            project=project,
            details=details,
        )
    return checker


def check_can_review_export(
    session: Session, username: str, req: ExportRequest, action: str, details: dict | None = None
) -> Person:
    """:func:`check_can_review` of an export request."""
    return check_can_review(
        session,
        username,
        project=req.project_slug,
        requester=req.requester,
        action=action,
        subject=f"export request {req.id}",
        details={"request": req.id} if details is None else details,
    )


def roles_for(session: Session, request: ExportRequest, actor: Principal | str) -> set[Actor]:
    """The roles ``actor`` holds on ``request``. The requester is never also its checker."""
    who = principal(actor)
    if who.system:
        return {Actor.system}
    if who.name == request.requester:
        return {Actor.requester}
    if is_checker(session, who.name, request.project_slug):
        return {Actor.checker}
    return set()
