"""Canonical serialisation and hashing of audit events and checkpoints (pure, no I/O).

The canonical content of an event is the JSON object of every field except ``hash``::

    {"action":..,"actor":..,"at":"2025-01-31T12:00:00.000000Z","details":{..},
     "outcome":..,"prev_hash":..,"project":..,"reason":..,"seq":N}

serialised with sorted keys, no whitespace, ASCII only (``\\uXXXX`` escapes), NaN/Infinity
rejected; timestamps are ISO-8601 UTC with microseconds and a ``Z``. ``details`` is embedded
as an object (its stored text is exactly its own canonical serialisation).
``hash = sha256(canonical.encode("ascii")).hexdigest()``; the first event's ``prev_hash`` is
64 zeros.

:func:`canonical_json` is the definition; :func:`event_canonical` is the fast formatter used by
append and verify, and the unit tests hold the two to byte equality.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, date, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

GENESIS_HASH = "0" * 64


def format_timestamp(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC; a naive datetime is taken to be UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 - fixed width, fast
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"audit details: {type(value).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=True,
    allow_nan=False,
    default=_json_default,
)


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (sorted keys, compact, ASCII, no NaN)."""
    return _ENCODER.encode(value)


def canonical_details(details: dict | None) -> str | None:
    """The stored text of an event's ``details`` (``None`` stays ``None``)."""
    if details is None:
        return None
    if not isinstance(details, dict):
        raise TypeError(f"audit details must be a dict, got {type(details).__name__}")
    try:
        return canonical_json(details)
    except ValueError as exc:  # NaN / Infinity, circular reference
        raise ValueError(f"audit details are not canonical JSON: {exc}") from None


def parse_details(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def event_content(
    seq: int,
    at: str,
    actor: str | None,
    action: str,
    project: str | None,
    outcome: str,
    reason: str | None,
    details: str | None,
    prev_hash: str,
) -> dict:
    """The fields the hash covers, as a dict (``details`` parsed) for :func:`canonical_json`."""
    return {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "project": project,
        "outcome": outcome,
        "reason": reason,
        "details": parse_details(details),
        "prev_hash": prev_hash,
    }


def event_canonical(
    seq: int,
    at: str,
    actor: str | None,
    action: str,
    project: str | None,
    outcome: str,
    reason: str | None,
    details: str | None,
    prev_hash: str,
) -> str:
    """Fast path: the same bytes as ``canonical_json(event_content(...))``.

    ``at`` is the canonical timestamp text; ``details`` the stored canonical details text.
    """
    return (
        f'{{"action":{_quote(action)},'
        f'"actor":{"null" if actor is None else _quote(actor)},'
        f'"at":{_quote(at)},'
        f'"details":{"null" if details is None else details},'
        f'"outcome":{_quote(outcome)},'
        f'"prev_hash":{_quote(prev_hash)},'
        f'"project":{"null" if project is None else _quote(project)},'
        f'"reason":{"null" if reason is None else _quote(reason)},'
        f'"seq":{int(seq)}}}'
    )


def event_hash(*fields: Any) -> str:
    """SHA-256 hex of :func:`event_canonical` (same positional arguments)."""
    return hashlib.sha256(event_canonical(*fields).encode("ascii")).hexdigest()


def checkpoint_canonical(seq: int, hash_: str, at: str) -> str:
    return canonical_json({"seq": seq, "hash": hash_, "at": at})


def sign_checkpoint(key: bytes, seq: int, hash_: str, at: str) -> str:
    """HMAC-SHA256 (hex) of the checkpoint's canonical content."""
    if not isinstance(key, bytes | bytearray) or not key:
        raise ValueError("checkpoint key must be non-empty bytes")
    msg = checkpoint_canonical(seq, hash_, at).encode("ascii")
    return hmac.new(bytes(key), msg, hashlib.sha256).hexdigest()


def checkpoint_signature_ok(key: bytes, seq: int, hash_: str, at: str, signature: str) -> bool:
    return hmac.compare_digest(sign_checkpoint(key, seq, hash_, at), str(signature))
