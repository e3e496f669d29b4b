"""The tamper-evident audit trail every part of the TRE writes to.

One append-only, hash-chained table (``audit_event``) with gapless sequence numbers, signed
checkpoints of its head in a separate append-only location, and a verifier that reports the
first broken sequence number. Public API::

    from sde_spawner import audit
    audit.append(session, "project.approve", actor="admin", project="p1")   # caller commits
    audit.verify(engine, checkpoint_key=key) -> VerifyResult
"""

from sde_spawner.audit.canonical import GENESIS_HASH, canonical_json, format_timestamp
from sde_spawner.audit.models import AuditCheckpoint, AuditEvent, AuditHead
from sde_spawner.audit.store import (
    AuditError,
    VerifyResult,
    append,
    append_committed,
    append_many,
    as_key,
    checkpoint,
    export_jsonl,
    load_key_file,
    query,
    verify,
)

__all__ = [
    "GENESIS_HASH",
    "AuditCheckpoint",
    "AuditError",
    "AuditEvent",
    "AuditHead",
    "VerifyResult",
    "append",
    "append_committed",
    "append_many",
    "as_key",
    "canonical_json",
    "checkpoint",
    "export_jsonl",
    "format_timestamp",
    "load_key_file",
    "query",
    "verify",
]
