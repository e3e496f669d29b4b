"""The one checker guard, :func:`check_can_review`, on plain facts (person, project,
requester) as an import request will call it, and its refusals audited as denied."""

from __future__ import annotations

import pytest

from sde_spawner import audit
from sde_spawner.checking import errors
from sde_spawner.checking.permissions import check_can_review
from sde_spawner.checking.testing import OTHER_PROJECT, PROJECT, make_db


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path)


def guard(db, username, *, project=PROJECT, requester="alice"):
    return errors.perform(
        db,
        lambda s: (
            check_can_review(
                s,
                username,
                project=project,
                requester=requester,
                action="import.reviewed",
                subject="import request 3",
                details={"import": 3},
            ).username
        ),
    )


@pytest.mark.parametrize(
    ("username", "kwargs", "reason"),
    [
        ("bob", {"requester": "bob"}, "bob made import request 3; a requester can never review"),
        ("sam", {}, "sam is suspended in the registry"),
        ("nobody", {}, "nobody is unknown in the registry"),
        ("alice", {"requester": "bob"}, "alice is not an output checker on project p1"),
        ("olga", {}, "olga is not an output checker on project p1"),
    ],
)
def test_each_rule_of_the_guard_refuses_and_is_audited(db, username, kwargs, reason):
    with pytest.raises(errors.Refused, match=reason):
        guard(db, username, **kwargs)
    with db() as s:
        (row,) = [e.to_dict() for e in audit.query(s) if e.outcome == "denied"]
    assert (row["action"], row["actor"], row["project"]) == ("import.reviewed", username, PROJECT)
    assert reason in row["reason"]
    assert row["details"] == {"import": 3}


def test_a_checker_of_the_project_who_did_not_ask_may_review(db):
    assert guard(db, "chris") == "chris"
    assert guard(db, "olga", project=OTHER_PROJECT) == "olga"
    # bob is a checker of the project too: only his own requests are closed to him
    assert guard(db, "bob", requester="alice") == "bob"
