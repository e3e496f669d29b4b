"""Pure tests of the audit trail's canonical serialisation, hashing and checkpoint signing."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from sde_spawner.audit.canonical import (
    GENESIS_HASH,
    canonical_details,
    canonical_json,
    checkpoint_canonical,
    checkpoint_signature_ok,
    event_canonical,
    event_content,
    event_hash,
    format_timestamp,
    sign_checkpoint,
)

AT = "2025-01-31T12:34:56.000789Z"


def test_canonical_json_sorts_keys_and_has_no_whitespace():
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": True}]}) == (
        '{"a":[1,{"c":true,"d":null}],"b":1}'
    )


def test_canonical_json_is_ascii_with_escapes():
    assert canonical_json({"name": 'Zoë 東京 \n"q"'}) == (
        '{"name":"Zo\\u00eb \\u6771\\u4eac \\n\\"q\\""}'
    )


def test_canonical_json_rejects_nan():
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_canonical_details_converts_dates_and_rejects_unknown_types():
    text = canonical_details(
        {"when": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), "day": date(2025, 1, 2)}
    )
    assert text == '{"day":"2025-01-02","when":"2025-01-02T03:04:05.000000Z"}'
    with pytest.raises(TypeError, match="not JSON serialisable"):
        canonical_details({"x": object()})
    with pytest.raises(TypeError, match="must be a dict"):
        canonical_details(["not", "a", "dict"])
    assert canonical_details(None) is None


def test_format_timestamp_is_utc_with_microseconds():
    assert format_timestamp(datetime(2025, 1, 31, 12, 34, 56, 789, tzinfo=UTC)) == AT
    cet = timezone(timedelta(hours=1))
    assert format_timestamp(datetime(2025, 1, 31, 13, 34, 56, 789, tzinfo=cet)) == AT
    assert format_timestamp(datetime(2025, 1, 31, 12, 34, 56, 789)) == AT  # naive = UTC
    assert format_timestamp(datetime(2025, 1, 1, tzinfo=UTC)) == "2025-01-01T00:00:00.000000Z"


def test_event_hash_known_answer():
    """Pins the canonical format: changing it silently would orphan every stored chain."""
    fields = (1, AT, "alice", "workspace.start", "proj1", "allowed", None, '{"a":1}', GENESIS_HASH)
    expected_text = (
        '{"action":"workspace.start","actor":"alice","at":"2025-01-31T12:34:56.000789Z",'
        '"details":{"a":1},"outcome":"allowed","prev_hash":"' + GENESIS_HASH + '",'
        '"project":"proj1","reason":null,"seq":1}'
    )
    assert event_canonical(*fields) == expected_text
    assert event_hash(*fields) == hashlib.sha256(expected_text.encode()).hexdigest()
    assert event_hash(*fields) == (
        "5ec057e3d4b2a8566c8431ad62f74e5b4717bff12349d4c6321737149156595b"
    )


def _random_text(rng: random.Random) -> str:
    alphabet = "abcXYZ09 _-./\\\"'\n\t\x00\x1f\x7féü東京😀\u2028"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 6 if depth < 2 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(10**20), 10**20)
    if kind == 3:
        return rng.uniform(-1e6, 1e6)
    if kind == 4:
        return _random_text(rng)
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_fast_formatter_matches_the_reference_serialisation():
    rng = random.Random(20250131)
    for seq in range(1, 2001):
        maybe = [None if rng.random() < 0.3 else _random_text(rng) for _ in range(3)]
        details = (
            None
            if rng.random() < 0.2
            else canonical_details(
                {_random_text(rng): _random_value(rng) for _ in range(rng.randint(0, 4))}
            )
        )
        fields = (
            seq,
            format_timestamp(datetime(2025, 1, 1, tzinfo=UTC) + timedelta(microseconds=seq * 7)),
            maybe[0],
            _random_text(rng) or "a",
            maybe[1],
            rng.choice(["allowed", "denied", "error"]),
            maybe[2],
            details,
            hashlib.sha256(str(seq).encode()).hexdigest(),
        )
        reference = canonical_json(event_content(*fields))
        assert event_canonical(*fields) == reference, fields
        # the canonical text is valid JSON holding exactly the fields
        assert json.loads(reference)["seq"] == seq


def test_every_field_changes_the_hash():
    base = [7, AT, "alice", "act", "proj", "allowed", "why", '{"k":1}', GENESIS_HASH]
    changed = [
        8,
        "2025-01-31T12:34:56.000790Z",
        "bob",
        "act2",
        "proj2",
        "denied",
        "why2",
        '{"k":2}',
        "1" * 64,
    ]
    seen = {event_hash(*base)}
    for index, value in enumerate(changed):
        fields = list(base)
        fields[index] = value
        seen.add(event_hash(*fields))
    assert len(seen) == len(base) + 1
    # None is distinct from the string "null"
    assert event_hash(*base[:2], None, *base[3:]) != event_hash(*base[:2], "null", *base[3:])


def test_checkpoint_signature_round_trip_and_rejects_changes():
    key = b"k" * 32
    sig = sign_checkpoint(key, 10, "a" * 64, AT)
    assert sig == "7587059dc3acc5aceb9d1e08bbfb480a4637b25404a8b25f90282b7ba43983d2"
    assert checkpoint_canonical(10, "a" * 64, AT) == (
        '{"at":"' + AT + '","hash":"' + "a" * 64 + '","seq":10}'
    )
    assert checkpoint_signature_ok(key, 10, "a" * 64, AT, sig)
    assert not checkpoint_signature_ok(b"x" * 32, 10, "a" * 64, AT, sig)
    assert not checkpoint_signature_ok(key, 11, "a" * 64, AT, sig)
    assert not checkpoint_signature_ok(key, 10, "b" * 64, AT, sig)
    assert not checkpoint_signature_ok(key, 10, "a" * 64, "2025-01-31T12:34:56.000790Z", sig)
    with pytest.raises(ValueError):
        sign_checkpoint(b"", 1, "a" * 64, AT)
