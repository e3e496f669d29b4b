"""The public transparency register read in Chromium from file://, offline: the approved
project's facts and counts are there, a hostile title stays text, no researcher is named, the
page has no script and asks the network for nothing."""

from __future__ import annotations

from datetime import date

import pytest
from click.testing import CliRunner

from sde_spawner.checking.models import ExportRequest
from sde_spawner.cli import main
from sde_spawner.db import open_db
from sde_spawner.registry import ops
from sde_spawner.registry.breaches import record_breach

HOSTILE = "Heart <img src=x onerror=\"document.title='owned'\"> study"


@pytest.fixture
def exported(tmp_path):
    db = f"sqlite:///{tmp_path}/r.sqlite"
    sm = open_db(db)
    source = tmp_path / "people.csv"
    source.write_text("pseudo_id,age\nP1,40\n")
    ops.perform(sm, ops.add_dataset, "admin", "people", str(source), title="Synthetic patients")
    ops.perform(sm, ops.add_person, "admin", "rachel", display_name="Rachel Researcher")
    ops.perform(
        sm,
        ops.add_project,
        "admin",
        "heart-study",
        title=HOSTILE,
        ethics_reference="REC-7",
        lay_summary="Looks at heart failure admissions.",
        public_benefit="Fewer admissions.",
        organisation="University of Northshire",
        organisation_kind="academic",
    )
    ops.perform(
        sm,
        ops.add_agreement,
        "admin",
        "heart-study",
        "DSA-7",
        signed="2026-01-01",
        start="2026-01-01",
        end="2027-12-31",
        delete_by="2028-01-31",
    )
    ops.perform(sm, ops.add_member, "admin", "heart-study", "rachel", "researcher")
    ops.perform(sm, ops.add_grant, "admin", "heart-study", "rachel", "people", columns=["age"])
    ops.perform(
        sm,
        ops.approve_project,
        "admin",
        "heart-study",
        dac_reference="DAC-7",
        dac_date="2026-02-01",
        lay_member="Pat Lewis",
        lay_member_signed="2026-02-01",
        today=date(2026, 12, 1),
    )
    with sm() as s, s.begin():
        for state in ("released", "released", "released", "rejected"):
            s.add(ExportRequest(project_slug="heart-study", requester="rachel", state=state))
    ops.perform(sm, record_breach, "dpo", "rachel", "heart-study", what="x", sanction="warning")
    out = tmp_path / "public"
    res = CliRunner().invoke(main, ["--db", db, "register", "export", str(out)])
    assert res.exit_code == 0, res.output
    return out / "index.html"


def test_the_register_reads_offline_and_names_no_researcher(chromium, exported):
    page = chromium.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(exported.as_uri())
    assert page.title() == "Transparency register"
    section = page.locator("#project-heart-study")
    assert section.locator("h2").inner_text() == HOSTILE  # shown as text, not markup
    text = section.inner_text()
    for fact in (
        "University of Northshire",
        "Looks at heart failure admissions.",
        "Fewer admissions.",
        "DAC-7, approved 2026-02-01",
        "DSA-7: 2026-01-01 to 2027-12-31, data deleted by 2028-01-31",
        "Synthetic patients",
    ):
        assert fact in text
    assert section.locator(".released").inner_text() == "3"
    assert section.locator(".sanctions").inner_text() == "1"
    body = page.locator("body").inner_text()
    assert "Rachel" not in body and "rachel" not in page.content()
    assert page.evaluate("document.scripts.length + document.images.length") == 0
    assert requested == [exported.as_uri()]  # nothing but the page itself
    page.close()
