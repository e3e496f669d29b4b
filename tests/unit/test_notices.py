"""Spawn-page notices: training or an agreement ending within 30 days, read from the registry."""

from __future__ import annotations

from datetime import date

from sde_spawner.db import open_db
from sde_spawner.notices import expiry_notices, notices_for, render_notices
from sde_spawner.registry import ops

TODAY = date(2026, 12, 1)


def test_nothing_ends_soon_no_notice():
    assert expiry_notices(TODAY, date(2027, 1, 1), [("study-a", date(2027, 6, 30))]) == []
    assert expiry_notices(TODAY, None, []) == []
    # already over: the spawn form's refusal says so, not a notice
    assert expiry_notices(TODAY, date(2026, 11, 30), [("study-a", date(2026, 11, 30))]) == []


def test_training_and_agreements_within_30_days_soonest_first():
    assert expiry_notices(
        TODAY,
        date(2026, 12, 31),
        [("study-b", date(2026, 12, 2)), ("study-a", date(2026, 12, 1)), ("c", date(2027, 1, 1))],
    ) == [
        "Your data protection training expires in 30 days, on 2026-12-31. Renew it to keep "
        "access to your projects.",
        "The data access agreement of project study-a ends today (2026-12-01); after that its "
        "workspace cannot be started. Export what you need before then.",
        "The data access agreement of project study-b ends tomorrow (2026-12-02); after that "
        "its workspace cannot be started. Export what you need before then.",
    ]


def test_render_escapes_and_is_empty_without_notices():
    assert render_notices([]) == ""
    html = render_notices(["a <b> & c"])
    assert 'id="sde-notices"' in html and "a &lt;b&gt; &amp; c" in html and "<b>" not in html


def test_notices_for_reads_the_agreement_in_force_of_approved_projects(tmp_path):
    sm = open_db(f"sqlite:///{tmp_path}/r.sqlite")
    ops.perform(sm, ops.add_person, "admin", "alice", training_expires="2026-12-20")
    for slug in ("study-a", "study-b"):
        ops.perform(
            sm,
            ops.add_project,
            "admin",
            slug,
            title=slug,
            ethics_reference="REC-1",
            lay_summary="s",
            public_benefit="b",
            organisation="Org",
            organisation_kind="nhs",
        )
        ops.perform(
            sm,
            ops.add_agreement,
            "admin",
            slug,
            "DSA",
            signed="2026-01-01",
            start="2026-01-01",
            end="2026-12-15",
            delete_by="2027-01-31",
        )
        ops.perform(sm, ops.add_member, "admin", slug, "alice", "researcher")
    ops.perform(
        sm,
        ops.approve_project,
        "admin",
        "study-a",
        dac_reference="DAC-1",
        dac_date="2026-01-01",
        lay_member="L",
        lay_member_signed="2026-01-01",
        today=TODAY,
    )
    with sm() as s:
        got = notices_for(s, "alice", TODAY)
    assert [n.split(" ")[1] for n in got] == ["data", "data"]
    assert "training expires in 19 days" in got[0]
    assert "project study-a ends in 14 days, on 2026-12-15" in got[1]
    assert not any("study-b" in n for n in got)  # a draft project is not worked on
    with sm() as s:
        assert notices_for(s, "nobody", TODAY) == []
