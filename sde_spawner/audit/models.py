"""Tables of the audit trail: the hash-chained events, the head pointer and signed checkpoints.

``audit_event`` and ``audit_checkpoint`` are append-only as a property of the database:
triggers reject UPDATE and DELETE (and TRUNCATE on PostgreSQL). The same trigger SQL is
created by Alembic revision ``0002`` and, for ``Base.metadata.create_all`` users (tests),
by the ``after_create`` hooks below. ``audit_head`` is the one mutable row: appenders lock
it to serialise (``UPDATE ... RETURNING`` takes SQLite's write lock and PostgreSQL's row
lock) and it records the newest ``(seq, hash)``.

Timestamps are naive UTC in the database and tz-aware UTC in Python. On SQLite they are
stored as the exact canonical text ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, so the bytes that are
hashed are the bytes that are stored and verification needs no date parsing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from sde_spawner.audit.canonical import GENESIS_HASH, format_timestamp, parse_details
from sde_spawner.db import Base

OUTCOMES = ("allowed", "denied", "error")
APPEND_ONLY_TABLES = ("audit_event", "audit_checkpoint")

SQLITE_TIMESTAMP_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02dT%(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06dZ"
)


class UTCDateTime(TypeDecorator):
    """A UTC instant: stored naive (UTC), returned tz-aware; canonical text on SQLite."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sqlite.DATETIME(storage_format=SQLITE_TIMESTAMP_FORMAT))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return to_utc_naive(value)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        return value.replace(tzinfo=UTC)


def to_utc_naive(value: datetime) -> datetime:
    """A naive UTC datetime; naive input is taken to be UTC already."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


class AuditEvent(Base):
    """One audited event; ``hash`` = SHA-256 of the canonical content incl. ``prev_hash``."""

    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    action: Mapped[str] = mapped_column(String(255))
    project: Mapped[str | None] = mapped_column(String(255), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[str | None] = mapped_column(Text, nullable=True)  # canonical JSON text
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint("outcome IN ('allowed', 'denied', 'error')", name="outcome"),
        Index("ix_audit_event_at", "at"),
        Index("ix_audit_event_actor", "actor"),
        Index("ix_audit_event_project", "project"),
        Index("ix_audit_event_action", "action"),
    )

    def to_dict(self) -> dict:
        """The event as a JSON-ready dict (``details`` parsed), e.g. for a SIEM export."""
        return {
            "seq": self.seq,
            "at": format_timestamp(self.at),
            "actor": self.actor,
            "action": self.action,
            "project": self.project,
            "outcome": self.outcome,
            "reason": self.reason,
            "details": parse_details(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def __repr__(self) -> str:
        return (
            f"AuditEvent(seq={self.seq}, action={self.action!r}, actor={self.actor!r}, "
            f"project={self.project!r}, outcome={self.outcome!r})"
        )


class AuditHead(Base):
    """Single row (id=1): the newest ``(seq, hash)``; locked by every appender."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class AuditCheckpoint(Base):
    """A signed statement "the chain had head ``(seq, hash)`` at ``at``"."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    signature: Mapped[str] = mapped_column(String(64))

    def to_dict(self) -> dict:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "at": format_timestamp(self.at),
            "signature": self.signature,
        }


# --- append-only triggers ------------------------------------------------------------------
# Keep in step with migrations/versions/0002_audit.py (which freezes a copy of this SQL).


def sqlite_trigger_sql(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
    ]


POSTGRES_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION sde_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = TG_TABLE_NAME || ' is append-only (' || TG_OP || ' rejected)',
        ERRCODE = 'insufficient_privilege';
END
$$
"""


def postgres_trigger_sql(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION sde_audit_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION sde_audit_append_only()",
    ]


def _install_triggers(table_name: str) -> None:
    table = Base.metadata.tables[table_name]
    for stmt in sqlite_trigger_sql(table_name):
        event.listen(table, "after_create", DDL(stmt).execute_if(dialect="sqlite"))
    event.listen(table, "after_create", DDL(POSTGRES_FUNCTION_SQL).execute_if(dialect="postgresql"))
    for stmt in postgres_trigger_sql(table_name):
        event.listen(table, "after_create", DDL(stmt).execute_if(dialect="postgresql"))


for _name in APPEND_ONLY_TABLES:
    _install_triggers(_name)


@event.listens_for(AuditHead.__table__, "after_create")
def _seed_head(target, connection, **_kw) -> None:
    connection.execute(
        text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis)"),
        {"genesis": GENESIS_HASH},
    )


AUDIT_TABLES = [AuditEvent.__table__, AuditHead.__table__, AuditCheckpoint.__table__]
