"""Writing, checking and reading the audit trail.

* :func:`append` / :func:`append_many` add hash-chained rows inside the caller's transaction
  (no commit), so a registry change and its audit row commit or roll back together.
  Appenders serialise on the ``audit_head`` row (``UPDATE ... RETURNING``: SQLite's write lock,
  PostgreSQL's row lock), so concurrent processes cannot fork the chain and ``seq`` stays
  gapless.
* :func:`checkpoint` signs the head ``(seq, hash)`` with HMAC-SHA256 and records it in the
  append-only ``audit_checkpoint`` table and, optionally, an append-only JSON Lines file
  kept elsewhere.
* :func:`verify` streams the chain and recomputes every hash; checkpoints catch a rewritten
  or truncated tail, and their signatures catch forged checkpoints.
* :func:`query` / :func:`export_jsonl` read events by person, project, action and time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.orm.attributes import instance_state

from sde_spawner.audit.canonical import (
    GENESIS_HASH,
    canonical_details,
    canonical_json,
    checkpoint_signature_ok,
    event_canonical,
    format_timestamp,
    sign_checkpoint,
)
from sde_spawner.audit.models import OUTCOMES, AuditCheckpoint, AuditEvent, AuditHead

MIN_KEY_BYTES = 16
_EVENT_KEYS = frozenset({"action", "actor", "project", "outcome", "reason", "details", "at"})
_MAX_NAME = 255
_TXN_KEY = "sde_audit_txn"

_head = AuditHead.__table__
_events = AuditEvent.__table__
_new_event = AuditEvent._sa_class_manager.new_instance
_mapper = AuditEvent.__mapper__
_identity_key = _mapper.identity_key_from_primary_key


class AuditError(Exception):
    """The audit trail refused an operation (bad input, inconsistent head, missing key)."""


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    checkpoints_checked: int = 0
    signatures_checked: bool = False

    def __bool__(self) -> bool:
        return self.ok


# --- append --------------------------------------------------------------------------------


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise AuditError(f"audit {field} must be a string, got {type(value).__name__}")
    value = str.__str__(value)  # a plain str: str-based enums are stored by value
    if "\x00" in value:
        raise AuditError(f"audit {field} must not contain NUL characters")
    return value


def _name(value: Any, field: str, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise AuditError(f"audit {field} is required")
        return None
    value = _text(value, field)
    if required and not value:
        raise AuditError(f"audit {field} must not be empty")
    if len(value) > _MAX_NAME:
        raise AuditError(f"audit {field} is longer than {_MAX_NAME} characters")
    return value


def _prepare(event: dict, now: datetime, now_text: str) -> dict:
    if not _EVENT_KEYS.issuperset(event):
        unknown = ", ".join(sorted(set(event) - _EVENT_KEYS))
        raise AuditError(f"unknown audit event field(s): {unknown}")
    action = _name(event.get("action"), "action", required=True)
    actor = _name(event.get("actor"), "actor", required=False)
    project = _name(event.get("project"), "project", required=False)
    outcome = event.get("outcome", "allowed")
    if not isinstance(outcome, str) or outcome not in OUTCOMES:
        raise AuditError(f"audit outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    outcome = str.__str__(outcome)
    reason = event.get("reason")
    if reason is not None:
        reason = _text(reason, "reason")
    details = event.get("details")
    if details is not None:
        try:
            details = canonical_details(details)
        except (TypeError, ValueError) as exc:
            raise AuditError(str(exc)) from None
    at = event.get("at")
    if at is None:
        at, at_text = now, now_text
    else:
        if not isinstance(at, datetime):
            raise AuditError(f"audit 'at' must be a datetime, got {type(at).__name__}")
        at = at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
        if at.year < 1000:
            raise AuditError("audit 'at' is before year 1000")
        at_text = format_timestamp(at)
    # the row for INSERT; seq, prev_hash and hash are filled in under the lock
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "project": project,
        "outcome": outcome,
        "reason": reason,
        "details": details,
        "_at_text": at_text,
    }


def _lock_head(session: Session) -> tuple[int, str]:
    """Lock the head row for the rest of the transaction and return ``(seq, hash)``.

    ``UPDATE`` first, read second: on SQLite the UPDATE takes the database write lock before
    the head is read; on PostgreSQL it takes the row lock and, in READ COMMITTED, returns the
    row as committed by whoever held the lock before us.
    """
    row = session.execute(
        update(_head)
        .where(_head.c.id == 1)
        .values(seq=_head.c.seq)
        .returning(_head.c.seq, _head.c.hash)
    ).first()
    if row is None:
        raise AuditError("audit_head row is missing: is the audit schema migrated?")
    return int(row[0]), row[1]


def _mark_dirty(session: Session) -> None:
    session.info[_TXN_KEY] = weakref.ref(session.get_transaction())


def _is_dirty(session: Session) -> bool:
    ref = session.info.get(_TXN_KEY)
    txn = session.get_transaction()
    return ref is not None and txn is not None and ref() is txn and txn.is_active


def append(
    session: Session,
    action: str,
    *,
    actor: str | None,
    project: str | None = None,
    outcome: str = "allowed",
    reason: str | None = None,
    details: dict | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction (flushed, not committed)."""
    event = {
        "action": action,
        "actor": actor,
        "project": project,
        "outcome": outcome,
        "reason": reason,
        "details": details,
        "at": at,
    }
    return append_many(session, [event])[0]


def append_committed(sessionmaker, action: str, **fields) -> None:
    """Append one event in a transaction of its own and commit it (for events that stand
    alone, e.g. a refusal whose surrounding change was never made). Blocking: call it from a
    worker thread in async code."""
    with sessionmaker() as session, session.begin():
        append(session, action, **fields)


def append_many(session: Session, events: Iterable[dict]) -> list[AuditEvent]:
    """Add several events in one batch (one lock, one executemany), same chain as :func:`append`.

    Each dict takes the keyword arguments of :func:`append` (``action`` required). The rows
    are written into the caller's transaction (not committed); the returned objects are
    *detached* snapshots of them (``session.add`` would attach them without a new INSERT).
    """
    now = datetime.now(UTC)
    now_text = format_timestamp(now)
    rows = [_prepare(e, now, now_text) for e in events]  # validate all before locking
    if not rows:
        return []
    seq, prev = _lock_head(session)
    sha256 = hashlib.sha256
    for row in rows:
        seq += 1
        digest = sha256(
            event_canonical(
                seq,
                row.pop("_at_text"),
                row["actor"],
                row["action"],
                row["project"],
                row["outcome"],
                row["reason"],
                row["details"],
                prev,
            ).encode()
        ).hexdigest()
        row["seq"] = seq
        row["prev_hash"] = prev
        row["hash"] = digest
        prev = digest
    session.execute(insert(_events), rows)
    session.execute(update(_head).where(_head.c.id == 1).values(seq=seq, hash=prev))
    _mark_dirty(session)
    return [_detached_event(row) for row in rows]


def _detached_event(row: dict) -> AuditEvent:
    """An AuditEvent for a row already INSERTed: detached, every attribute loaded.

    Built the way the ORM loader builds instances (no ``__init__``, no change events, identity
    key set), which is several times cheaper than the constructor plus
    ``make_transient_to_detached`` for large batches; tests check the result behaves as a
    detached instance (``session.add`` attaches it without an INSERT).
    """
    if not _mapper.configured:  # instrumentation is complete only once mappers configure
        configure_mappers()
    obj = _new_event()
    obj.__dict__.update(row)
    instance_state(obj).key = _identity_key((row["seq"],))
    return obj


# --- checkpoints ---------------------------------------------------------------------------


def as_key(signer: bytes | bytearray | str) -> bytes:
    """Validate an HMAC key (bytes, or str taken as UTF-8)."""
    if isinstance(signer, str):
        signer = signer.encode()
    if not isinstance(signer, bytes | bytearray):
        raise AuditError(f"checkpoint key must be bytes, got {type(signer).__name__}")
    if len(signer) < MIN_KEY_BYTES:
        raise AuditError(f"checkpoint key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(signer)


def load_key_file(path: str | os.PathLike) -> bytes:
    """Read an HMAC key from a file (surrounding whitespace ignored)."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise AuditError(f"cannot read checkpoint key file {path}: {exc.strerror}") from None
    return as_key(data)


def checkpoint(
    session: Session,
    signer: bytes | bytearray | str,
    *,
    file: str | os.PathLike | None = None,
    at: datetime | None = None,
) -> AuditCheckpoint:
    """Sign the current head and record it in ``audit_checkpoint`` (and ``file`` if given).

    Call it in a transaction of its own: signing a head that includes this transaction's
    uncommitted events would leave a checkpoint for rows that a rollback removes. Refuses to
    sign a head that does not match the newest chain row.
    """
    key = as_key(signer)
    if _is_dirty(session):
        raise AuditError("checkpoint in a transaction with uncommitted audit events; commit first")
    seq, head_hash = _lock_head(session)
    tail = session.execute(
        select(_events.c.seq, _events.c.hash).order_by(_events.c.seq.desc()).limit(1)
    ).first()
    tail_seq, tail_hash = (int(tail[0]), tail[1]) if tail else (0, GENESIS_HASH)
    if (tail_seq, tail_hash) != (seq, head_hash):
        raise AuditError(
            f"audit head (seq {seq}) does not match the newest event (seq {tail_seq}); run verify"
        )
    stamp = at or datetime.now(UTC)
    stamp = stamp.astimezone(UTC) if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    at_text = format_timestamp(stamp)
    signature = sign_checkpoint(key, seq, head_hash, at_text)
    record = AuditCheckpoint(seq=seq, hash=head_hash, at=stamp, signature=signature)
    session.add(record)
    session.flush()
    if file is not None:
        line = canonical_json(
            {"seq": seq, "hash": head_hash, "at": at_text, "signature": signature}
        )
        fd = os.open(os.fspath(file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
    return record


@dataclass(frozen=True)
class _Checkpoint:
    source: str
    seq: Any
    hash: Any
    at: Any
    signature: Any


def _read_checkpoint_file(path: Path) -> tuple[list[_Checkpoint], str | None]:
    """Checkpoints from a JSON Lines file; returns (records, problem or None)."""
    records = []
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        return [], None
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"cannot read checkpoint file {path}: {exc}"
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            records.append(
                _Checkpoint(
                    f"{path.name}:{number}", obj["seq"], obj["hash"], obj["at"], obj["signature"]
                )
            )
        except (ValueError, KeyError, TypeError):
            return records, f"checkpoint file {path} line {number} is not a checkpoint record"
    return records, None


# --- verify --------------------------------------------------------------------------------

_SQLITE_CHAIN = (
    "SELECT seq, at, actor, action, project, outcome, reason, details, prev_hash, hash "
    "FROM audit_event ORDER BY seq"
)
_POSTGRES_CHAIN = (
    'SELECT seq, to_char(at, \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\'), actor, action, project, '
    "outcome, reason, details, prev_hash, hash FROM audit_event ORDER BY seq"
)


@contextmanager
def _chain_cursor(conn: Connection) -> Iterator[Any]:
    """A DBAPI cursor over the chain in seq order (server-side on PostgreSQL).

    Iterating the raw cursor avoids SQLAlchemy's per-row Result machinery, which would cost
    more than the hashing itself at a million rows.
    """
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cur = dbapi.cursor(name=f"sde_audit_verify_{os.getpid()}_{id(conn)}")
        cur.itersize = 20_000
        cur.execute(_POSTGRES_CHAIN)
    else:  # SQLite stores the canonical timestamp text itself
        cur = dbapi.cursor()
        cur.execute(_SQLITE_CHAIN)
    try:
        yield cur
    finally:
        cur.close()


def _walk_chain(
    rows: Iterable[tuple], targets: dict[int, list[tuple[str, str]]]
) -> tuple[int, str, int | None, str]:
    """Check seq, links and hashes; returns (last_seq, last_hash, bad_seq, reason)."""
    sha256 = hashlib.sha256
    quote = json.encoder.encode_basestring_ascii
    prev = GENESIS_HASH
    expected = 1
    stops = sorted(targets)
    stops.append(-1)
    stop_index = 0
    next_stop = stops[0]
    while next_stop == 0:  # checkpoints of the empty chain
        for label, want in targets[0]:
            if want != GENESIS_HASH:
                return 0, prev, 0, f"{label} records seq 0 with a non-genesis hash"
        stop_index += 1
        next_stop = stops[stop_index]
    row = None
    try:
        for row in rows:
            seq, at, actor, action, project, outcome, reason, details, prev_hash, digest = row
            if seq != expected:
                if isinstance(seq, int) and seq > expected:
                    return (
                        expected - 1,
                        prev,
                        expected,
                        f"seq {expected} is missing (next is {seq})",
                    )
                return expected - 1, prev, expected, f"seq {expected} expected, found {seq!r}"
            if prev_hash != prev:
                return (
                    expected - 1,
                    prev,
                    seq,
                    f"prev_hash does not match the hash of seq {seq - 1} "
                    "(row inserted, deleted or rewritten)",
                )
            canonical = (
                f'{{"action":{quote(action)},'
                f'"actor":{"null" if actor is None else quote(actor)},'
                f'"at":{quote(at)},'
                f'"details":{"null" if details is None else details},'
                f'"outcome":{quote(outcome)},'
                f'"prev_hash":{quote(prev_hash)},'
                f'"project":{"null" if project is None else quote(project)},'
                f'"reason":{"null" if reason is None else quote(reason)},'
                f'"seq":{seq}}}'
            )
            if sha256(canonical.encode()).hexdigest() != digest:
                return expected - 1, prev, seq, "hash does not match the row's content (row edited)"
            if seq == next_stop:
                for label, want in targets[seq]:
                    if want != digest:
                        return (
                            expected - 1,
                            prev,
                            seq,
                            f"{label} records a different hash for seq {seq} (chain rewritten)",
                        )
                stop_index += 1
                next_stop = stops[stop_index]
            prev = digest
            expected += 1
    except (TypeError, ValueError, AttributeError, UnicodeError) as exc:
        return expected - 1, prev, expected, f"row is malformed ({exc})"
    return expected - 1, prev, None, ""


def verify(
    target: Session | Engine | Connection,
    *,
    checkpoints: bool = True,
    checkpoint_key: bytes | bytearray | str | None = None,
    checkpoint_file: str | os.PathLike | None = None,
) -> VerifyResult:
    """Recompute the chain and compare it with the head pointer and the checkpoints.

    ``checkpoints=False`` checks the chain alone. With ``checkpoint_key`` every checkpoint's
    HMAC is checked too (a forged one is reported); checkpoints come from the
    ``audit_checkpoint`` table and, if given, ``checkpoint_file`` (JSON Lines). Reports the
    first (lowest) broken sequence number.
    """
    if isinstance(target, Engine):
        with target.connect() as conn:
            try:
                return _verify(conn, checkpoints, checkpoint_key, checkpoint_file)
            finally:
                conn.rollback()
    if isinstance(target, Session):
        return _verify(target.connection(), checkpoints, checkpoint_key, checkpoint_file)
    return _verify(target, checkpoints, checkpoint_key, checkpoint_file)


def _verify(conn, use_checkpoints, key, checkpoint_file) -> VerifyResult:
    key = as_key(key) if key is not None else None
    problems: list[tuple[int | None, str]] = []
    targets: dict[int, list[tuple[str, str]]] = {}

    head = conn.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).first()
    if head is None:
        problems.append((None, "audit_head row is missing"))
    else:
        targets.setdefault(int(head[0]), []).append(("the head pointer", head[1]))

    records: list[_Checkpoint] = []
    notes = []
    if use_checkpoints:
        for cp_id, seq, digest, at, signature in conn.execute(
            select(
                AuditCheckpoint.id,
                AuditCheckpoint.seq,
                AuditCheckpoint.hash,
                AuditCheckpoint.at,
                AuditCheckpoint.signature,
            ).order_by(AuditCheckpoint.id)
        ):
            records.append(
                _Checkpoint(f"checkpoint #{cp_id}", seq, digest, format_timestamp(at), signature)
            )
        if checkpoint_file is not None:
            path = Path(checkpoint_file)
            file_records, problem = _read_checkpoint_file(path)
            records.extend(file_records)
            if problem:
                problems.append((None, problem))
            if not path.exists():
                notes.append(f"checkpoint file {path} does not exist yet")
    newest: _Checkpoint | None = None
    for cp in records:
        if not isinstance(cp.seq, int) or not isinstance(cp.hash, str):
            problems.append((None, f"{cp.source} is malformed"))
            continue
        if key is not None and not checkpoint_signature_ok(
            key, cp.seq, cp.hash, str(cp.at), str(cp.signature)
        ):
            problems.append(
                (cp.seq, f"{cp.source} for seq {cp.seq} has an invalid signature (forged)")
            )
            continue
        targets.setdefault(cp.seq, []).append((cp.source, cp.hash))
        if newest is None or cp.seq > newest.seq:
            newest = cp

    with _chain_cursor(conn) as rows:
        last_seq, _last_hash, bad_seq, reason = _walk_chain(rows, targets)
    if bad_seq is not None:
        problems.append((bad_seq, reason))
    else:
        if newest is not None and newest.seq > last_seq:
            problems.append(
                (
                    last_seq + 1,
                    f"chain ends at seq {last_seq} but {newest.source} records seq "
                    f"{newest.seq} (tail truncated)",
                )
            )
        if head is not None and int(head[0]) > last_seq:
            problems.append(
                (
                    last_seq + 1,
                    f"chain ends at seq {last_seq} but the head pointer records seq "
                    f"{int(head[0])} (tail truncated)",
                )
            )

    if problems:
        problems.sort(key=lambda p: (p[0] is None, p[0] if p[0] is not None else 0))
        first_seq, first_reason = problems[0]
        checked = last_seq if bad_seq is None else bad_seq - 1
        return VerifyResult(
            False, max(checked, 0), first_seq, first_reason, len(records), key is not None
        )
    parts = [f"{last_seq} events chained"]
    if records:
        signed = "signatures checked" if key is not None else "signatures NOT checked (no key)"
        parts.append(f"{len(records)} checkpoints match, {signed}")
    else:
        parts.append("no checkpoints")
    parts.extend(notes)
    return VerifyResult(True, last_seq, None, "; ".join(parts), len(records), key is not None)


# --- read ----------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _filtered(stmt, actor, project, action, since, until):
    if actor is not None:
        stmt = stmt.where(AuditEvent.actor == actor)
    if project is not None:
        stmt = stmt.where(AuditEvent.project == project)
    if action is not None:
        if action.endswith("*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(AuditEvent.action.like(prefix + "%", escape="\\"))
        else:
            stmt = stmt.where(AuditEvent.action == action)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= _utc(since))
    if until is not None:
        stmt = stmt.where(AuditEvent.at < _utc(until))
    return stmt


def query(
    session: Session,
    *,
    actor: str | None = None,
    project: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    """Events in seq order; ``since`` inclusive, ``until`` exclusive; ``action`` may end in
    ``*`` for a prefix match (``"export.*"``)."""
    stmt = _filtered(select(AuditEvent), actor, project, action, since, until)
    stmt = stmt.order_by(AuditEvent.seq)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def export_jsonl(
    session: Session,
    fileobj: IO,
    *,
    actor: str | None = None,
    project: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Write matching events as JSON Lines (one canonical JSON object per line) for a SIEM.

    Each line has seq, at, actor, action, project, outcome, reason, details (an object),
    prev_hash and hash, so the receiver can re-verify the chain. Returns the rows written.
    """
    binary = isinstance(fileobj, io.RawIOBase | io.BufferedIOBase) or "b" in str(
        getattr(fileobj, "mode", "")
    )
    cols = _events.c
    stmt = _filtered(
        select(
            cols.seq,
            cols.at,
            cols.actor,
            cols.action,
            cols.project,
            cols.outcome,
            cols.reason,
            cols.details,
            cols.prev_hash,
            cols.hash,
        ),
        actor,
        project,
        action,
        since,
        until,
    ).order_by(cols.seq)
    if limit is not None:
        stmt = stmt.limit(limit)
    written = 0
    result = session.execute(stmt.execution_options(yield_per=5000))
    for seq, at, act, action_, proj, outcome, reason, details, prev_hash, digest in result:
        line = (
            canonical_json(
                {
                    "seq": seq,
                    "at": format_timestamp(at),
                    "actor": act,
                    "action": action_,
                    "project": proj,
                    "outcome": outcome,
                    "reason": reason,
                    "details": None if details is None else json.loads(details),
                    "prev_hash": prev_hash,
                    "hash": digest,
                }
            )
            + "\n"
        )
        fileobj.write(line.encode("ascii") if binary else line)
        written += 1
    return written


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(_events)) or 0)
