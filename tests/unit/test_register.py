"""The transparency register: approved projects only, counts of released outputs and sanctions,
researchers by organisation unless the project agreed to be named, everything escaped."""

from __future__ import annotations

import json
from datetime import date

import pytest
from click.testing import CliRunner

from sde_spawner import register
from sde_spawner.checking.models import ExportRequest
from sde_spawner.cli import main
from sde_spawner.db import open_db
from sde_spawner.registry import ops
from sde_spawner.registry.breaches import record_breach, set_register_names

TODAY = date(2026, 12, 1)


def approved_project(sm, slug, title, *, researcher="alice", name="Alice Example"):
    source_path = sm.tmp / "people.csv"
    if not source_path.exists():
        source_path.write_text("pseudo_id,age\nP1,40\n")
        ops.perform(sm, ops.add_dataset, "admin", "people", str(source_path), title="People <v2>")
    ops.perform(sm, ops.add_person, "admin", researcher, display_name=name)
    ops.perform(
        sm,
        ops.add_project,
        "admin",
        slug,
        title=title,
        ethics_reference="REC-1",
        lay_summary="Does <b>care</b> & treatment help?",
        public_benefit="Better services",
        organisation="Northshire ICB",
        organisation_kind="nhs",
    )
    ops.perform(
        sm,
        ops.add_agreement,
        "admin",
        slug,
        "DSA-1",
        signed="2026-01-01",
        start="2026-01-01",
        end="2027-12-31",
        delete_by="2028-01-31",
    )
    ops.perform(sm, ops.add_member, "admin", slug, researcher, "researcher")
    ops.perform(sm, ops.add_grant, "admin", slug, researcher, "people", columns=["age"])
    ops.perform(
        sm,
        ops.approve_project,
        "admin",
        slug,
        dac_reference="DAC-9",
        dac_date="2026-02-01",
        lay_member="Pat Lewis",
        lay_member_signed="2026-02-01",
        today=TODAY,
    )


@pytest.fixture
def sm(tmp_path):
    sm = open_db(f"sqlite:///{tmp_path}/r.sqlite")
    sm.tmp = tmp_path
    approved_project(sm, "study-a", "Study <script>alert(1)</script>")
    ops.perform(sm, ops.add_project, "admin", "draft-one", title="Secret draft")
    with sm() as s, s.begin():
        for state in ("released", "released", "approved", "rejected"):
            s.add(ExportRequest(project_slug="study-a", requester="alice", state=state))
    ops.perform(sm, record_breach, "dpo", "alice", "study-a", what="x", sanction="warning")
    return sm


def test_entries_of_approved_projects_with_counts_and_no_names(sm):
    with sm() as s:
        (e,) = register.entries(s)
    assert e["project"] == "study-a" and e["organisation"] == "Northshire ICB"
    assert e["dac_reference"] == "DAC-9" and e["dac_approved_on"] == "2026-02-01"
    assert e["agreements"] == [
        {
            "reference": "DSA-1",
            "starts_on": "2026-01-01",
            "ends_on": "2027-12-31",
            "data_deletion_on": "2028-01-31",
        }
    ]
    assert e["datasets"] == [{"slug": "people", "title": "People <v2>"}]
    assert (e["released_outputs"], e["sanctions"]) == (2, 1)
    assert "researchers" not in e


def test_html_is_escaped_script_free_and_nameless(sm):
    with sm() as s:
        page = register.render_html(register.entries(s), "2026-12-01 12:00 UTC")
    assert "<script" not in page.lower()
    assert "Study &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Does &lt;b&gt;care&lt;/b&gt; &amp; treatment help?" in page
    assert "Alice" not in page and "alice" not in page and "Secret draft" not in page
    assert "http:" not in page and "https:" not in page and "src=" not in page  # offline


def test_names_only_when_the_project_agreed(sm):
    ops.perform(sm, set_register_names, "admin", "study-a", True)
    with sm() as s:
        (e,) = register.entries(s)
        assert e["researchers"] == ["Alice Example"]
        assert "Alice Example" in register.render_html([e], "now")


def test_cli_export_writes_html_and_json(sm, tmp_path):
    db = f"sqlite:///{tmp_path}/r.sqlite"
    out = tmp_path / "public"
    res = CliRunner().invoke(main, ["--db", db, "register", "export", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "register.json").read_text())
    assert data["format"] == register.FORMAT
    assert [p["project"] for p in data["projects"]] == ["study-a"]
    assert (out / "index.html").read_text().startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(main, ["--db", db, "register", "names", "nope", "--publish"])
    assert res.exit_code == 1 and "no such project: nope" in res.output
