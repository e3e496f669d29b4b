"""The registry's one business layer: every problem in one RegistryError, change and audit
in one transaction, refusals audited after rollback, and the one open-workspaces query."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from sqlalchemy import select

from sde_spawner import audit
from sde_spawner.db import open_db
from sde_spawner.registry import ops, rules
from sde_spawner.registry.models import Project, ProjectStatus

NOW = datetime(2026, 12, 1, 12, 0)


@pytest.fixture
def sm(tmp_path):
    sm = open_db(f"sqlite:///{tmp_path}/r.sqlite")
    source = tmp_path / "people.csv"
    source.write_text("pseudo_id,age,region\nP1,40,north\n")
    ops.perform(sm, ops.add_dataset, "admin", "people", str(source))
    ops.perform(sm, ops.add_person, "admin", "alice", training_expires="2030-01-01")
    ops.perform(sm, ops.add_project, "admin", "study-a", title="A")
    ops.perform(sm, ops.add_member, "admin", "study-a", "alice", "researcher")
    return sm


def events(sm, **kw):
    with sm() as s:
        return audit.query(s, **kw)


def test_a_refusal_names_every_problem_at_once(sm):
    with pytest.raises(ops.RegistryError) as exc:
        ops.perform(
            sm, ops.add_grant, "admin", "ghost", "nobody", "nothing", columns=[], role="owner"
        )
    assert exc.value.problems == [
        "no such project: ghost",
        "no such person: nobody",
        "unknown role 'owner' (one of: researcher, output_checker, project_lead)",
        "no such dataset: nothing",
        "the grant names no column",
    ]
    assert str(exc.value) == "; ".join(exc.value.problems)


def test_a_refused_change_is_rolled_back_and_the_refusal_audited_on_its_own(sm):
    """approve_project sets the DAC facts before it finds what is lacking: none of it stays."""
    with pytest.raises(ops.RegistryError):
        ops.perform(
            sm,
            ops.approve_project,
            "admin",
            "study-a",
            dac_reference="DAC-1",
            dac_date="2026-11-01",
        )
    with sm() as s:
        p = s.scalar(select(Project).filter_by(slug="study-a"))
        assert (p.status.value, p.dac_reference, p.dac_approved_on) == ("draft", None, None)
    (denied,) = events(sm, action="project.approve")
    assert (denied.outcome, denied.actor, denied.project) == ("denied", "admin", "study-a")
    assert "no ethics/HRA reference" in denied.reason and "no lay summary" in denied.reason
    assert audit.verify(sm.kw["bind"]).ok


def test_a_future_committee_date_is_refused(sm):
    ops.perform(
        sm, ops.add_project, "admin", "study-a", ethics_reference="E", lay_summary="S",
        public_benefit="B",
    )  # fmt: skip
    with pytest.raises(ops.RegistryError) as exc:
        ops.perform(
            sm, ops.approve_project, "admin", "study-a", dac_reference="D", dac_date="2026-12-05",
            lay_member="Pat", lay_member_signed="2026-11-30", today=date(2026, 12, 1),
        )  # fmt: skip
    assert exc.value.problems == ["Data Access Committee date 2026-12-05 is in the future"]


def test_suspension_needs_a_reason_and_is_idempotent(sm):
    with pytest.raises(ops.RegistryError, match="a reason is needed"):
        ops.perform(sm, ops.suspend_person, "admin", "alice", " ")
    assert ops.perform(sm, ops.suspend_person, "admin", "alice", "DAC").line() == (
        "person alice: suspended"
    )
    assert ops.perform(sm, ops.suspend_person, "admin", "alice", "DAC").line() == (
        "person alice: already suspended"
    )
    assert [e.action for e in events(sm, action="person.*")][-1] == "person.suspended"


def test_open_and_close_workspace_keep_one_row_per_server_and_audit(sm):
    def start(server, address):
        with sm() as s, s.begin():
            ops.open_workspace(
                s, "alice", username="alice", server_name=server, project="study-a",
                container=f"sde-alice-{server}", address=address, now=NOW, datasets=["people"],
            )  # fmt: skip

    start("a", "10.0.0.2")
    start("a", "10.0.0.3")  # a restart closes the stale row of the same server
    start("b", "10.0.0.4")
    with sm() as s:
        assert [w.address for w in ops.open_workspaces(s)] == ["10.0.0.4", "10.0.0.3"]
        assert [w.server_name for w in ops.open_workspaces(s, address="10.0.0.3")] == ["a"]
        assert ops.open_workspaces(s, username="bob") == []
    with sm() as s, s.begin():
        out = ops.close_workspace(
            s, "alice", username="alice", server_name="a", project="study-a", now=NOW
        )
        assert out.line() == "workspace alice/a: stopped"
    with sm() as s:
        assert [w.server_name for w in ops.open_workspaces(s, username="alice")] == ["b"]
    actions = [e.action for e in events(sm) if e.action.startswith(("spawn", "workspace"))]
    assert actions == ["spawn.started"] * 3 + ["workspace.stopped"]


def test_agreement_rules_whole():
    d = date.fromisoformat
    ok = rules.agreement_problems(
        d("2026-01-01"), d("2026-01-01"), d("2026-06-01"), d("2026-06-01")
    )
    assert ok == []
    bad = rules.agreement_problems(
        d("2026-02-02"), d("2026-02-01"), d("2026-01-01"), d("2025-12-31")
    )
    assert bad == [
        ("end", "end 2026-01-01 is before start 2026-02-01"),
        ("delete_by", "data-deletion date 2025-12-31 is before end 2026-01-01"),
        ("signed", "signed 2026-02-02 after its start 2026-02-01: access cannot begin unsigned"),
    ]


def test_grant_rules_whole():
    known = ["pseudo_id", "age", "region"]
    assert rules.grant_problems(["age"], "region in ['north', 'east'] and age > 17", known) == []
    assert rules.grant_problems(["age", "age", "nhs"], "ward == 1 or not bed > 2", known) == [
        ("columns", "a column is named twice"),
        ("columns", "the dataset has no column 'nhs'"),
        ("filter", "row filter names unknown column 'bed', 'ward'"),
    ]
    assert rules.grant_problems("age", "", known) == [
        ("columns", "columns must be a list of column names")
    ]


def test_output_policy_and_limit_rules_whole():
    good = {"allowed_file_types": [".csv"], "cell_threshold": 10, "dof_threshold": 0,
            "zeros_are_disclosive": False}  # fmt: skip
    assert rules.output_policy_problems(good) == []
    assert rules.output_policy_problems(
        {"allowed_file_types": ["csv"], "cell_threshold": 0, "dof_threshold": True,
         "zeros_are_disclosive": "yes", "colour": "red"}
    ) == [
        ("colour", "unknown output policy setting 'colour'"),
        ("allowed_file_types", "allowed_file_types must list lower-case suffixes like '.csv'"),
        ("cell_threshold", "cell_threshold must be a whole number of at least 1, not 0"),
        ("dof_threshold", "dof_threshold must be a whole number of at least 0, not True"),
        ("zeros_are_disclosive", "zeros_are_disclosive must be true or false"),
    ]  # fmt: skip
    assert rules.limits_problems(2, "512m") == []
    assert rules.limits_problems(0, "2 GB") == [
        ("cpu", "cpu must be a number of cores from 0.1 to 64, not 0"),
        ("memory", "memory must look like '512m' or '2g', not '2 GB'"),
    ]


def test_revision_0006_builds_the_project_table_of_the_model_and_downgrades(tmp_path):
    from sqlalchemy import create_engine, inspect

    from sde_spawner.db import Base, upgrade

    def columns(engine):
        return {
            c["name"]: (type(c["type"]).__name__.upper(), c["nullable"])
            for c in inspect(engine).get_columns("project")
        }

    url = f"sqlite:///{tmp_path / 'migrated.sqlite'}"
    upgrade(url)  # head: later revisions add project columns of their own (0009)
    modelled = create_engine(f"sqlite:///{tmp_path / 'modelled.sqlite'}")
    Base.metadata.create_all(modelled, tables=[Base.metadata.tables["project"]])
    assert columns(create_engine(url)) == columns(modelled)
    assert "public_benefit" in columns(modelled)

    from alembic import command

    from sde_spawner.db import alembic_config

    command.downgrade(alembic_config(url), "0005")
    assert "public_benefit" not in columns(create_engine(url))


def test_a_project_approved_before_0006_can_have_its_governance_filled_in(sm):
    """It lacks the lay sign-off and public benefit; adding one fact at a time is allowed,
    taking one away is not."""
    with sm() as s, s.begin():
        p = s.scalar(select(Project).filter_by(slug="study-a"))
        p.status, p.dac_reference, p.dac_approved_on = ProjectStatus.approved, "D", date(2026, 1, 1)
        p.ethics_reference, p.lay_summary = "E", "S"
    out = ops.perform(sm, ops.add_project, "admin", "study-a", public_benefit="B")
    assert out.changes == {"public_benefit": ["", "B"]}
    with pytest.raises(ops.RegistryError) as exc:
        ops.perform(sm, ops.add_project, "admin", "study-a", ethics_reference="")
    assert exc.value.problems == ["an approved project needs it: no ethics/HRA reference"]


def test_clear_resets_a_limit_and_none_leaves_it(sm):
    ops.perform(sm, ops.add_project, "admin", "study-a", cpu_limit=2, mem_limit="4g")
    ops.perform(sm, ops.add_project, "admin", "study-a", cpu_limit=None, mem_limit=ops.CLEAR)
    with sm() as s:
        p = s.scalar(select(Project).filter_by(slug="study-a"))
        assert (p.cpu_limit, p.mem_limit) == (2.0, None)


def test_a_projects_output_policy_becomes_its_workspaces_disclosure_settings():
    from sde_spawner.spawner import project_sdc_env

    assert project_sdc_env({}) == {}
    assert project_sdc_env(
        {"cell_threshold": 5, "zeros_are_disclosive": False, "rounding": "midpoint6",
         "allowed_file_types": [".csv"]}
    ) == {
        "SDE_SDC_THRESHOLD": "5",
        "SDE_SDC_ZEROS_ARE_DISCLOSIVE": "false",
        "SDE_SDC_ROUNDING": "midpoint6",
    }  # fmt: skip
    assert rules.output_policy_problems({"rounding": "seven"}) == [
        ("rounding", "rounding must be empty, a base such as 5, or midpoint6, not 'seven'")
    ]
    assert rules.output_policy_problems({"rounding": "5"}) == []
