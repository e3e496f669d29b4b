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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["person", "add", "Bad Name"], "username 'Bad Name' must be"),
        (
            ["person", "add", "bob", "--training-expires", "31/12/2026"],
            "--training-expires must be a date like 2026-12-31",
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
        (["project", "add", "no-title"], "a new project needs --title"),
        (
            ["project", "approve", "ghost", "--dac-ref", "D", "--dac-date", "2026-01-01"],
            "no such project: ghost",
        ),
        (["grant", "add", "ghost", "alice", "ds", "--columns", ""], "--columns names no column"),
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
        (["dataset", "add", "ds1", "/nonexistent/file.csv"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error_and_changes_nothing(db, args, message):
    res = run(db, *args)
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert events(db) == []


def test_agreement_dates_are_checked_and_approval_needs_ethics(db):
    assert run(db, "project", "add", "study-a", "--title", "A").exit_code == 0
    res = run(db, "project", "approve", "study-a", "--dac-ref", "D1", "--dac-date", "2026-01-01")
    assert res.exit_code == 1 and "no ethics/HRA reference" in res.output
    res = run(
        db,
        "agreement",
        "add",
        "study-a",
        "A1",
        "--start",
        "2026-02-01",
        "--end",
        "2026-01-01",
        "--delete-by",
        "2026-03-01",
    )
    assert res.exit_code == 2 and "--end is before --start" in res.output
    res = run(
        db,
        "agreement",
        "add",
        "study-a",
        "A1",
        "--start",
        "2026-01-01",
        "--end",
        "2026-06-01",
        "--delete-by",
        "2026-05-01",
    )
    assert res.exit_code == 2 and "--delete-by is before --end" in res.output
    with open_db(db)() as s:
        assert s.scalar(select(Project).filter_by(slug="study-a")).status.value == "draft"


def test_change_and_audit_share_one_transaction(db, monkeypatch):
    """If writing the audit row fails, the registry change is rolled back with it."""
    import sde_spawner.cli as cli

    def broken(*a, **k):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(cli.audit, "append", broken)
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
    assert all(
        line.endswith(("unchanged", "already a member")) or "unchanged" in line
        for line in second.output.splitlines()
    ), second.output
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
