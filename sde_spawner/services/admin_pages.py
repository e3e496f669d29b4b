"""The read-only registry overview of the ``sde`` service, ``{prefix}admin/``, and the usage
page, ``{prefix}admin/usage`` (CSV: ``{prefix}admin/usage.csv``, :mod:`sde_spawner.usage`).

For administrators (the service's ``admins`` setting, as for the audit page) only; anyone else
gets 403 and the refusal is audited (``admin.page.refused``). It lists projects with their
status, agreements with their end and data-deletion dates (coming ones first), members, and
the recent lifecycle actions (registry changes, breaches, closed workspaces, deletions).

:func:`overview` reads the registry into plain data and :func:`render` turns it into one
escaped, script-free page; the handler only checks the person and joins the two.
"""

from __future__ import annotations

import asyncio
import html
from datetime import date

from jupyterhub.utils import url_path_join
from sqlalchemy import or_, select
from tornado import web

from sde_spawner import usage
from sde_spawner.audit.models import AuditEvent
from sde_spawner.registry.models import Project
from sde_spawner.services.pages import BrowserPage

#: Audit actions shown as lifecycle actions.
LIFECYCLE_PREFIXES = (
    "person.",
    "project.",
    "agreement.",
    "membership.",
    "grant.",
    "breach.",
    "workspace.closed",
    "deletion.",
)
RECENT = 50


def overview(session, today: date, recent: int = RECENT) -> dict:
    projects, agreements, members = [], [], []
    for p in session.scalars(select(Project).order_by(Project.slug)):
        projects.append(
            {"slug": p.slug, "title": p.title, "status": p.status.value, "org": p.organisation}
        )
        for a in p.agreements:
            agreements.append(
                {
                    "project": p.slug,
                    "reference": a.reference,
                    "ends_on": a.ends_on,
                    "data_deletion_on": a.data_deletion_on,
                    "days_to_end": (a.ends_on - today).days,
                    "days_to_deletion": (a.data_deletion_on - today).days,
                }
            )
        for m in p.memberships:
            members.append(
                {
                    "project": p.slug,
                    "username": m.person.username,
                    "role": m.role.value,
                    "status": m.person.status.value,
                }
            )
    agreements.sort(key=lambda a: (a["ends_on"] < today, a["ends_on"], a["project"]))
    actions = list(
        session.scalars(
            select(AuditEvent)
            .where(or_(*(AuditEvent.action.startswith(p) for p in LIFECYCLE_PREFIXES)))
            .order_by(AuditEvent.seq.desc())
            .limit(recent)
        )
    )
    events = [
        {
            "at": e.at.strftime("%Y-%m-%d %H:%M:%S"),
            "actor": e.actor,
            "action": e.action,
            "project": e.project or "",
            "outcome": e.outcome,
            "reason": e.reason or "",
        }
        for e in actions
    ]
    return {"projects": projects, "agreements": agreements, "members": members, "events": events}


def _table(title: str, anchor: str, keys: list[str], rows: list[dict]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(r[k]))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return (
        f'<h2>{e(title)}</h2><table id="{anchor}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body or '<tr><td>(none)</td></tr>'}</tbody></table>"
    )


def render(data: dict, user: str) -> str:
    return "\n".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            "<title>Registry overview</title>",
            "<style>body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;"
            "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.2em .5em;"
            "text-align:left}</style></head><body>",
            f"<h1>Registry overview</h1><p>Read-only; signed in as {html.escape(user)}.</p>",
            _table("Projects", "projects", ["slug", "title", "status", "org"], data["projects"]),
            _table(
                "Agreements (coming end first)",
                "agreements",
                [
                    "project",
                    "reference",
                    "ends_on",
                    "days_to_end",
                    "data_deletion_on",
                    "days_to_deletion",
                ],
                data["agreements"],
            ),
            _table(
                "Members", "members", ["project", "username", "role", "status"], data["members"]
            ),
            _table(
                "Recent lifecycle actions",
                "events",
                ["at", "actor", "action", "project", "outcome", "reason"],
                data["events"],
            ),
            "</body></html>",
        ]
    )


class AdminPageHandler(BrowserPage):
    """The registry overview, for administrators only; the one page guard of the service
    (:class:`~sde_spawner.services.pages.BrowserPage`: browser sessions only, no tokens)."""

    action = "admin.page.refused"  # what the guard's refusals here are audited as

    async def get(self):
        name = self.current_user["name"]
        if name not in self.settings["sde"].admins:
            await self.refuse("the registry overview is for administrators only", actor=name)
        Session = self.settings["sessionmaker"]

        def read():
            with Session() as s:
                return overview(s, date.today())

        page = render(await asyncio.to_thread(read), name)
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(page)


def render_usage(rows: list[usage.UsageRow], user: str, since: str, until: str) -> str:
    e = html.escape
    query = "&".join(f"{k}={e(v)}" for k, v in (("since", since), ("until", until)) if v)
    data = [{k: getattr(r, k) for k in usage.COLUMNS} for r in rows]
    return "\n".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            "<title>Usage</title>",
            "<style>body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;"
            "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.2em .5em;"
            "text-align:left}</style></head><body>",
            f"<h1>Usage per person and project</h1><p>Signed in as {e(user)}. Workspaces "
            f"started {e(since or 'ever')} to {e(until or 'now')}; CPU and memory hours as "
            "metered from the containers.</p>",
            '<form method="get"><label>since <input name="since" type="date" '
            f'value="{e(since)}"></label> <label>until <input name="until" type="date" '
            f'value="{e(until)}"></label> <button>show</button></form>',
            f'<p><a id="csv" href="usage.csv{"?" + query if query else ""}">Download CSV</a></p>',
            _table("Usage", "usage", list(usage.COLUMNS), data),
            "</body></html>",
        ]
    )


def _date_arg(handler, name: str) -> date | None:
    value = handler.get_argument(name, "") or ""
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise web.HTTPError(400, f"{name}: not a date (YYYY-MM-DD): {value[:40]!r}") from None


class UsagePageHandler(BrowserPage):
    """Usage per person and project, for administrators; ``usage.csv`` downloads it."""

    action = "usage.page.refused"

    async def get(self, csv: str = ""):
        name = self.current_user["name"]
        if name not in self.settings["sde"].admins:
            await self.refuse("usage figures are for administrators only", actor=name)
        since, until = _date_arg(self, "since"), _date_arg(self, "until")
        Session = self.settings["sessionmaker"]

        def read():
            with Session() as s:
                return usage.report(s, since=since, until=until)

        rows = await asyncio.to_thread(read)
        self.set_header("X-Content-Type-Options", "nosniff")
        if csv:
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", 'attachment; filename="usage.csv"')
            self.finish(usage.to_csv(rows))
            return
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(render_usage(rows, name, self.get_argument("since", ""),
                                 self.get_argument("until", "")))  # fmt: skip


def routes(prefix: str) -> list[tuple]:
    return [
        (url_path_join(prefix, "admin/"), AdminPageHandler),
        (url_path_join(prefix, r"admin/usage(\.csv)?"), UsagePageHandler),
    ]
