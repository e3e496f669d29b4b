"""The audit store on SQLite and on a real PostgreSQL server (env SDE_TEST_POSTGRES_URL).

Each test gets a fresh database brought up by the Alembic migrations (a temp SQLite file, or a
unique PostgreSQL schema dropped afterwards). Tamper tests play an attacker with direct
database access: they drop the append-only triggers and edit rows, and ``verify`` must name
the first broken sequence number.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, insert, inspect, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from sde_spawner import audit
from sde_spawner.audit.canonical import (
    GENESIS_HASH,
    canonical_json,
    event_content,
    event_hash,
    format_timestamp,
    sign_checkpoint,
)
from sde_spawner.audit.models import AUDIT_TABLES, AuditCheckpoint, AuditEvent, AuditHead
from sde_spawner.db import Base, make_engine, make_sessionmaker, upgrade

KEY = b"test-checkpoint-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]
EVENTS = AuditEvent.__table__
HEAD = AuditHead.__table__
CHECKPOINTS = AuditCheckpoint.__table__
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class Db:
    url: str
    engine: Engine

    def __post_init__(self):
        self.Session = make_sessionmaker(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def rows(self) -> list[AuditEvent]:
        with self.Session() as s:
            return list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))

    def verify(self, **kwargs) -> audit.VerifyResult:
        return audit.verify(self.engine, **kwargs)

    # --- the attacker ------------------------------------------------------------------
    def drop_triggers(self) -> None:
        with self.engine.begin() as c:
            for table in ("audit_event", "audit_checkpoint"):
                if self.dialect == "sqlite":
                    c.exec_driver_sql(f"DROP TRIGGER {table}_no_update")
                    c.exec_driver_sql(f"DROP TRIGGER {table}_no_delete")
                else:
                    c.exec_driver_sql(f"DROP TRIGGER {table}_no_update_delete ON {table}")
                    c.exec_driver_sql(f"DROP TRIGGER {table}_no_truncate ON {table}")

    def attack(self, *statements) -> None:
        self.drop_triggers()
        with self.engine.begin() as c:
            for stmt in statements:
                c.execute(stmt)


def _pg_base_url() -> str | None:
    return os.environ.get("SDE_TEST_POSTGRES_URL") or None


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        yield Db(url, engine)
        engine.dispose()
        return
    base = _pg_base_url()
    if base is None:
        pytest.skip("SDE_TEST_POSTGRES_URL is not set: PostgreSQL run of the store tests skipped")
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    engine = None
    try:
        upgrade(url)
        engine = make_engine(url)
        yield Db(url, engine)
    finally:
        if engine is not None:
            engine.dispose()
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def fill(db: Db, n: int = 30, *, start: datetime = T0) -> None:
    """n varied events: singles and batches in several transactions."""
    people = ["alice", "bob", None]
    with db.Session() as s:
        for i in range(n // 2):
            audit.append(
                s,
                "workspace.start" if i % 2 else "project.approve",
                actor=people[i % 3],
                project=f"p{i % 2}",
                outcome=("allowed", "denied", "error")[i % 3],
                reason=None if i % 2 else f"reason {i} ✓",
                details={"i": i, "nested": {"z": [1, 2.5, None]}} if i % 4 else None,
                at=start + timedelta(minutes=i),
            )
            if i % 5 == 4:
                s.commit()
        s.commit()
    with db.Session() as s:
        audit.append_many(
            s,
            [
                {
                    "action": "file.open",
                    "actor": "carol",
                    "project": "p2",
                    "details": {"path": f"/data/{i}.csv"},
                    "at": start + timedelta(hours=1, minutes=i),
                }
                for i in range(n - n // 2)
            ],
        )
        s.commit()


def take_checkpoint(db: Db, file: Path | None = None) -> AuditCheckpoint:
    with db.Session() as s:
        record = audit.checkpoint(s, KEY, file=file)
        s.commit()
    return record


def rehash(event: AuditEvent, **changes) -> dict:
    """The row as an attacker with SHA-256 would rewrite it: fields changed, hash recomputed."""
    values = {c.name: getattr(event, c.name) for c in EVENTS.columns}
    values.update(changes)
    values["hash"] = event_hash(
        values["seq"],
        format_timestamp(values["at"]),
        values["actor"],
        values["action"],
        values["project"],
        values["outcome"],
        values["reason"],
        values["details"],
        values["prev_hash"],
    )
    return values


def rewrite_from(db: Db, first: int, **changes) -> list:
    """Statements that rewrite rows first..N with valid hashes (and fix the head pointer)."""
    rows = db.rows()
    prev = rows[first - 2].hash if first > 1 else GENESIS_HASH
    statements = []
    for event in rows[first - 1 :]:
        values = rehash(event, prev_hash=prev, **(changes if event.seq == first else {}))
        statements.append(update(EVENTS).where(EVENTS.c.seq == event.seq).values(**values))
        prev = values["hash"]
    statements.append(update(HEAD).values(seq=rows[-1].seq, hash=prev))
    return statements


# --- good data ---------------------------------------------------------------------------


def test_good_chain_verifies(db):
    fill(db, 30)
    take_checkpoint(db)
    result = db.verify(checkpoint_key=KEY)
    assert result.ok, result
    assert result.checked == 30
    assert result.first_bad_seq is None
    assert result.checkpoints_checked == 1 and result.signatures_checked
    # verify also runs on a Session and reports the same
    with db.Session() as s:
        assert audit.verify(s, checkpoint_key=KEY).checked == 30


def test_empty_trail_verifies(db):
    result = db.verify()
    assert result.ok and result.checked == 0
    take_checkpoint(db)  # a checkpoint of the empty chain (seq 0) is valid
    assert db.verify(checkpoint_key=KEY).ok


def test_seq_is_gapless_from_one_and_chain_links(db):
    fill(db, 12)
    rows = db.rows()
    assert [r.seq for r in rows] == list(range(1, 13))
    assert rows[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    with db.Session() as s:
        head = s.get(AuditHead, 1)
        assert (head.seq, head.hash) == (12, rows[-1].hash)


def test_append_returns_the_stored_row(db):
    at = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    with db.Session() as s:
        event = audit.append(
            s,
            "export.release",
            actor="checker1",
            project="p1",
            outcome="denied",
            reason="needs a second approval",
            details={"b": 2, "a": "ü"},
            at=at,
        )
        s.commit()
    assert event.seq == 1 and event.at == at
    stored = db.rows()[0]
    assert stored.at == at and stored.at.tzinfo is not None
    assert stored.details == '{"a":"\\u00fc","b":2}'
    assert (stored.hash, stored.reason, stored.outcome) == (
        event.hash,
        "needs a second approval",
        "denied",
    )


def test_returned_events_are_detached_snapshots_of_the_rows(db):
    with db.Session() as s:
        events = audit.append_many(s, [{"action": "a", "actor": "x"}, {"action": "b"}])
        s.commit()
    assert [inspect(e).detached for e in events] == [True, True]
    assert [(e.seq, e.action, e.actor) for e in events] == [(1, "a", "x"), (2, "b", None)]
    with db.Session() as s:
        s.add(events[0])  # attaches as persistent: no second INSERT
        assert inspect(events[0]).persistent
        assert s.get(AuditEvent, 1) is events[0]
        s.commit()
    assert len(db.rows()) == 2 and db.verify().ok


def test_str_enums_are_stored_by_value(db):
    import enum

    class Outcome(str, enum.Enum):  # noqa: UP042 - str() of a member is "Outcome.denied"
        denied = "denied"

    class Action(enum.StrEnum):
        start = "workspace.start"

    with db.Session() as s:
        event = audit.append(s, Action.start, actor="alice", outcome=Outcome.denied)
        s.commit()
    assert (type(event.action), event.action, event.outcome) == (str, "workspace.start", "denied")
    assert (db.rows()[0].action, db.rows()[0].outcome) == ("workspace.start", "denied")
    assert db.verify().ok


def test_naive_and_offset_times_are_stored_as_utc(db):
    with db.Session() as s:
        audit.append(s, "a", actor="x", at=datetime(2025, 1, 1, 12, 0))
        audit.append(
            s, "b", actor="x", at=datetime(2025, 1, 1, 18, 0, tzinfo=timezone(timedelta(hours=5)))
        )
        s.commit()
    rows = db.rows()
    assert rows[0].at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert rows[1].at == datetime(2025, 1, 1, 13, 0, tzinfo=UTC)
    assert db.verify().ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": ""}, "must not be empty"),
        ({"action": "a", "outcome": "maybe"}, "outcome must be one of"),
        ({"action": "a", "details": {"x": float("nan")}}, "not canonical JSON"),
        ({"action": "a", "details": {"x": object()}}, "not JSON serialisable"),
        ({"action": "a", "actor": 5}, "actor must be a string"),
        ({"action": "a" * 256}, "longer than 255"),
        ({"action": "a", "at": "yesterday"}, "must be a datetime"),
        ({"action": "a", "reason": "nul\x00"}, "must not contain NUL"),
        ({"action": "a", "reason": 3}, "reason must be a string"),
    ],
)
def test_append_rejects_bad_input_and_writes_nothing(db, kwargs, message):
    kwargs = dict(kwargs)
    action = kwargs.pop("action")
    kwargs.setdefault("actor", "alice")
    with db.Session() as s:
        with pytest.raises(audit.AuditError, match=message):
            audit.append(s, action, **kwargs)
        s.commit()
    with db.Session() as s, pytest.raises(audit.AuditError, match="unknown audit event field"):
        audit.append_many(s, [{"action": "a", "actr": "typo"}])
    assert db.rows() == []


# --- transactions --------------------------------------------------------------------------


def test_rolled_back_append_leaves_no_row_and_no_gap(db):
    fill(db, 4)
    with db.Session() as s:
        audit.append(s, "will.vanish", actor="alice")
        audit.append_many(s, [{"action": "will.vanish.too", "actor": "bob"}])
        s.rollback()
        event = audit.append(s, "kept", actor="alice")
        s.commit()
    assert event.seq == 5
    rows = db.rows()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert "will.vanish" not in {r.action for r in rows}
    assert db.verify().ok


def test_audit_row_commits_and_rolls_back_with_the_registry_change(db):
    from sde_spawner.registry.models import Person

    with db.Session() as s:
        s.add(Person(username="alice"))
        audit.append(s, "person.create", actor="admin", details={"username": "alice"})
        s.commit()
    with db.Session() as s:
        s.add(Person(username="alice"))  # duplicate: the change fails (autoflush or commit)
        with pytest.raises(IntegrityError):
            audit.append(s, "person.create", actor="admin", details={"username": "alice"})
            s.commit()
        s.rollback()
    with db.Session() as s:
        s.add(Person(username="bob"))
        audit.append(s, "person.create", actor="admin", details={"username": "bob"})
        s.rollback()  # the caller abandons the change: both go
    assert [r.action for r in db.rows()] == ["person.create"]
    with db.Session() as s:
        assert s.scalars(select(Person.username)).all() == ["alice"]
        assert audit.append(s, "next", actor="admin").seq == 2
        s.commit()
    assert db.verify().ok


def test_reader_session_then_append_sees_other_commits(db):
    """A session that read earlier must still chain onto rows committed since."""
    fill(db, 2)
    with db.Session() as a:
        assert len(audit.query(a)) == 2
        with db.Session() as b:
            audit.append(b, "from.b", actor="bob")
            b.commit()
        assert audit.append(a, "from.a", actor="alice").seq == 4
        a.commit()
    assert db.verify().ok


def test_concurrent_threads_do_not_fork_the_chain(db):
    threads, per_thread = 4, 60
    errors: list[BaseException] = []

    def work(tag: str) -> None:
        try:
            for i in range(per_thread):
                with db.Session() as s:
                    if i % 10 == 0:
                        audit.append_many(
                            s, [{"action": "t.batch", "actor": tag} for _ in range(3)]
                        )
                    else:
                        audit.append(s, "t.single", actor=tag, details={"i": i})
                    s.commit()
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(f"user{n}",)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    expected = threads * (per_thread + per_thread // 10 * 2)
    rows = db.rows()
    assert [r.seq for r in rows] == list(range(1, expected + 1))
    result = db.verify()
    assert result.ok and result.checked == expected


_WORKER = """
import sys
from sde_spawner import audit
from sde_spawner.db import make_engine, make_sessionmaker
url, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = make_engine(url)
Session = make_sessionmaker(engine)
for i in range(n):
    with Session() as s:
        audit.append(s, "proc.append", actor=tag, details={"i": i})
        s.commit()
engine.dispose()
"""


def test_concurrent_processes_do_not_fork_the_chain(db):
    procs, per_proc = 3, 80
    env = dict(os.environ, PYTHONPATH=str(REPO))
    running = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, db.url, f"proc{n}", str(per_proc)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(procs)
    ]
    for p in running:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    rows = db.rows()
    assert [r.seq for r in rows] == list(range(1, procs * per_proc + 1))
    assert {r.actor for r in rows} == {f"proc{n}" for n in range(procs)}
    assert db.verify().ok


# --- append-only in the database -------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        update(EVENTS).where(EVENTS.c.seq == 2).values(actor="mallory"),
        delete(EVENTS).where(EVENTS.c.seq == 2),
        update(CHECKPOINTS).values(seq=99),
        delete(CHECKPOINTS),
    ],
    ids=["update-event", "delete-event", "update-checkpoint", "delete-checkpoint"],
)
def test_triggers_reject_update_and_delete(db, statement):
    fill(db, 3)
    take_checkpoint(db)
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as c:
        c.execute(statement)
    assert len(db.rows()) == 3
    assert db.verify(checkpoint_key=KEY).ok


def test_postgres_rejects_truncate(db):
    if db.dialect != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL-only")
    fill(db, 3)
    for table in ("audit_event", "audit_checkpoint"):
        with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as c:
            c.exec_driver_sql(f"TRUNCATE {table}")
    assert len(db.rows()) == 3


# --- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("at", datetime(2030, 1, 1, tzinfo=UTC)),
        ("actor", "mallory"),
        ("actor", None),
        ("action", "nothing.to.see"),
        ("project", "other"),
        ("outcome", "allowed"),
        ("reason", "edited"),
        ("details", '{"i":999}'),
        ("details", '{"i": 7, "nested": {"z": [1, 2.5, null]}}'),  # same JSON, other bytes
        ("prev_hash", "f" * 64),
        ("hash", "e" * 64),
    ],
)
def test_update_of_any_field_is_caught(db, field, value):
    fill(db, 20)
    target = 8
    before = next(r for r in db.rows() if r.seq == target)
    assert getattr(before, field) != value
    db.attack(update(EVENTS).where(EVENTS.c.seq == target).values({field: value}))
    result = db.verify()
    assert not result.ok
    assert result.first_bad_seq == target, result
    assert result.checked == target - 1


def test_update_of_seq_is_caught(db):
    fill(db, 10)
    db.attack(update(EVENTS).where(EVENTS.c.seq == 4).values(seq=1000))
    result = db.verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "missing" in result.reason


def test_edited_row_with_recomputed_hash_breaks_the_next_link(db):
    fill(db, 20)
    row = db.rows()[6]
    forged = rehash(row, actor="mallory")
    db.attack(update(EVENTS).where(EVENTS.c.seq == 7).values(**forged))
    result = db.verify()
    assert (result.ok, result.first_bad_seq) == (False, 8)
    assert "prev_hash" in result.reason


def test_rewritten_tail_is_caught_by_a_checkpoint(db):
    fill(db, 20)
    take_checkpoint(db)  # at seq 20
    fill(db, 4, start=T0 + timedelta(days=1))
    db.attack(*rewrite_from(db, 12, actor="mallory"))
    assert db.verify(checkpoints=False).ok  # a consistent rewrite fools the bare chain ...
    result = db.verify(checkpoint_key=KEY)
    assert (result.ok, result.first_bad_seq) == (False, 20)  # ... not the signed head
    assert "chain rewritten" in result.reason


def test_deleted_middle_row_is_caught(db):
    fill(db, 20)
    db.attack(delete(EVENTS).where(EVENTS.c.seq == 9))
    result = db.verify()
    assert (result.ok, result.first_bad_seq) == (False, 9)
    assert "seq 9 is missing" in result.reason


def test_deleted_first_row_is_caught(db):
    fill(db, 5)
    db.attack(delete(EVENTS).where(EVENTS.c.seq == 1))
    assert db.verify().first_bad_seq == 1


def test_inserted_row_in_the_middle_is_caught(db):
    fill(db, 20)
    rows = db.rows()
    k = 10
    shift = [
        update(EVENTS).where(EVENTS.c.seq == seq).values(seq=seq + 1)
        for seq in range(rows[-1].seq, k - 1, -1)
    ]
    fake = rehash(
        rows[k - 1], seq=k, actor="mallory", action="fake.event", prev_hash=rows[k - 2].hash
    )
    db.attack(*shift, insert(EVENTS).values(**fake), update(HEAD).values(seq=21))
    result = db.verify()
    assert (result.ok, result.first_bad_seq) == (False, k + 1)


def test_inserted_row_at_the_end_with_a_bad_hash_is_caught(db):
    fill(db, 5)
    last = db.rows()[-1]
    fake = rehash(last, seq=6, prev_hash=last.hash)
    fake["hash"] = "0" * 63 + "1"
    with db.engine.begin() as c:  # INSERT is allowed: the chain, not a trigger, catches it
        c.execute(insert(EVENTS).values(**fake))
    result = db.verify()
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_inserted_row_after_a_gap_is_caught(db):
    fill(db, 5)
    last = db.rows()[-1]
    with db.engine.begin() as c:
        c.execute(insert(EVENTS).values(**rehash(last, seq=9, prev_hash=last.hash)))
    result = db.verify()
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_reordered_rows_are_caught(db):
    fill(db, 20)
    rows = db.rows()
    i, j = 5, 14
    content = [c.name for c in EVENTS.columns if c.name != "seq"]
    values_i = {name: getattr(rows[i - 1], name) for name in content}
    values_j = {name: getattr(rows[j - 1], name) for name in content}
    db.attack(
        update(EVENTS).where(EVENTS.c.seq == i).values(**values_j),
        update(EVENTS).where(EVENTS.c.seq == j).values(**values_i),
    )
    result = db.verify()
    assert (result.ok, result.first_bad_seq) == (False, i)


def _truncate(db: Db, keep: int, *, fix_head: bool = True) -> list:
    rows = db.rows()
    statements = [delete(EVENTS).where(EVENTS.c.seq > keep)]
    if fix_head:
        statements.append(update(HEAD).values(seq=keep, hash=rows[keep - 1].hash))
    return statements


def test_truncated_tail_is_caught_by_the_head_pointer(db):
    fill(db, 20)
    db.attack(*_truncate(db, 15, fix_head=False))
    result = db.verify(checkpoints=False)
    assert (result.ok, result.first_bad_seq) == (False, 16)
    assert "head pointer" in result.reason


def test_truncated_tail_is_caught_by_a_checkpoint(db):
    fill(db, 20)
    take_checkpoint(db)
    db.attack(*_truncate(db, 15))
    assert db.verify(checkpoints=False).ok  # chain and head alone cannot tell
    result = db.verify(checkpoint_key=KEY)
    assert (result.ok, result.first_bad_seq) == (False, 16)
    assert "tail truncated" in result.reason


def test_truncated_tail_and_deleted_db_checkpoints_are_caught_by_the_file(db, tmp_path):
    cp_file = tmp_path / "checkpoints.jsonl"
    fill(db, 10)
    take_checkpoint(db, cp_file)
    fill(db, 10)
    take_checkpoint(db, cp_file)
    db.attack(*_truncate(db, 12), delete(CHECKPOINTS).where(CHECKPOINTS.c.seq > 12))
    assert db.verify(checkpoint_key=KEY).ok  # everything left in the database is consistent
    result = db.verify(checkpoint_key=KEY, checkpoint_file=cp_file)
    assert (result.ok, result.first_bad_seq) == (False, 13)
    assert "checkpoints.jsonl:2" in result.reason


def test_forged_checkpoint_is_caught(db):
    fill(db, 20)
    take_checkpoint(db)
    # attacker truncates, then "re-signs" the shorter head with a key they made up
    rows = db.rows()
    at = format_timestamp(datetime.now(UTC))
    forged_sig = sign_checkpoint(b"attacker-guessed-key-000000", 15, rows[14].hash, at)
    db.attack(
        *_truncate(db, 15),
        delete(CHECKPOINTS),
        insert(CHECKPOINTS).values(
            seq=15, hash=rows[14].hash, at=datetime.fromisoformat(at), signature=forged_sig
        ),
    )
    assert db.verify().ok  # without the key a forged checkpoint looks fine ...
    result = db.verify(checkpoint_key=KEY)
    assert (result.ok, result.first_bad_seq) == (False, 15)  # ... with it, it does not
    assert "invalid signature" in result.reason


def test_forged_line_in_the_checkpoint_file_is_caught(db, tmp_path):
    cp_file = tmp_path / "cp.jsonl"
    fill(db, 10)
    take_checkpoint(db, cp_file)
    line = json.loads(cp_file.read_text())
    line["hash"] = db.rows()[4].hash
    line["seq"] = 5
    with cp_file.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    result = db.verify(checkpoint_key=KEY, checkpoint_file=cp_file)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "cp.jsonl:2" in result.reason


def test_unreadable_checkpoint_file_line_fails_verification(db, tmp_path):
    cp_file = tmp_path / "cp.jsonl"
    fill(db, 3)
    take_checkpoint(db, cp_file)
    with cp_file.open("a") as fh:
        fh.write("not json\n")
    result = db.verify(checkpoint_key=KEY, checkpoint_file=cp_file)
    assert not result.ok and "line 2" in result.reason


def test_first_broken_seq_is_reported_when_several_things_are_wrong(db):
    fill(db, 20)
    db.attack(
        update(EVENTS).where(EVENTS.c.seq == 17).values(actor="x"),
        delete(EVENTS).where(EVENTS.c.seq == 6),
    )
    assert db.verify().first_bad_seq == 6


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_records_head_in_db_and_file(db, tmp_path):
    cp_file = tmp_path / "cp.jsonl"
    fill(db, 7)
    record = take_checkpoint(db, cp_file)
    head = db.rows()[-1]
    assert (record.seq, record.hash) == (7, head.hash)
    line = json.loads(cp_file.read_text())
    assert line == record.to_dict()
    assert line["signature"] == sign_checkpoint(KEY, 7, head.hash, line["at"])
    result = db.verify(checkpoint_key=KEY, checkpoint_file=cp_file)
    assert result.ok and result.checkpoints_checked == 2


def test_checkpoint_time_is_utc_whatever_the_local_zone(db, monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        fill(db, 2)
        with db.Session() as s:
            record = audit.checkpoint(s, KEY, at=datetime(2025, 6, 1, 12, 0))  # naive = UTC
            s.commit()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert record.at == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    with db.Session() as s:
        assert s.get(AuditCheckpoint, record.id).at == record.at
    assert db.verify(checkpoint_key=KEY).ok


def test_checkpoint_refuses_uncommitted_events_and_weak_keys(db):
    with db.Session() as s:
        audit.append(s, "a", actor="x")
        with pytest.raises(audit.AuditError, match="commit first"):
            audit.checkpoint(s, KEY)
        s.commit()
        assert audit.checkpoint(s, KEY).seq == 1  # fine in the next transaction
        s.commit()
    with db.Session() as s, pytest.raises(audit.AuditError, match="at least 16 bytes"):
        audit.checkpoint(s, b"short")


def test_checkpoint_refuses_to_sign_a_head_that_does_not_match_the_chain(db):
    fill(db, 5)
    db.attack(*_truncate(db, 3, fix_head=False))
    with db.Session() as s, pytest.raises(audit.AuditError, match="does not match"):
        audit.checkpoint(s, KEY)


def test_wrong_key_reports_every_checkpoint_invalid(db):
    fill(db, 5)
    take_checkpoint(db)
    result = db.verify(checkpoint_key=b"another-key-of-enough-length")
    assert not result.ok and "invalid signature" in result.reason


# --- reading -------------------------------------------------------------------------------


def _seed_for_queries(db: Db) -> None:
    with db.Session() as s:
        audit.append_many(
            s,
            [
                {"action": "workspace.start", "actor": "alice", "project": "p1", "at": T0},
                {
                    "action": "workspace.stop",
                    "actor": "alice",
                    "project": "p1",
                    "at": T0 + timedelta(hours=1),
                },
                {
                    "action": "export.request",
                    "actor": "bob",
                    "project": "p2",
                    "at": T0 + timedelta(hours=2),
                    "outcome": "denied",
                    "reason": "suspended",
                },
                {
                    "action": "workspace.start",
                    "actor": "bob",
                    "project": "p2",
                    "at": T0 + timedelta(days=1),
                },
            ],
        )
        s.commit()


def test_query_filters(db):
    _seed_for_queries(db)
    with db.Session() as s:

        def seqs(**kw):
            return [e.seq for e in audit.query(s, **kw)]

        assert seqs() == [1, 2, 3, 4]
        assert seqs(actor="alice") == [1, 2]
        assert seqs(project="p2") == [3, 4]
        assert seqs(action="workspace.start") == [1, 4]
        assert seqs(action="workspace.*") == [1, 2, 4]
        assert seqs(action="workspace_*") == []  # _ is literal in a prefix
        assert seqs(since=T0 + timedelta(hours=1)) == [2, 3, 4]
        assert seqs(until=T0 + timedelta(hours=1)) == [1]
        assert seqs(since=T0, until=T0 + timedelta(hours=3), actor="bob") == [3]
        assert seqs(since=datetime(2025, 3, 1, 10, 0)) == [2, 3, 4]  # naive = UTC
        assert seqs(limit=2) == [1, 2]
        (denied,) = audit.query(s, project="p2", action="export.request")
        assert (denied.outcome, denied.reason) == ("denied", "suspended")


def test_export_jsonl_lines_can_be_reverified_by_a_siem(db, tmp_path):
    fill(db, 15)
    out = tmp_path / "audit.jsonl"
    with db.Session() as s, out.open("w") as fh:
        assert audit.export_jsonl(s, fh) == 15
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 16))
    prev = GENESIS_HASH
    for line in lines:
        content = event_content(
            line["seq"],
            line["at"],
            line["actor"],
            line["action"],
            line["project"],
            line["outcome"],
            line["reason"],
            None if line["details"] is None else canonical_json(line["details"]),
            line["prev_hash"],
        )
        assert line["prev_hash"] == prev
        assert hashlib.sha256(canonical_json(content).encode()).hexdigest() == line["hash"]
        prev = line["hash"]


def test_export_jsonl_filters_and_binary_files(db):
    _seed_for_queries(db)
    buf = io.BytesIO()
    with db.Session() as s:
        assert audit.export_jsonl(s, buf, actor="bob", since=T0 + timedelta(hours=3)) == 1
    (line,) = buf.getvalue().decode().splitlines()
    assert json.loads(line)["seq"] == 4


# --- schema ---------------------------------------------------------------------------------


def test_create_all_and_migration_build_the_same_protected_tables(tmp_path):
    """Tests that use Base.metadata.create_all get the same triggers as the migration."""
    url = f"sqlite:///{tmp_path / 'create_all.sqlite'}"
    engine = make_engine(url)
    try:
        Base.metadata.create_all(engine, tables=AUDIT_TABLES)
        db = Db(url, engine)
        fill(db, 3)
        take_checkpoint(db)
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(update(EVENTS).values(actor="x"))
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(delete(CHECKPOINTS))
        assert db.verify(checkpoint_key=KEY).ok
        with engine.connect() as c:
            triggers = c.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
            ).scalars()
            created = list(triggers)
    finally:
        engine.dispose()
    migrated_url = f"sqlite:///{tmp_path / 'migrated.sqlite'}"
    upgrade(migrated_url)
    migrated = make_engine(migrated_url)
    try:
        with migrated.connect() as c:
            expected = list(
                c.execute(
                    text("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
                ).scalars()
            )
    finally:
        migrated.dispose()
    assert (
        created
        == expected
        == [
            "audit_checkpoint_no_delete",
            "audit_checkpoint_no_update",
            "audit_event_no_delete",
            "audit_event_no_update",
        ]
    )


def test_migration_matches_the_models(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import sde_spawner.registry.models  # noqa: F401

    with db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    audit_diff = [d for d in diff if "audit" in repr(d)]
    assert audit_diff == []
