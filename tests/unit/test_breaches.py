"""Breaches and sanctions: recorded with their audit event, the sanction applied in the same
transaction (suspension through ops.suspend_person, removal through ops.remove_member), every
problem of a bad record named at once and the refusal audited."""

from __future__ import annotations

from datetime import date

import pytest
from click.testing import CliRunner

from sde_spawner import audit
from sde_spawner.cli import main
from sde_spawner.db import open_db
from sde_spawner.registry import ops
from sde_spawner.registry.breaches import list_breaches, record_breach
from sde_spawner.registry.models import Membership, PersonStatus


@pytest.fixture
def sm(tmp_path):
    sm = open_db(f"sqlite:///{tmp_path}/r.sqlite")
    source = tmp_path / "people.csv"
    source.write_text("pseudo_id,age\nP1,40\n")
    ops.perform(sm, ops.add_dataset, "admin", "people", str(source))
    ops.perform(sm, ops.add_person, "admin", "alice", training_expires="2030-01-01")
    ops.perform(sm, ops.add_project, "admin", "study-a", title="A")
    ops.perform(sm, ops.add_member, "admin", "study-a", "alice", "researcher")
    ops.perform(sm, ops.add_grant, "admin", "study-a", "alice", "people", columns=["age"])
    return sm


def actions(sm):
    with sm() as s:
        return [(e.action, e.outcome) for e in audit.query(s)]


def test_a_warning_is_recorded_and_audited_only(sm):
    before = len(actions(sm))
    out = ops.perform(
        sm, record_breach, "dpo", "alice", "study-a", what="shared screen", sanction="warning"
    )
    assert out.status == "recorded (warning)" and out.note == ""
    assert actions(sm)[before:] == [("breach.recorded", "allowed")]
    with sm() as s:
        (b,) = list_breaches(s)
        assert (b.username, b.project_slug, b.what, b.recorded_by) == (
            "alice",
            "study-a",
            "shared screen",
            "dpo",
        )
        assert ops.get_person(s, "alice").status == PersonStatus.active


def test_a_suspension_suspends_the_person_in_the_same_transaction(sm):
    out = ops.perform(
        sm,
        record_breach,
        "dpo",
        "alice",
        "study-a",
        what="copied data",
        sanction="suspension",
        on="2026-01-05",
    )
    assert "person alice: suspended" in out.note
    with sm() as s:
        assert ops.get_person(s, "alice").status == PersonStatus.suspended
        ev = audit.query(s)[-1]
        assert ev.action == "person.suspended" and "breach #1" in ev.reason
        assert list_breaches(s)[0].occurred_on == date(2026, 1, 5)


def test_a_removal_takes_the_role_and_its_grants_away(sm):
    ops.perform(sm, record_breach, "dpo", "alice", "study-a", what="x", sanction="removal")
    with sm() as s:
        assert s.query(Membership).count() == 0
    tail = [a for a, _ in actions(sm)[-3:]]
    assert tail == ["breach.recorded", "grant.deleted", "membership.deleted"]


def test_every_problem_at_once_nothing_written_refusal_audited(sm):
    with pytest.raises(ops.RegistryError) as exc:
        ops.perform(
            sm, record_breach, "dpo", "nobody", "ghost", what=" ", sanction="fine", on="2999-01-01"
        )
    assert exc.value.problems == [
        "no such person: nobody",
        "no such project: ghost",
        "say what the breach was (it is recorded)",
        "unknown sanction 'fine' (one of: warning, suspension, removal)",
        "a breach cannot be recorded for a future date (2999-01-01)",
    ]
    with sm() as s:
        assert list_breaches(s) == []
    assert actions(sm)[-1] == ("breach.record", "denied")


def test_removal_of_a_non_member_is_refused(sm):
    ops.perform(sm, ops.add_person, "admin", "bob")
    with pytest.raises(ops.RegistryError, match="bob has no role on study-a to remove"):
        ops.perform(sm, record_breach, "dpo", "bob", "study-a", what="x", sanction="removal")


def test_cli_record_and_list(tmp_path, sm):
    db = f"sqlite:///{tmp_path}/r.sqlite"
    r = CliRunner().invoke(
        main,
        [
            "--db",
            db,
            "breach",
            "record",
            "alice",
            "study-a",
            "--what",
            "left unlocked",
            "--sanction",
            "suspension",
        ],
        env={"SDE_ADMIN": "tester"},
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith("breach #1 by alice on study-a: recorded (suspension)")
    r = CliRunner().invoke(main, ["--db", db, "breach", "list"])
    assert "left unlocked" in r.output and "suspension" in r.output
    r = CliRunner().invoke(
        main,
        ["--db", db, "breach", "record", "alice", "study-a", "--what", "x", "--sanction", "ban"],
    )
    assert r.exit_code == 1 and "refused: unknown sanction 'ban'" in r.output


def test_revision_0009_builds_the_tables_of_the_model_and_downgrades(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine, inspect

    from sde_spawner.db import Base, alembic_config, upgrade

    tables = ("breach", "deletion_certificate", "project")

    def columns(engine):
        insp = inspect(engine)
        return {
            t: {
                c["name"]: (type(c["type"]).__name__.upper(), c["nullable"])
                for c in insp.get_columns(t)
            }
            for t in tables
            if insp.has_table(t)
        }

    url = f"sqlite:///{tmp_path / 'migrated.sqlite'}"
    upgrade(url)  # to the head: later revisions add columns to project too
    modelled = create_engine(f"sqlite:///{tmp_path / 'modelled.sqlite'}")
    Base.metadata.create_all(modelled, tables=[Base.metadata.tables[t] for t in tables])
    assert columns(create_engine(url)) == columns(modelled)
    command.downgrade(alembic_config(url), "0006")
    after = columns(create_engine(url))
    assert set(after) == {"project"} and "register_names" not in after["project"]
