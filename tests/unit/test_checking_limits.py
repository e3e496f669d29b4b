"""The pure flood and quota rules of :mod:`sde_spawner.checking.limits`, tested whole: token
buckets and the refusal tally under a driven clock, the caller's address behind the proxy,
bounded JSON, the quotas and the housekeeping plan."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from sde_spawner.checking.limits import (
    Admission,
    Draft,
    Limits,
    LimitSettings,
    StoredFile,
    SweepPlan,
    TokenBucket,
    Usage,
    client_address,
    parse_id,
    parse_json,
    plan_sweep,
    quota_problem,
    space_problem,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_token_bucket_grants_burst_then_rate():
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k", 0.0) == pytest.approx(0.5)  # one token comes back in 0.5 s
    assert b.take("k", 0.5) == 0.0
    assert b.take("other", 0.5) == 0.0  # keys are independent
    assert b.take("k", 100.0, cost=5) == 0.0  # a cost above the burst takes a full bucket
    assert b.take("k", 100.0) == pytest.approx(0.5)
    assert b.empty("k", 100.0) == pytest.approx(0.5)


def test_token_bucket_forgets_the_longest_idle_keys():
    b = TokenBucket(rate=0.0, burst=1, max_keys=2)
    b.take("a", 0.0)
    b.take("b", 0.0)
    b.take("c", 0.0)
    assert b.take("a", 0.0) == 0.0  # forgotten, so forgiven
    assert b.take("c", 0.0) == math.inf


def test_limits_count_refusals_beyond_the_budget_into_one_aggregate_per_window():
    clock = Clock()
    lim = Limits(LimitSettings(refusal_rate=0.0, refusal_burst=3, window_seconds=60), clock=clock)
    key = [("addr", "10.0.0.5")]
    audited = [lim.audit_refusal(key, "401 export.api") for _ in range(10)]
    assert audited == [True] * 3 + [False] * 7
    verdict = lim.admit(key)  # the budget is used up: answered 429 before any work
    assert verdict == Admission(
        False,
        429,
        "too many refused requests from addr=10.0.0.5: try again in 60 s (rate limited; the "
        "refused requests are counted in the audit log)",
        60,
    )
    assert lim.admit([("addr", "10.0.0.6")]).ok
    assert lim.closed() == []  # the window is still open
    clock.now += 60
    (agg,) = lim.closed()
    assert agg.as_details(60) == {
        "key": "addr=10.0.0.5",
        "count": 8,
        "window_seconds": 60,
        "reasons": {"401 export.api": 7, "too many refused requests (refusals)": 1},
    }
    assert lim.closed() == []  # handed out once


def test_limits_request_rate_and_event_budget():
    clock = Clock()
    lim = Limits(
        LimitSettings(request_rate=1.0, request_burst=2, event_rate=10.0, event_burst=100),
        clock=clock,
    )
    key = [("addr", "10.0.0.7")]
    assert lim.admit(key).ok and lim.admit(key).ok
    limited = lim.admit(key)
    assert (limited.ok, limited.status, limited.retry_after) == (False, 429, 1)
    assert limited.reason.startswith("too many requests from addr=10.0.0.7")
    user = [("user", "alice")]
    assert lim.admit(user, cost=100, bucket="events").ok
    over = lim.admit(user, cost=50, bucket="events")
    assert over.reason.startswith("too many audit events from user=alice: try again in 5 s")
    assert lim.closed(everything=True)[0].count == 1


def test_a_flood_spread_over_many_addresses_is_bounded_too():
    clock = Clock()
    settings = LimitSettings(
        refusal_rate=0.0, refusal_burst=2, total_refusal_rate=0.0, total_refusal_burst=5
    )
    lim = Limits(settings, clock=clock)
    audited = [lim.audit_refusal([("addr", f"10.0.{i}.1")], "401 x") for i in range(8)]
    assert audited == [True] * 5 + [False] * 3
    clock.now += 60
    assert [(a.key, a.count) for a in lim.closed()] == [(("all",), 3)]


def test_ipv6_clients_share_the_budget_of_their_64():
    clock = Clock()
    lim = Limits(LimitSettings(refusal_rate=0.0, refusal_burst=2), clock=clock)
    assert lim.audit_refusal([("addr", "2001:db8:1:2::1")], "x")
    assert lim.audit_refusal([("addr", "2001:db8:1:2::ffff")], "x")
    assert not lim.audit_refusal([("addr", "2001:db8:1:2:abcd::9")], "x")
    assert lim.audit_refusal([("addr", "2001:db8:1:3::1")], "x")  # another /64
    assert not lim.admit([("addr", "2001:db8:1:2::77")]).ok
    clock.now += 60
    assert [a.key for a in lim.closed()] == [("addr", "2001:db8:1:2::/64")]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
        # only the proxy's own (last) hop is believed; the client wrote the earlier ones
        ("127.0.0.1", "10.0.0.1, 198.51.100.7", "198.51.100.7"),
        ("127.0.0.1", "::ffff:198.51.100.8", "198.51.100.8"),
        ("127.0.0.1", "not-an-address", "127.0.0.1"),
        # a workspace (not the proxy) cannot choose its address by sending the header
        ("172.30.0.1", "127.0.0.1", "172.30.0.1"),
        ("", None, "unknown"),
    ],
)
def test_client_address(peer, xff, expected):
    assert client_address(peer, xff, ["127.0.0.0/8", "::1/128"]) == expected


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[" * 40 + b"]" * 40, "JSON nested deeper than 32 levels"),
        (b"[" * 100_000, "JSON nested deeper than 32 levels"),
        (b'{"id": 123456789012345678901234567890}', "out of range"),
        (b'{"n": NaN}', "NaN is not a JSON number"),
        (b'{"reason": "a\\u0000b"}', "a string in the body contains a NUL character"),
        (b'{"a\\u0000": 1}', "a key in the body contains a NUL character"),
        (b"\xff\xfe", "body is not UTF-8"),
        (b"{", "body is not JSON"),
    ],
)
def test_parse_json_refuses_with_a_reason(body, problem):
    with pytest.raises(ValueError, match=problem):
        parse_json(body)


def test_parse_json_accepts_ordinary_bodies_and_can_replace_nul():
    assert parse_json(b"") is None
    assert parse_json(b'{"a": [1, {"b": "x"}], "n": -9223372036854775807}') == {
        "a": [1, {"b": "x"}],
        "n": -9223372036854775807,
    }
    assert parse_json(b'{"r\\u0000": ["a\\u0000b"]}', nul="\ufffd") == {"r\ufffd": ["a\ufffdb"]}


def test_parse_id():
    assert parse_id("42") == 42
    assert parse_id("9223372036854775807") == 2**63 - 1
    assert parse_id("9223372036854775808") is None
    assert parse_id("1" * 30) is None


Q = LimitSettings(
    person_open_drafts=2,
    project_open_drafts=3,
    person_declared_bytes=100,
    project_declared_bytes=150,
    project_stored_bytes=120,
    min_free_bytes=1000,
)


@pytest.mark.parametrize(
    ("usage", "new_draft", "declared", "expected"),
    [
        (Usage(), True, 100, None),
        (Usage(person_open_drafts=1, project_open_drafts=2), True, 10, None),
        (
            Usage(person_open_drafts=2),
            True,
            1,
            (
                429,
                "you already have 2 unsubmitted export drafts (the limit is 2): submit them "
                "or let them expire",
            ),
        ),
        (Usage(person_open_drafts=2), False, 1, None),  # a new version is not a new draft
        (
            Usage(project_open_drafts=3),
            True,
            1,
            (429, "the project already has 3 unsubmitted export drafts (the limit is 3)"),
        ),
        (
            Usage(person_declared_bytes=60),
            False,
            41,
            (
                413,
                "this request declares 41 bytes; with your open requests (60 bytes) that is "
                "over your quota of 100 bytes",
            ),
        ),
        (
            Usage(project_declared_bytes=110),
            True,
            41,
            (
                413,
                "this request declares 41 bytes; with the project's open requests (110 "
                "bytes) that is over the project quota of 150 bytes",
            ),
        ),
    ],
)
def test_quota_problem(usage, new_draft, declared, expected):
    assert quota_problem(usage, Q, new_draft=new_draft, declared=declared) == expected


def test_space_problem():
    assert space_problem(Usage(project_stored_bytes=20), Q, size=100, free_bytes=2000) is None
    assert space_problem(Usage(project_stored_bytes=21), Q, size=100, free_bytes=5000) == (
        413,
        "the project already stores 21 bytes of export files; 100 more is over its quota of "
        "120 bytes",
    )
    assert space_problem(Usage(), Q, size=100, free_bytes=1099) == (
        413,
        "the service has 1099 bytes of space left; storing 100 more would leave less than the "
        "reserved 1000: ask an administrator",
    )


def test_limit_settings_from_env():
    s = LimitSettings.from_env({"SDE_LIMIT_REFUSAL_BURST": "5", "SDE_LIMIT_REQUEST_RATE": "2.5"})
    assert (s.refusal_burst, s.request_rate, s.window_seconds) == (5, 2.5, 60.0)
    with pytest.raises(ValueError, match="SDE_LIMIT_REFUSAL_BURST='x' is not a number"):
        LimitSettings.from_env({"SDE_LIMIT_REFUSAL_BURST": "x"})
    with pytest.raises(ValueError, match="must not be negative"):
        LimitSettings.from_env({"SDE_LIMIT_MIN_FREE_BYTES": "-1"})


def test_plan_sweep_whole():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    epoch = 1_000_000.0
    old, fresh = now - timedelta(days=8), now - timedelta(days=6)
    drafts = [
        Draft(3, "p1", "alice", old),
        Draft(1, "p1", "bob", old),
        Draft(2, "p1", "alice", fresh),
    ]
    a, b, c, d, e = (f"{ch}" * 64 for ch in "abcde")
    blobs = [
        StoredFile(a, epoch - 7200, 10),  # only in expiring draft 3: collected
        StoredFile(b, epoch - 7200, 20),  # in draft 3 and submitted request 9: kept
        StoredFile(c, epoch - 7200, 30),  # in nothing: collected
        StoredFile(d, epoch - 60, 40),  # in nothing but just written (an upload): kept
        StoredFile(e, epoch - 7200, 50),  # in fresh draft 2: kept
    ]
    temps = [StoredFile(".upload-x", epoch - 7200, 5), StoredFile(".upload-y", epoch - 1, 6)]
    refs = {a: {3}, b: {3, 9}, e: {2}}
    plan = plan_sweep(
        drafts,
        blobs,
        temps,
        refs,
        now=now,
        now_epoch=epoch,
        settings=LimitSettings(draft_expiry_hours=7 * 24, blob_grace_seconds=3600),
    )
    assert plan == SweepPlan(
        expire_drafts=(Draft(1, "p1", "bob", old), Draft(3, "p1", "alice", old)),
        delete_blobs=(StoredFile(a, epoch - 7200, 10), StoredFile(c, epoch - 7200, 30)),
        delete_temps=(StoredFile(".upload-x", epoch - 7200, 5),),
    )
    assert plan.summary() == {
        "expired_drafts": [1, 3],
        "deleted_blobs": 2,
        "deleted_uploads": 1,
        "freed_bytes": 45,
    }
