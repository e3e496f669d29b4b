"""The import state table as data, and the one transition function that checks it and writes
its audit row in the same transaction."""

from __future__ import annotations

import pytest

from sde_spawner import audit
from sde_spawner.checking.errors import IllegalTransition, perform
from sde_spawner.checking.permissions import SYSTEM
from sde_spawner.checking.testing import PROJECT, make_db
from sde_spawner.imports import logic
from sde_spawner.imports.models import ImportRequest
from sde_spawner.imports.states import TRANSITIONS, Actor, State, outcome


def test_the_table_whole():
    assert dict(TRANSITIONS) == {
        (State.submitted, State.in_review): Actor.checker,
        (State.submitted, State.approved): Actor.system,
        (State.submitted, State.rejected): Actor.system,
        (State.in_review, State.approved): Actor.system,
        (State.in_review, State.rejected): Actor.system,
        (State.submitted, State.withdrawn): Actor.requester,
        (State.in_review, State.withdrawn): Actor.requester,
        (State.approved, State.revoked): Actor.checker,
    }


def test_outcome():
    assert outcome([], 1) is None
    assert outcome(["approve"], 1) == State.approved
    assert outcome(["approve"], 2) is None
    assert outcome(["approve", "approve"], 2) == State.approved
    assert outcome(["approve", "reject"], 1) == State.rejected


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path)


def _request(db, state=State.submitted) -> int:
    with db() as s, s.begin():
        req = ImportRequest(project_slug=PROJECT, requester="alice", state=str(state))
        s.add(req)
        s.flush()
        return req.id


def _actions(db):
    with db() as s:
        return [(e.action, e.actor, e.outcome) for e in audit.query(s)]


def test_transition_changes_state_and_audits_together(db):
    rid = _request(db)

    def move(session, to, actor):
        logic.transition(session, session.get(ImportRequest, rid), to, actor)

    perform(db, move, State.in_review, "chris")
    assert ("import.in_review", "chris", "allowed") in _actions(db)
    # the requester may not take the checker's step, a checker not the system's
    with pytest.raises(IllegalTransition, match="only the system"):
        perform(db, move, State.approved, "chris")
    with pytest.raises(IllegalTransition, match="cannot become"):
        perform(db, move, State.revoked, "chris")
    with db() as s:
        assert s.get(ImportRequest, rid).state == "in_review"  # nothing changed
    assert ("import.approved", "chris", "denied") in _actions(db)
    perform(db, move, State.approved, SYSTEM)
    with db() as s:
        req = s.get(ImportRequest, rid)
        assert req.state == "approved" and req.decided_at is not None


def test_a_refused_transition_leaves_no_allowed_row(db):
    rid = _request(db)

    def approve_then_fail(session):
        logic.transition(session, session.get(ImportRequest, rid), State.in_review, "chris")
        logic.transition(session, session.get(ImportRequest, rid), State.withdrawn, "chris")

    with pytest.raises(IllegalTransition):
        perform(db, approve_then_fail)
    assert ("import.in_review", "chris", "allowed") not in _actions(db)
    with db() as s:
        assert s.get(ImportRequest, rid).state == "submitted"
