"""Eligibility rules, one reason at a time, and all of them together."""

from datetime import date

import pytest

from sde_spawner.policy import current_agreement, decide
from sde_spawner.registry.models import (
    Agreement,
    Grant,
    Membership,
    Person,
    PersonStatus,
    Project,
    ProjectStatus,
    Role,
)

TODAY = date(2026, 11, 23)


def facts(**over):
    person = Person(
        id=1, username="alice", status=PersonStatus.active, training_expires=date(2027, 6, 1)
    )
    project = Project(
        id=7,
        slug="diab",
        title="t",
        status=ProjectStatus.approved,
        dac_approved_on=date(2026, 1, 1),
    )
    membership = Membership(person_id=1, project_id=7, role=Role.researcher)
    agreement = Agreement(
        reference="DSA-1",
        signed_on=date(2026, 1, 2),
        starts_on=date(2026, 1, 5),
        ends_on=date(2027, 1, 5),
        data_deletion_on=date(2027, 6, 1),
    )
    grants = [Grant(membership_id=1, dataset_id=1, columns_json='["a"]')]
    f = dict(
        person=person,
        project=project,
        memberships=[membership],
        agreement=agreement,
        grants=grants,
        now=TODAY,
    )
    f.update(over)
    return f


def test_eligible():
    d = decide(**facts())
    assert d.allowed and d.reasons == () and d.reason == "eligible"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda f: setattr(f["person"], "status", PersonStatus.suspended),
            "your account is suspended",
        ),
        (
            lambda f: setattr(f["person"], "training_expires", date(2026, 11, 22)),
            "your training expired on 2026-11-22",
        ),
        (
            lambda f: setattr(f["person"], "training_expires", None),
            "no record of data protection training",
        ),
        (
            lambda f: setattr(f["project"], "status", ProjectStatus.suspended),
            "project diab is suspended",
        ),
        (lambda f: setattr(f["project"], "status", ProjectStatus.closed), "project diab is closed"),
        (
            lambda f: setattr(f["project"], "status", ProjectStatus.draft),
            "project diab is not approved by the Data Access Committee",
        ),
        (
            lambda f: setattr(f["project"], "dac_approved_on", None),
            "project diab is not approved by the Data Access Committee",
        ),
        (lambda f: f.update(memberships=[]), "you are not a member of project diab"),
        (
            lambda f: setattr(f["memberships"][0], "role", Role.output_checker),
            "your role on project diab (output_checker) does not include a workspace",
        ),
        (lambda f: f.update(agreement=None), "project diab has no data access agreement"),
        (lambda f: setattr(f["agreement"], "signed_on", None), "agreement DSA-1 is not signed"),
        (
            lambda f: setattr(f["agreement"], "ends_on", date(2026, 10, 1)),
            "agreement DSA-1 ended 2026-10-01",
        ),
        (
            lambda f: setattr(f["agreement"], "starts_on", date(2026, 12, 1)),
            "agreement DSA-1 starts on 2026-12-01",
        ),
        (lambda f: f.update(grants=[]), "no dataset has been granted to you on project diab"),
    ],
)
def test_each_refusal_reason(change, reason):
    f = facts()
    change(f)
    d = decide(**f)
    assert not d.allowed
    assert d.reasons == (reason,)


def test_last_day_of_agreement_is_still_allowed_and_day_after_is_not():
    f = facts(now=date(2027, 1, 5))
    assert decide(**f).allowed
    f = facts(now=date(2027, 1, 6))
    assert decide(**f).reasons == ("agreement DSA-1 ended 2027-01-05",)


def test_unknown_person_or_project():
    assert decide(**facts(person=None)).reasons == ("you are not registered in this environment",)
    assert decide(**facts(project=None)).reasons == ("no such project",)


def test_several_reasons_are_all_given():
    f = facts()
    f["person"].status = PersonStatus.suspended
    f["agreement"].ends_on = date(2026, 1, 6)
    d = decide(**f)
    assert d.reasons == ("your account is suspended", "agreement DSA-1 ended 2026-01-06")
    assert d.reason == "your account is suspended; agreement DSA-1 ended 2026-01-06"


def test_current_agreement_prefers_the_one_in_force():
    old = Agreement(
        reference="old",
        starts_on=date(2025, 1, 1),
        ends_on=date(2025, 12, 31),
        data_deletion_on=date(2026, 3, 1),
    )
    new = Agreement(
        reference="new",
        starts_on=date(2026, 1, 1),
        ends_on=date(2026, 12, 31),
        data_deletion_on=date(2027, 3, 1),
    )
    later = Agreement(
        reference="later",
        starts_on=date(2027, 1, 1),
        ends_on=date(2027, 12, 31),
        data_deletion_on=date(2028, 3, 1),
    )
    assert current_agreement([old, new, later], TODAY) is new
    assert current_agreement([old], TODAY) is old
    assert current_agreement([], TODAY) is None
