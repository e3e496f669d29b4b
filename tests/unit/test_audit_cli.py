"""``sde-admin audit`` commands through click's CliRunner, on a migrated SQLite file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from sde_spawner import audit
from sde_spawner.audit.cli import audit_group
from sde_spawner.audit.models import AuditEvent
from sde_spawner.db import make_engine, make_sessionmaker, upgrade

KEY = b"cli-test-key-0123456789abcdefghij"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
CLEAN_ENV = {"SDE_DB_URL": None, "SDE_AUDIT_KEY_FILE": None, "SDE_AUDIT_CHECKPOINT_FILE": None}


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        audit.append(s, "workspace.start", actor="alice", project="p1", at=T0)
        audit.append(
            s,
            "export.request",
            actor="bob",
            project="p2",
            outcome="denied",
            reason="agreement ended 2025-02-28",
            at=T0 + timedelta(hours=1),
        )
        audit.append(s, "workspace.start", actor="bob", project="p2", at=T0 + timedelta(days=2))
        s.commit()
    engine.dispose()
    return url


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "audit.key"
    path.write_bytes(KEY + b"\n")
    return path


def run(*args, env=None):
    runner = CliRunner()
    return runner.invoke(audit_group, list(args), env={**CLEAN_ENV, **(env or {})})


def _tamper(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER audit_event_no_update")
        c.execute(update(AuditEvent.__table__).where(AuditEvent.seq == 2).values(reason="ok"))
    engine.dispose()


def test_verify_ok(url):
    result = run("--db", url, "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout == "OK: 3 events verified\n"


def test_verify_reads_the_db_url_from_the_environment(url):
    result = run("verify", env={"SDE_DB_URL": url})
    assert (result.exit_code, result.stdout) == (0, "OK: 3 events verified\n")


def test_verify_broken(url):
    _tamper(url)
    result = run("--db", url, "verify")
    assert result.exit_code == 1
    assert result.stdout.startswith("BROKEN at seq 2: hash does not match")


def test_checkpoint_then_truncation_is_reported(url, key_file, tmp_path):
    cp_file = tmp_path / "cp.jsonl"
    env = {"SDE_AUDIT_KEY_FILE": str(key_file), "SDE_AUDIT_CHECKPOINT_FILE": str(cp_file)}
    result = run("--db", url, "checkpoint", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("checkpoint at seq 3 hash ")
    assert json.loads(cp_file.read_text())["seq"] == 3

    engine = make_engine(url)
    with engine.begin() as c:
        for stmt in (
            "DROP TRIGGER audit_event_no_delete",
            "DROP TRIGGER audit_checkpoint_no_delete",
            "DELETE FROM audit_event WHERE seq = 3",
            "DELETE FROM audit_checkpoint",
        ):
            c.exec_driver_sql(stmt)
        head_hash = c.exec_driver_sql("SELECT hash FROM audit_event WHERE seq = 2").scalar()
        c.exec_driver_sql("UPDATE audit_head SET seq = 2, hash = ?", (head_hash,))
    engine.dispose()

    result = run("--db", url, "verify", env=env)
    assert result.exit_code == 1
    assert result.stdout.startswith("BROKEN at seq 3: chain ends at seq 2 but cp.jsonl:1")
    # and the checkpoint command refuses to sign the truncated chain
    result = run("--db", url, "checkpoint", env=env)
    assert result.exit_code == 2
    assert "refusing to sign: BROKEN at seq 3" in result.stderr
    assert len(cp_file.read_text().splitlines()) == 1


def test_checkpoint_without_key_is_a_one_line_error(url):
    result = run("--db", url, "checkpoint")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: no checkpoint key: pass --key-file or set SDE_AUDIT_KEY_FILE"
    ]


def test_short_or_missing_key_file_is_an_error(url, tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    result = run("--db", url, "--key-file", str(short), "verify")
    assert result.exit_code == 2 and "at least 16 bytes" in result.stderr
    result = run("--db", url, "--key-file", str(tmp_path / "nope.key"), "checkpoint")
    assert result.exit_code == 2 and "cannot read checkpoint key file" in result.stderr


def test_export_to_stdout_and_file(url, tmp_path):
    result = run("--db", url, "export", "--person", "bob")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [2, 3]
    assert lines[0]["reason"] == "agreement ended 2025-02-28"
    assert set(lines[0]) == {
        "seq",
        "at",
        "actor",
        "action",
        "project",
        "outcome",
        "reason",
        "details",
        "prev_hash",
        "hash",
    }
    assert "exported 2 events to stdout" in result.stderr

    out = tmp_path / "siem.jsonl"
    result = run("--db", url, "export", "--out", str(out), "--since", "2025-03-01T09:30Z")
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["seq"] for x in out.read_text().splitlines()] == [2, 3]


def test_query_prints_a_table(url):
    result = run("--db", url, "query", "--project", "p2", "--action", "export.*")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["seq", "at", "actor", "action", "project", "outcome", "reason"]
    assert row.split()[:6] == [
        "2",
        "2025-03-01T10:00:00.000000Z",
        "bob",
        "export.request",
        "p2",
        "denied",
    ]
    assert row.endswith("agreement ended 2025-02-28")


@pytest.mark.parametrize(
    ("args", "expected_seqs"),
    [
        (["--person", "alice"], ["1"]),
        (["--until", "2025-03-02"], ["1", "2"]),
        (["--since", "2025-03-01T10:00:00+00:00"], ["2", "3"]),
        (["--limit", "1"], ["1"]),
        (["--action", "workspace.start", "--person", "bob"], ["3"]),
    ],
)
def test_query_filters(url, args, expected_seqs):
    result = run("--db", url, "query", *args)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == expected_seqs


def test_bad_time_is_a_one_line_error(url):
    result = run("--db", url, "query", "--since", "last tuesday")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--since: 'last tuesday' is not an ISO-8601 date" in result.stderr


def test_database_without_audit_tables_is_a_one_line_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    result = run("--db", url, "verify")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "no audit tables" in line and "run the migrations" in line


@pytest.mark.parametrize("command", [[], ["verify"], ["export"], ["query"], ["checkpoint"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ")


def test_query_escapes_control_characters_from_workspace_events(url):
    """A workspace writes reasons and names into events; ``audit query`` must not hand their
    terminal escapes (colour, cursor moves, title set, bidi override) to the admin's terminal."""
    hostile = "ok\x1b[2J\x1b]0;pwned\x07\r\nseq 99 forged\u202etxt.exe\\x1b"
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        audit.append(s, "code.executed", actor="alice", project="p1", reason=hostile)
        s.commit()
    engine.dispose()
    result = run("--db", url, "query", "--action", "code.executed")
    assert result.exit_code == 0, result.output
    _header, row = result.stdout.splitlines()  # the CR/LF did not make a second row
    assert not any(ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xA0 for c in row)
    assert "\u202e" not in row
    assert row.endswith("ok\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x0aseq 99 forged\\u202etxt.exe\\\\x1b")
