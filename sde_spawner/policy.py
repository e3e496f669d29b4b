"""Pure eligibility rules: may this person open a workspace on this project, today?

``decide`` takes plain facts read from the registry and returns a ``Decision`` with every
reason that applies, in words a researcher can act on. No I/O here: the spawner, the spawn
form and the lifecycle sweep all call the same function, and unit tests cover it whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from sde_spawner.registry.models import (
    WORKSPACE_ROLES,
    Agreement,
    Grant,
    Membership,
    Person,
    PersonStatus,
    Project,
    ProjectStatus,
)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "eligible"


def _today(now: datetime | date) -> date:
    return now.date() if isinstance(now, datetime) else now


def current_agreement(agreements: list[Agreement], now: datetime | date) -> Agreement | None:
    """The agreement in force on ``now``, else the latest one (so reasons can name it)."""
    today = _today(now)
    in_force = [a for a in agreements if a.starts_on <= today <= a.ends_on]
    if in_force:
        return max(in_force, key=lambda a: a.ends_on)
    return max(agreements, key=lambda a: a.ends_on, default=None)


def decide(
    person: Person | None,
    project: Project | None,
    memberships: list[Membership],
    agreement: Agreement | None,
    grants: list[Grant],
    now: datetime | date,
) -> Decision:
    """Every reason ``person`` may not work on ``project`` on ``now``; none means allowed."""
    today = _today(now)
    reasons: list[str] = []
    if person is None:
        return Decision(False, ("you are not registered in this environment",))
    if project is None:
        return Decision(False, ("no such project",))
    if person.status != PersonStatus.active:
        reasons.append("your account is suspended")
    if person.training_expires is None:
        reasons.append("no record of data protection training")
    elif person.training_expires < today:
        reasons.append(f"your training expired on {person.training_expires.isoformat()}")

    if project.status == ProjectStatus.suspended:
        reasons.append(f"project {project.slug} is suspended")
    elif project.status == ProjectStatus.closed:
        reasons.append(f"project {project.slug} is closed")
    elif project.status != ProjectStatus.approved or project.dac_approved_on is None:
        reasons.append(f"project {project.slug} is not approved by the Data Access Committee")

    roles = {m.role for m in memberships if m.project_id == project.id}
    if not roles:
        reasons.append(f"you are not a member of project {project.slug}")
    elif not roles & WORKSPACE_ROLES:
        reasons.append(
            f"your role on project {project.slug} ({', '.join(sorted(roles))}) "
            "does not include a workspace"
        )

    if agreement is None:
        reasons.append(f"project {project.slug} has no data access agreement")
    else:
        if agreement.signed_on is None:
            reasons.append(f"agreement {agreement.reference} is not signed")
        if today < agreement.starts_on:
            reasons.append(
                f"agreement {agreement.reference} starts on {agreement.starts_on.isoformat()}"
            )
        elif today > agreement.ends_on:
            reasons.append(f"agreement {agreement.reference} ended {agreement.ends_on.isoformat()}")

    if roles & WORKSPACE_ROLES and not grants:
        reasons.append(f"no dataset has been granted to you on project {project.slug}")
    return Decision(not reasons, tuple(reasons))
