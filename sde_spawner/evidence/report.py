"""The evidence report: catalogue + test results + live facts, joined by pure functions.

:func:`build` returns the whole report as a dict (what ``report.json`` holds);
:func:`render_html` turns it into one self-contained page (no script, no external resource)
and :func:`write` writes both into a directory.

Status of a test reference: ``passed`` (at least one case ran and none failed), ``failed``
(a case failed or errored), ``not run`` (absent from the results, or skipped). A control is
``proven`` when all its references passed, ``failing`` when any failed, ``partly proven`` or
``not proven`` otherwise. A statement marked implemented is ``met`` only when every control
behind it is proven in this run; one not met keeps its reason.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from sde_spawner.evidence.catalogue import Catalogue
from sde_spawner.evidence.junit import Result, matching, totals
from sde_spawner.publish import write_files

TEMPLATE = "report.html.j2"


def _ref_status(results: list[Result]) -> str:
    if any(r.outcome in ("failed", "error") for r in results):
        return "failed"
    if any(r.outcome == "passed" for r in results):
        return "passed"
    return "not run"


def _combine(statuses: list[str], good: str, bad: str) -> str:
    if bad in statuses:
        return "failing"
    if statuses and all(s == good for s in statuses):
        return "proven"
    if good in statuses or "partly proven" in statuses:
        return "partly proven"
    return "not proven"


def _control(control, results: list[Result]) -> dict:
    tests = []
    for ref in control.tests:
        found = matching(ref, results)
        tests.append(
            {
                "ref": ref,
                "status": _ref_status(found),
                "cases": [
                    {
                        "nodeid": r.nodeid,
                        "outcome": r.outcome,
                        "seconds": round(r.seconds, 3),
                        "message": r.message,
                    }
                    for r in found
                ],
            }
        )
    return {
        "id": control.id,
        "title": control.title,
        "modules": list(control.modules),
        "settings": list(control.settings),
        "tests": tests,
        "status": _combine([t["status"] for t in tests], "passed", "failed"),
    }


def _over(control_ids, controls: dict) -> str:
    return _combine([controls[c]["status"] for c in control_ids], "proven", "failing")


def build(
    catalogue: Catalogue,
    results: list[Result],
    facts: dict | None,
    *,
    junit_files: list[str],
    generated_at: datetime | None = None,
) -> dict:
    """The whole report as plain data."""
    controls = {cid: _control(c, results) for cid, c in catalogue.controls.items()}
    safes = [
        {
            "id": s.id,
            "title": s.title,
            "claim": s.claim,
            "controls": list(s.controls),
            "status": _over(s.controls, controls),
        }
        for s in catalogue.safes
    ]
    statements = []
    for st in catalogue.statements:
        if st.status == "not_met":
            status = "not met"
        else:
            status = {"proven": "met", "failing": "failing"}.get(
                _over(st.controls, controls), "not proven in this run"
            )
        statements.append(
            {
                "id": st.id,
                "summary": st.summary,
                "status": status,
                "controls": list(st.controls),
                "reason": st.reason,
            }
        )
    counts: dict[str, int] = {}
    for st in statements:
        counts[st["status"]] = counts.get(st["status"], 0) + 1
    return {
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "source": dict(catalogue.source),
        "run": {"junit_files": list(junit_files), "totals": totals(results)},
        "safes": safes,
        "statements": statements,
        "statement_counts": counts,
        "controls": controls,
        "facts": facts,
    }


def render_html(report: dict) -> str:
    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(r=report)


def write(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``report.json`` and ``index.html`` in ``out_dir``, each replaced whole or not at all."""
    json_path, html_path = write_files(
        out_dir,
        {
            "report.json": json.dumps(report, indent=1, sort_keys=True) + "\n",
            "index.html": render_html(report),
        },
    )
    return json_path, html_path
