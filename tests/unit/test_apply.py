"""`sde-admin apply project.toml`: the worked examples apply, re-apply unchanged, dry-run,
list every problem with its field path, change nothing when invalid, and remove what the
file no longer lists (the lifecycle sweep then closes those workspaces)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, make_url, select

from sde_spawner import audit, lifecycle
from sde_spawner.cli import main
from sde_spawner.db import open_db
from sde_spawner.demo import write_synthetic_patients
from sde_spawner.registry import ops
from sde_spawner.registry.apply import apply_file
from sde_spawner.registry.models import Grant, Membership, Person, Project, Workspace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIABETES = (EXAMPLES / "diabetes-outcomes.toml").read_text()


def _with_patients(sm, tmp_path):
    source = write_synthetic_patients(tmp_path / "patients.csv", rows=20)
    ops.perform(
        sm, ops.add_dataset, "tester", "patients", str(source), identifier_column="nhs_number"
    )
    return sm


@pytest.fixture
def sm(tmp_path):
    return _with_patients(open_db(f"sqlite:///{tmp_path}/r.sqlite"), tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_sm(request, tmp_path):
    """The registry on SQLite, and on a fresh schema of a real PostgreSQL server (env
    SDE_TEST_POSTGRES_URL), dropped afterwards."""
    if request.param == "sqlite":
        yield _with_patients(open_db(f"sqlite:///{tmp_path}/r.sqlite"), tmp_path)
        return
    base = os.environ.get("SDE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("SDE_TEST_POSTGRES_URL is not set: PostgreSQL run skipped")
    schema = f"apply_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    sm = None
    try:
        sm = open_db(url.render_as_string(hide_password=False))
        yield _with_patients(sm, tmp_path)
    finally:
        if sm is not None:
            sm.kw["bind"].dispose()
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def write(tmp_path, text: str, name="project.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def n_events(sm) -> int:
    with sm() as s:
        return len(audit.query(s))


def cli(sm, *args):
    url = sm.kw["bind"].url.render_as_string(hide_password=False)
    return CliRunner().invoke(main, ["--db", url, *args], env={"SDE_ADMIN": "tester"})


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_applies_and_a_second_apply_is_unchanged(any_sm, example):
    sm = any_sm
    first = apply_file(sm, "tester", EXAMPLES / example)
    assert first.changed
    n = n_events(sm)
    second = apply_file(sm, "tester", EXAMPLES / example)
    assert second.lines() == [f"project {first.project}: unchanged"]
    assert n_events(sm) == n
    with sm() as s:
        applied = audit.query(s, action="project.applied")
        assert len(applied) == 1 and example in applied[0].details


def test_the_file_sets_governance_output_policy_and_limits(sm):
    apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml")
    with sm() as s:
        p = s.scalar(select(Project).filter_by(slug="diabetes-outcomes"))
        assert (p.status.value, p.dac_reference, p.dac_approved_on) == (
            "approved",
            "DAC-2026-017",
            date(2026, 10, 15),
        )
        assert (p.organisation, p.organisation_kind.value) == (
            "Northshire Integrated Care Board",
            "nhs",
        )
        assert (p.lay_member_name, p.lay_member_signed_on) == ("Pat Lewis", date(2026, 10, 12))
        assert p.public_benefit.startswith("Earlier control of blood sugar")
        assert p.required_approvals == 2
        assert p.output_policy == {
            "allowed_file_types": [".csv", ".md", ".png", ".txt"],
            "cell_threshold": 10,
            "dof_threshold": 10,
            "zeros_are_disclosive": True,
        }
        assert (p.cpu_limit, p.mem_limit) == (1.0, "2g")
        bob = s.scalar(select(Grant).join(Membership).join(Person).where(Person.username == "bob"))
        assert (bob.columns, bob.row_filter) == (
            ["pseudonym", "age", "diagnosis", "hba1c"],
            "region == 'north'",
        )


def test_dry_run_prints_the_diff_and_changes_nothing(sm, tmp_path):
    dry = apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml", dry_run=True)
    assert dry.lines()[0] == "project diabetes-outcomes: would be created"
    assert dry.lines()[-1] == "dry run: nothing was changed"
    assert n_events(sm) == 1  # the dataset only
    with sm() as s:
        assert s.scalar(select(func.count()).select_from(Project)) == 0
    apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml")
    edited = DIABETES.replace("cell_threshold = 10", "cell_threshold = 20").replace(
        'columns = ["pseudonym", "age"]', 'columns = ["pseudonym", "age", "sex"]'
    )
    n = n_events(sm)
    res = cli(sm, "apply", "--dry-run", str(write(tmp_path, edited)))
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [
        "project diabetes-outcomes: would be updated",
        "    output_policy_json: "
        '\'{"allowed_file_types": [".csv", ".md", ".png", ".txt"], "cell_threshold": 10, '
        '"dof_threshold": 10, "zeros_are_disclosive": true}\' -> '
        '\'{"allowed_file_types": [".csv", ".md", ".png", ".txt"], "cell_threshold": 20, '
        '"dof_threshold": 10, "zeros_are_disclosive": true}\'',
        "grant patients to eve on diabetes-outcomes: would be updated",
        '    columns_json: \'["pseudonym", "age"]\' -> \'["pseudonym", "age", "sex"]\'',
        "dry run: nothing was changed",
    ]
    assert n_events(sm) == n
    assert apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml").lines() == [
        "project diabetes-outcomes: unchanged"
    ]


BAD = (
    DIABETES.replace('purpose = "research"', 'purpose = "insurance"')
    .replace(
        'username = "eve"\nname = "Eve"\nrole = "researcher"',
        'username = "eve"\nname = "Eve"\nrole = "owner"',
    )
    .replace("signed = 2026-10-20", "signed = 2026-11-02")
    .replace('kind = "nhs"', 'kind = "guild"')
    .replace('lay_member = "Pat Lewis"\n', "")
    .replace('"sex", "region", "diagnosis", "hba1c"]', '"sex", "region", "nhs_number"]')
    .replace("filter = \"region == 'north'\"", "filter = \"ward == 'B'\"")
    .replace('memory = "2g"', 'memory = "lots"\ngpu = 1')
)


def test_an_invalid_file_lists_every_problem_with_its_path_and_changes_nothing(any_sm, tmp_path):
    sm = any_sm
    res = cli(sm, "apply", str(write(tmp_path, BAD)))
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0].endswith("project.toml: refused, nothing changed:")
    expected = [
        "purpose: purpose 'insurance' is never permitted in this environment: data may be used "
        "for the public good, not for insurance or marketing",
        "organisation.kind: organisation kind 'guild' is not one of: nhs, academic, charity, "
        "commercial",
        "limits.gpu: unknown field",
        "limits.memory: memory must look like '512m' or '2g', not 'lots'",
        "approval.lay_member: no sign-off by a lay (public) member of the approval panel "
        "(needed for approval)",
        "agreements[0].signed: signed 2026-11-02 after its start 2026-11-01: access cannot "
        "begin unsigned",
        "members[2].role: unknown role 'owner' (one of: researcher, output_checker, project_lead)",
        "datasets[0].grants[0].columns: the dataset has no column 'nhs_number'",
        "datasets[0].grants[1].filter: row filter names unknown column 'ward'",
        "datasets[0].grants[2].member: eve is not listed in members as a researcher or "
        "project_lead",
    ]
    assert [line.strip() for line in lines[1:]] == expected
    with sm() as s:
        assert s.scalar(select(func.count()).select_from(Project)) == 0
        (denied,) = audit.query(s, action="project.apply")
        assert denied.outcome == "denied" and "members[2].role" in denied.reason


@pytest.mark.parametrize("purpose", ["insurance", "marketing", "Marketing"])
def test_insurance_and_marketing_are_refused_with_the_reason(sm, tmp_path, purpose):
    with pytest.raises(ops.RegistryError) as exc:
        apply_file(sm, "tester", write(tmp_path, DIABETES.replace('"research"', f'"{purpose}"')))
    assert exc.value.problems == [
        f"purpose: purpose {purpose!r} is never permitted in this environment: data may be "
        "used for the public good, not for insurance or marketing"
    ]


def test_approval_without_its_governance_facts_is_refused_field_by_field(sm, tmp_path):
    text = DIABETES
    for line in (
        'ethics_reference = "IRAS 300001"\n',
        'lay_summary = "Does earlier HbA1c control reduce admissions?"\n',
        'dac_reference = "DAC-2026-017"\n',
        "dac_date = 2026-10-15\n",
        'lay_member = "Pat Lewis"\n',
        "lay_member_signed = 2026-10-12\n",
    ):
        text = text.replace(line, "")
    text = text.replace('public_benefit = """Earlier', 'public_benefit = """  """\nx = """')
    with pytest.raises(ops.RegistryError) as exc:
        apply_file(sm, "tester", write(tmp_path, text))
    assert exc.value.problems == [
        "x: unknown field",
        "approval.dac_reference: no Data Access Committee reference (needed for approval)",
        "approval.dac_date: no Data Access Committee approval date (needed for approval)",
        "ethics_reference: no ethics/HRA reference (needed for approval)",
        "lay_summary: no lay summary (needed for approval)",
        "public_benefit: no public-benefit statement (needed for approval)",
        "approval.lay_member: no sign-off by a lay (public) member of the approval panel "
        "(needed for approval)",
        "approval.lay_member_signed: no date of the lay member's sign-off (needed for approval)",
    ]


def test_a_file_that_is_not_toml_is_one_problem_and_audited(sm, tmp_path):
    res = cli(sm, "apply", str(write(tmp_path, "slug = \n")))
    assert res.exit_code == 1
    assert "project.toml: not valid TOML" in res.output and "Traceback" not in res.output
    with sm() as s:
        assert [e.outcome for e in audit.query(s, action="project.apply")] == ["denied"]


def _open_room(sm, user, project="diabetes-outcomes"):
    with sm() as s, s.begin():
        s.add(
            Workspace(
                username=user,
                server_name=project,
                project_slug=project,
                container=f"sde-{user}",
                started_at=datetime.now(UTC).replace(tzinfo=None),
            )
        )


def test_members_and_grants_left_out_are_removed_and_their_workspaces_closed(any_sm, tmp_path):
    sm = any_sm
    apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml")
    for user in ("alice", "bob"):
        _open_room(sm, user)
    with sm() as s:
        assert lifecycle.plan_from_db(s) == []
    # bob leaves the project; alice stays but loses her grant
    without_bob = DIABETES.replace(
        '[[members]]\nusername = "bob"\nname = "Bob"\nrole = "researcher"\n'
        "training_expires = 2030-06-30\n",
        "",
    ).replace(
        '[[datasets.grants]]\nmember = "bob"\ncolumns = ["pseudonym", "age", "diagnosis", '
        '"hba1c"]\nfilter = "region == \'north\'"\n',
        "",
    )
    without_grant = without_bob.replace(
        '[[datasets.grants]]\nmember = "alice"\ncolumns = ["pseudonym", "age", "sex", "region", '
        '"diagnosis", "hba1c"]\n',
        "",
    )
    assert without_grant != without_bob != DIABETES
    res = cli(sm, "apply", str(write(tmp_path, without_grant)))
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [
        "member bob (researcher) on diabetes-outcomes: removed "
        "(with its grants of patients; workspaces on it close at the next lifecycle sweep)",
        "grant patients to alice on diabetes-outcomes: removed "
        "(workspaces with it close at the next lifecycle sweep)",
    ]
    with sm() as s:
        closures = {(c.username, c.reason) for c in lifecycle.plan_from_db(s)}
        assert closures == {
            ("bob", "you are not a member of project diabetes-outcomes"),
            ("alice", "no dataset has been granted to you on project diabetes-outcomes"),
        }
        actions = [e.action for e in audit.query(s)][-4:]
        assert actions == [
            "grant.deleted",
            "membership.deleted",
            "grant.deleted",
            "project.applied",
        ]


def test_apply_does_not_undo_a_suspension_or_drop_an_approval(sm, tmp_path):
    apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml")
    ops.perform(sm, ops.suspend_project, "tester", "diabetes-outcomes", "DAC instruction")
    n = n_events(sm)
    res = apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml")
    assert n_events(sm) == n  # nothing changed, so nothing is recorded
    assert res.lines() == [
        "project diabetes-outcomes: left suspended (apply does not lift a suspension; "
        "`sde-admin project approve` does)"
    ]
    with sm() as s:
        assert s.scalar(select(Project)).status.value == "suspended"
    ops.perform(
        sm, ops.approve_project, "tester", "diabetes-outcomes", dac_reference="DAC-2026-017",
        dac_date="2026-10-15",
    )  # fmt: skip
    start = DIABETES.index("[approval]")
    draft = DIABETES[:start] + DIABETES[DIABETES.index("# signed <= start") :]
    with pytest.raises(ops.RegistryError) as exc:
        apply_file(sm, "tester", write(tmp_path, draft))
    assert exc.value.problems[0].startswith(
        "approval: missing, but the project is approved in the registry"
    )


def test_apply_has_help_and_needs_a_file():
    assert "Usage:" in CliRunner().invoke(main, ["apply", "--help"]).output
    res = CliRunner().invoke(main, ["apply"])
    assert res.exit_code == 2 and "Missing argument" in res.output


def test_what_the_file_leaves_out_takes_its_default(sm, tmp_path):
    apply_file(sm, "tester", EXAMPLES / "diabetes-outcomes.toml")
    start = DIABETES.index("[output_policy]")
    bare = DIABETES[:start]
    res = apply_file(sm, "tester", write(tmp_path, bare))
    assert res.lines()[0] == "project diabetes-outcomes: updated"
    with sm() as s:
        p = s.scalar(select(Project))
        assert (p.output_policy, p.required_approvals, p.cpu_limit, p.mem_limit) == (
            {},
            2,
            None,
            None,
        )


def test_a_dataset_source_in_the_file_is_relative_to_it_and_registered(sm, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "visits.csv").write_text("pseudo_id,visit\nP1,2026-01-01\n")
    text = DIABETES.replace(
        "[output_policy]",
        '[[datasets]]\nslug = "visits"\nsource = "data/visits.csv"\ntitle = "Visits"\n\n'
        '[[datasets.grants]]\nmember = "bob"\ncolumns = ["visit"]\n\n[output_policy]',
    )
    res = apply_file(sm, "tester", write(tmp_path, text))
    assert "dataset visits: created" in res.lines()
    assert "grant visits to bob on diabetes-outcomes: created" in res.lines()
    with sm() as s:
        assert ops.get_dataset(s, "visits").source_path == str(tmp_path / "data" / "visits.csv")


def test_missing_fields_are_each_named(sm, tmp_path):
    text = (
        'title = "T"\npurpose = "research"\n[organisation]\nname = "N"\n'
        '[[agreements]]\nreference = "A"\nsigned = 2026-01-01\nstart = 2026-01-01\n'
        "delete_by = 2026-09-01\n"
        '[[members]]\nusername = "alice"\n'
        '[[datasets]]\ntitle = "no slug"\n'
        '[[datasets]]\nslug = "patients"\nsource = "x.txt"\n'
    )
    with pytest.raises(ops.RegistryError) as exc:
        apply_file(sm, "tester", write(tmp_path, text))
    assert exc.value.problems == [
        "slug: missing",
        "organisation.kind: missing",
        "agreements[0].end: missing",
        "members[0].role: missing",
        "datasets[0].slug: missing",
        "datasets[1].source: must be a .csv or .parquet file",
    ]


def test_the_copy_out_rule_is_set_in_the_output_policy(sm, tmp_path):
    allow = DIABETES.replace(
        "zeros_are_disclosive = true", 'zeros_are_disclosive = true\nclipboard_out = "allow"'
    )
    assert allow != DIABETES
    assert cli(sm, "apply", str(write(tmp_path, allow))).exit_code == 0
    with sm() as s:
        p = s.scalar(select(Project).filter_by(slug="diabetes-outcomes"))
        assert p.output_policy["clipboard_out"] == "allow"
    typo = allow.replace('clipboard_out = "allow"', 'clipboard_out = "sometimes"')
    res = cli(sm, "apply", str(write(tmp_path, typo)))
    assert res.exit_code == 1
    assert [line.strip() for line in res.output.splitlines()[1:]] == [
        "output_policy.clipboard_out: clipboard_out must be 'block' or 'allow', not 'sometimes'"
    ]
    with sm() as s:
        p = s.scalar(select(Project).filter_by(slug="diabetes-outcomes"))
        assert p.output_policy["clipboard_out"] == "allow"  # nothing changed


@pytest.mark.parametrize(("value", "stored"), [("5", 5), ('"midpoint6"', "midpoint6")])
def test_the_rounding_rule_is_set_in_the_output_policy(sm, tmp_path, value, stored):
    rounded = DIABETES.replace(
        "zeros_are_disclosive = true", f"zeros_are_disclosive = true\nrounding = {value}"
    )
    assert cli(sm, "apply", str(write(tmp_path, rounded))).exit_code == 0
    with sm() as s:
        p = s.scalar(select(Project).filter_by(slug="diabetes-outcomes"))
        assert p.output_policy["rounding"] == stored
    res = cli(
        sm,
        "apply",
        str(write(tmp_path, rounded.replace(f"rounding = {value}", 'rounding = "tenish"'))),
    )
    assert res.exit_code == 1 and "output_policy.rounding" in res.output
