"""sde-admin: --help everywhere, one clear error line, idempotent adds, audit with each change."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from sde_spawner import audit
from sde_spawner.cli import main
from sde_spawner.db import open_db
from sde_spawner.registry.models import Project


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/r.sqlite"


def run(db, *args, env=None):
    return CliRunner().invoke(main, ["--db", db, *args], env={"SDE_ADMIN": "tester", **(env or {})})


def events(db):
    with open_db(db)() as s:
        return audit.query(s)


def all_commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", list(all_commands(main)))
def test_every_command_has_help(path):
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_add_is_idempotent_and_audited(db):
    assert run(db, "person", "add", "alice", "--training-expires", "2027-01-01").output == (
        "person alice: created\n"
    )
    assert run(db, "person", "add", "alice", "--training-expires", "2027-01-01").output == (
        "person alice: unchanged\n"
    )
    assert run(db, "person", "add", "alice", "--training-expires", "2027-02-01").output == (
        "person alice: updated\n"
    )
    ev = [(e.action, e.actor) for e in events(db)]
    assert ev == [("person.created", "tester"), ("person.updated", "tester")]
    upd = events(db)[-1]
    assert "2027-02-01" in upd.details and "2027-01-01" in upd.details


def denials(db):
    return [(e.action, e.outcome, e.reason) for e in events(db) if e.outcome == "denied"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["person", "add", "Bad Name"], "username 'Bad Name' must be"),
        (
            ["person", "add", "bob", "--training-expires", "31/12/2026"],
            "training_expires must be a date like 2026-12-31",
        ),
        (["project", "add", "p1", "--title", "x"], "project 'p1' must be 3-40 characters"),
        (
            ["project", "add", "insure-me", "--title", "x", "--purpose", "insurance"],
            "purpose 'insurance' is never permitted",
        ),
        (
            ["project", "add", "sell-me", "--title", "x", "--purpose", "Marketing"],
            "purpose 'Marketing' is never permitted",
        ),
        (
            ["project", "add", "odd-purpose", "--title", "x", "--purpose", "fun"],
            "purpose 'fun' is not one of",
        ),
        (["project", "add", "no-title"], "a new project needs a title"),
        (
            ["project", "add", "bad-kind", "--title", "x", "--organisation-kind", "guild"],
            "organisation kind 'guild' is not one of",
        ),
        (
            ["project", "approve", "ghost", "--dac-ref", "D", "--dac-date", "2026-01-01"],
            "no such project: ghost",
        ),
        (["grant", "add", "ghost", "alice", "ds", "--columns", ""], "the grant names no column"),
        (
            [
                "grant",
                "add",
                "ghost",
                "alice",
                "ds",
                "--columns",
                "a",
                "--filter",
                "__import__('os')",
            ],
            "row filter",
        ),
        (["member", "add", "ghost", "alice", "--role", "owner"], "unknown role 'owner'"),
        (["dataset", "add", "ds1", "/nonexistent/file.csv"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error_changes_nothing_and_is_audited(db, args, message):
    res = run(db, *args)
    assert res.exit_code == 1
    assert message in res.output
    assert res.output.startswith("Error: refused: ") and res.output.count("\n") == 1
    assert "Traceback" not in res.output
    ev = events(db)
    assert len(ev) == 1 and ev[0].outcome == "denied" and ev[0].actor == "tester"
    assert message in ev[0].reason


def test_an_unknown_project_and_every_bad_date_are_all_reported(db):
    res = run(
        db, "agreement", "add", "ghost", "A1", "--signed", "soon", "--start", "2026-13-01",
        "--end", "2026-06-01", "--delete-by", "2026-05-01",
    )  # fmt: skip
    assert res.exit_code == 1
    for part in (
        "no such project: ghost",
        "signed must be a date like 2026-12-31, not 'soon'",
        "start must be a date like 2026-12-31, not '2026-13-01'",
        "data-deletion date 2026-05-01 is before end 2026-06-01",
    ):
        assert part in res.output, res.output
    assert denials(db)[0][0] == "agreement.add"


def test_agreement_dates_are_checked_in_order(db):
    assert run(db, "project", "add", "study-a", "--title", "A").exit_code == 0

    def agreement(**dates):
        args = [f"--{k.replace('_', '-')}={v}" for k, v in dates.items()]
        return run(db, "agreement", "add", "study-a", "A1", *args)

    res = agreement(start="2026-02-01", end="2026-01-01", delete_by="2025-12-01")
    assert res.exit_code == 1
    assert "end 2026-01-01 is before start 2026-02-01" in res.output
    assert "data-deletion date 2025-12-01 is before end 2026-01-01" in res.output
    res = agreement(
        signed="2026-01-05", start="2026-01-01", end="2026-06-01", delete_by="2026-09-01"
    )
    assert res.exit_code == 1
    assert "signed 2026-01-05 after its start 2026-01-01" in res.output
    ok = agreement(
        signed="2026-01-01", start="2026-01-01", end="2026-06-01", delete_by="2026-09-01"
    )
    assert ok.output == "agreement A1: created\n"
    assert [a for a, _, _ in denials(db)] == ["agreement.add", "agreement.add"]


def test_approval_needs_every_governance_fact_and_lists_what_is_missing(db):
    assert run(db, "project", "add", "study-a", "--title", "A").exit_code == 0
    res = run(db, "project", "approve", "study-a", "--dac-ref", "D1", "--dac-date", "2026-01-01")
    assert res.exit_code == 1
    for missing in (
        "no ethics/HRA reference",
        "no lay summary",
        "no public-benefit statement",
        "no sign-off by a lay (public) member",
        "no date of the lay member's sign-off",
    ):
        assert missing in res.output, res.output
    assert run(
        db, "project", "add", "study-a", "--ethics-ref", "IRAS 1", "--lay-summary", "What",
        "--public-benefit", "Why", "--organisation", "Uni", "--organisation-kind", "academic",
    ).exit_code == 0  # fmt: skip
    approve = [
        "project", "approve", "study-a", "--dac-ref", "D1", "--dac-date", "2026-01-01",
        "--lay-member", "Pat", "--lay-member-date", "2025-12-20",
    ]  # fmt: skip
    assert run(db, *approve).output == "project study-a: approved\n"
    assert run(db, *approve).output == "project study-a: unchanged\n"
    # an approved project cannot lose what its approval rests on
    res = run(db, "project", "add", "study-a", "--lay-summary", "")
    assert res.exit_code == 1 and "an approved project needs it: no lay summary" in res.output
    with open_db(db)() as s:
        p = s.scalar(select(Project).filter_by(slug="study-a"))
        assert (p.status.value, p.lay_summary) == ("approved", "What")


@pytest.fixture
def granted(db, tmp_path):
    source = tmp_path / "people.csv"
    source.write_text("pseudo_id,age,region\nP1,40,north\n")
    for args in (
        ["dataset", "add", "people", str(source)],
        ["person", "add", "alice"],
        ["project", "add", "study-a", "--title", "A"],
        ["member", "add", "study-a", "alice", "--role", "researcher"],
    ):
        assert run(db, *args).exit_code == 0
    return db


def test_grant_add_refuses_columns_and_filters_the_dataset_does_not_have(granted):
    db = granted
    res = run(db, "grant", "add", "study-a", "alice", "people", "--columns", "pseudo_id,nhs_number")
    assert res.exit_code == 1 and "the dataset has no column 'nhs_number'" in res.output
    res = run(
        db, "grant", "add", "study-a", "alice", "people", "--columns", "pseudo_id",
        "--filter", "postcode == 'ZZ1'",
    )  # fmt: skip
    assert res.exit_code == 1 and "row filter names unknown column 'postcode'" in res.output
    # a filter may use a column the member does not see (bob: region rows, no region column)
    res = run(
        db, "grant", "add", "study-a", "alice", "people", "--columns", "pseudo_id,age",
        "--filter", "region == 'north'",
    )  # fmt: skip
    assert res.output == "grant people to alice on study-a: created\n"
    assert [a for a, _, _ in denials(db)] == ["grant.add", "grant.add"]


def test_grant_add_without_filter_keeps_the_row_filter_until_cleared(granted):
    from sde_spawner.registry.models import Grant

    db = granted

    def row_filter():
        with open_db(db)() as s:
            return s.scalar(select(Grant)).row_filter

    first = ["grant", "add", "study-a", "alice", "people", "--columns", "pseudo_id"]
    assert run(db, *first, "--filter", "age >= 18").exit_code == 0
    res = run(db, "grant", "add", "study-a", "alice", "people", "--columns", "pseudo_id,age")
    assert res.output == (
        "grant people to alice on study-a: updated "
        "(row filter kept: age >= 18; --clear-filter removes it)\n"
    )
    assert row_filter() == "age >= 18"
    res = run(db, "grant", "add", "study-a", "alice", "people", "--columns", "pseudo_id,age",
              "--clear-filter")  # fmt: skip
    assert res.output == "grant people to alice on study-a: updated\n"
    assert row_filter() == ""
    res = run(db, *first, "--filter", "age > 1", "--clear-filter")
    assert res.exit_code == 1 and "give a row filter or clear it, not both" in res.output


def test_removing_a_grant_or_member_is_audited_and_says_workspaces_close(granted):
    db = granted
    assert run(db, "grant", "add", "study-a", "alice", "people", "--columns", "age").exit_code == 0
    res = run(db, "grant", "remove", "study-a", "alice", "people")
    assert res.output == (
        "grant people to alice on study-a: removed "
        "(workspaces with it close at the next lifecycle sweep)\n"
    )
    assert run(db, "grant", "remove", "study-a", "alice", "people").output.endswith("not granted\n")
    res = run(db, "member", "remove", "study-a", "alice", "--role", "researcher")
    assert res.output.endswith("removed (workspaces on it close at the next lifecycle sweep)\n")
    actions = [e.action for e in events(db)]
    assert actions[-2:] == ["grant.deleted", "membership.deleted"]


def test_change_and_audit_share_one_transaction(db, monkeypatch):
    """If writing the audit row fails, the registry change is rolled back with it."""
    from sde_spawner.registry import ops

    def broken(*a, **k):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(ops.audit, "append", broken)
    res = run(db, "person", "add", "carol")
    assert res.exit_code != 0
    monkeypatch.undo()
    assert "carol" not in run(db, "person", "list").output


def test_demo_seed_twice_changes_nothing_the_second_time(db, tmp_path):
    first = run(db, "demo-seed", str(tmp_path / "data"))
    assert first.exit_code == 0, first.output
    n = len(events(db))
    second = run(db, "demo-seed", str(tmp_path / "data"))
    assert second.exit_code == 0
    assert second.output.splitlines() == [
        "dataset patients: unchanged",
        "person admin: unchanged",
        "opt-out list national: unchanged (version 1, 20 numbers)",
        "opt-out list local:demo-trust: unchanged (version 1, 13 numbers)",
        "project diabetes-outcomes: unchanged",
        "project cardio-audit: unchanged",
        "opt-out list local:demo-trust on diabetes-outcomes: unchanged",
    ]
    assert len(events(db)) == n


def test_a_new_sqlite_database_gets_its_directory(tmp_path):
    db = f"sqlite:///{tmp_path}/not/yet/there/r.sqlite"
    res = run(db, "init")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "not/yet/there/r.sqlite").exists()


def test_enforce_dry_run_lists_open_workspaces_that_must_close(db, tmp_path):
    from datetime import UTC, datetime

    from sde_spawner.registry.models import Workspace

    assert run(db, "demo-seed", str(tmp_path / "data")).exit_code == 0
    with open_db(db)() as s, s.begin():
        for user in ("alice", "bob"):
            s.add(
                Workspace(
                    username=user,
                    server_name="diabetes-outcomes",
                    project_slug="diabetes-outcomes",
                    container=f"sde-{user}",
                    started_at=datetime.now(UTC).replace(tzinfo=None),
                )
            )
    assert run(db, "enforce", "--dry-run").output == ""
    assert run(db, "person", "suspend", "bob", "--reason", "DAC instruction").exit_code == 0
    assert run(db, "enforce", "--dry-run").output == (
        "would close bob/diabetes-outcomes (diabetes-outcomes): your account is suspended\n"
    )
