"""Notices on the spawn page: an agreement or the person's training ends soon.

:func:`expiry_notices` is pure (dates in, sentences out); :func:`notices_for` reads the
registry for one person; :func:`render_notices` makes the HTML the spawner puts above its
project form.
"""

from __future__ import annotations

import html
from datetime import date

from sqlalchemy import select

from sde_spawner.registry.models import Membership, Person, ProjectStatus

WITHIN_DAYS = 30


def _when(days: int, on: date) -> str:
    if days == 0:
        return f"today ({on.isoformat()})"
    if days == 1:
        return f"tomorrow ({on.isoformat()})"
    return f"in {days} days, on {on.isoformat()}"


def expiry_notices(
    today: date,
    training_expires: date | None,
    agreements: list[tuple[str, date]],
    within_days: int = WITHIN_DAYS,
) -> list[str]:
    """Sentences for what ends within ``within_days`` (today included); ``agreements`` are
    (project, last day of access) of the agreements in force."""
    out = []
    if training_expires is not None and 0 <= (training_expires - today).days <= within_days:
        days = (training_expires - today).days
        out.append(
            f"Your data protection training expires {_when(days, training_expires)}. Renew it "
            "to keep access to your projects."
        )
    for project, ends in sorted(agreements, key=lambda a: (a[1], a[0])):
        days = (ends - today).days
        if 0 <= days <= within_days:
            out.append(
                f"The data access agreement of project {project} ends {_when(days, ends)}; "
                "after that its workspace cannot be started. Export what you need before then."
            )
    return out


def notices_for(session, username: str, today: date) -> list[str]:
    person = session.scalar(select(Person).where(Person.username == username))
    if person is None:
        return []
    ending = {}
    for m in session.scalars(select(Membership).filter_by(person_id=person.id)):
        p = m.project
        if p.status != ProjectStatus.approved:
            continue
        current = [a.ends_on for a in p.agreements if a.starts_on <= today <= a.ends_on]
        if current:
            ending[p.slug] = max(current)
    return expiry_notices(today, person.training_expires, sorted(ending.items()))


def render_notices(notices: list[str]) -> str:
    if not notices:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notices)
    return f'<div class="alert alert-info" id="sde-notices"><ul>{items}</ul></div>\n'
