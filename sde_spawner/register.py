"""The public transparency register: approved projects, what they use, what came out of them.

:func:`entries` reads the registry into plain dicts (one per approved, suspended or closed
project that was ever approved by the Data Access Committee); :func:`render_html` and
:func:`render_json` are pure; :func:`export` writes ``index.html`` and ``register.json``.

What it shows: organisation, title, lay summary, public benefit, purpose, DAC reference and
date, agreement dates, datasets used, the number of released outputs (export requests in state
``released``) and of sanctions (recorded breaches). It never shows patient data, and shows
researchers only by organisation unless the project agreed to be named
(``Project.register_names``). The page is static, escaped, has no scripts and no external
resources: it reads offline.
"""

from __future__ import annotations

import html
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from sde_spawner.checking.models import ExportRequest
from sde_spawner.publish import write_files
from sde_spawner.registry.models import (
    Breach,
    Membership,
    Project,
    ProjectStatus,
    Role,
)

FORMAT = "sde-transparency-register/1"
NAMED_ROLES = (Role.researcher, Role.project_lead)


def entries(session) -> list[dict]:
    released = dict(
        session.execute(
            select(ExportRequest.project_slug, func.count())
            .where(ExportRequest.state == "released")
            .group_by(ExportRequest.project_slug)
        ).all()
    )
    sanctions = dict(
        session.execute(
            select(Breach.project_slug, func.count()).group_by(Breach.project_slug)
        ).all()
    )
    out = []
    for p in session.scalars(select(Project).order_by(Project.slug)):
        if p.status == ProjectStatus.draft or p.dac_approved_on is None:
            continue
        members = list(session.scalars(select(Membership).filter_by(project_id=p.id)))
        datasets = sorted(
            {(g.dataset.slug, g.dataset.title or g.dataset.slug) for m in members for g in m.grants}
        )
        entry = {
            "project": p.slug,
            "title": p.title,
            "organisation": p.organisation,
            "organisation_kind": p.organisation_kind.value if p.organisation_kind else None,
            "status": p.status.value,
            "purpose": p.purpose.value,
            "lay_summary": p.lay_summary,
            "public_benefit": p.public_benefit,
            "dac_reference": p.dac_reference,
            "dac_approved_on": p.dac_approved_on.isoformat(),
            "agreements": [
                {
                    "reference": a.reference,
                    "starts_on": a.starts_on.isoformat(),
                    "ends_on": a.ends_on.isoformat(),
                    "data_deletion_on": a.data_deletion_on.isoformat(),
                }
                for a in p.agreements
            ],
            "datasets": [{"slug": s, "title": t} for s, t in datasets],
            "released_outputs": int(released.get(p.slug, 0)),
            "sanctions": int(sanctions.get(p.slug, 0)),
        }
        if p.register_names:
            entry["researchers"] = sorted(
                {
                    m.person.display_name or m.person.username
                    for m in members
                    if m.role in NAMED_ROLES
                }
            )
        out.append(entry)
    return out


def render_json(items: list[dict], generated: str) -> str:
    return json.dumps({"format": FORMAT, "generated": generated, "projects": items}, indent=1)


_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
    "section{border-top:1px solid #ccc;padding:1em 0}dt{font-weight:bold}dd{margin:0 0 .5em 1em}"
)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def render_html(items: list[dict], generated: str) -> str:
    """The register as one self-contained page (no scripts, no external resources)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        "<title>Transparency register</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Transparency register</h1>",
        f"<p>Projects approved to use data in this Secure Data Environment. Generated "
        f"{_e(generated)}. Researchers are listed by organisation unless a project agreed to "
        f"be named.</p>",
        f'<p id="count">{len(items)} project(s).</p>',
    ]
    for it in items:
        agreements = "; ".join(
            f"{_e(a['reference'])}: {_e(a['starts_on'])} to {_e(a['ends_on'])}, "
            f"data deleted by {_e(a['data_deletion_on'])}"
            for a in it["agreements"]
        )
        datasets = ", ".join(_e(d["title"]) for d in it["datasets"]) or "none"
        rows = [
            ("Organisation", it["organisation"]),
            ("Status", it["status"]),
            ("Purpose", it["purpose"].replace("_", " ")),
            ("Lay summary", it["lay_summary"]),
            ("Public benefit", it["public_benefit"]),
            ("Data Access Committee", f"{it['dac_reference']}, approved {it['dac_approved_on']}"),
        ]
        parts.append(f'<section id="project-{_e(it["project"])}">')
        parts.append(f"<h2>{_e(it['title'])}</h2><dl>")
        for label, value in rows:
            parts.append(f"<dt>{label}</dt><dd>{_e(value)}</dd>")
        parts.append(f"<dt>Agreements</dt><dd>{agreements or 'none'}</dd>")
        parts.append(f"<dt>Datasets used</dt><dd>{datasets}</dd>")
        if "researchers" in it:
            parts.append(f"<dt>Researchers</dt><dd>{_e(', '.join(it['researchers']))}</dd>")
        parts.append(f'<dt>Released outputs</dt><dd class="released">{it["released_outputs"]}</dd>')
        parts.append(f'<dt>Sanctions</dt><dd class="sanctions">{it["sanctions"]}</dd>')
        parts.append("</dl></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def export(session, directory: str | os.PathLike, now: datetime | None = None) -> list[Path]:
    """Write ``index.html`` and ``register.json`` into ``directory``; returns their paths."""
    generated = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    items = entries(session)
    return write_files(
        directory,
        {
            "index.html": render_html(items, generated),
            "register.json": render_json(items, generated),
        },
    )
