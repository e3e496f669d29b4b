"""The export state machine: the table itself, and ``transition`` holding every (from, to)
pair and every kind of actor to it, with the audit row written or the denial recorded."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from sde_spawner import audit
from sde_spawner.checking import errors, permissions, transitions
from sde_spawner.checking.models import ExportRequest, ExportVersion
from sde_spawner.checking.states import (
    DECIDED,
    EDITABLE,
    RELEASABLE,
    REVIEWABLE,
    TERMINAL,
    TRANSITIONS,
    Actor,
    State,
    allowed_actor,
    targets,
)
from sde_spawner.checking.testing import PROJECT, make_db

EXPECTED = {
    ("draft", "submitted"): "requester",
    ("submitted", "in_review"): "checker",
    ("in_review", "approved"): "system",
    ("in_review", "rejected"): "system",
    ("in_review", "returned"): "system",
    ("returned", "submitted"): "requester",
    ("approved", "released"): "requester",
    ("submitted", "withdrawn"): "requester",
    ("in_review", "withdrawn"): "requester",
}

#: One principal per kind of actor on a request made by alice on PROJECT.
ACTORS = {
    Actor.requester: "alice",
    Actor.checker: "chris",
    Actor.system: permissions.SYSTEM,
}
OUTSIDER = "olga"  # a checker, but of another project

PAIRS = list(itertools.product(State, State))


def test_the_table_is_exactly_the_designed_one():
    assert {(str(a), str(b)): str(r) for (a, b), r in TRANSITIONS.items()} == EXPECTED


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_allowed_actor_for_every_pair(source, target):
    expected = EXPECTED.get((str(source), str(target)))
    assert allowed_actor(source, target) == (Actor(expected) if expected else None)


def test_derived_sets():
    assert {State.rejected, State.released, State.withdrawn} == TERMINAL
    assert targets(State.in_review) == {
        State.approved: Actor.system,
        State.rejected: Actor.system,
        State.returned: Actor.system,
        State.withdrawn: Actor.requester,
    }
    assert targets(State.released) == {}
    assert allowed_actor("nonsense", "draft") is None
    assert {State.submitted, State.in_review} == REVIEWABLE
    assert {State.draft, State.returned} == EDITABLE
    assert {State.approved, State.released} == RELEASABLE
    assert {State.approved, State.rejected, State.returned, State.released} == DECIDED


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("states"))


def _request_in(Session, state: State) -> int:
    with Session() as s, s.begin():
        req = ExportRequest(
            project_slug=PROJECT, requester="alice", state=str(state), justification="j"
        )
        s.add(req)
        s.add(ExportVersion(request=req, number=1, justification="j"))
        s.flush()
        return req.id


def _move(Session, rid: int, target, actor):
    def op(session):
        req = session.get(ExportRequest, rid)
        transitions.transition(session, req, target, actor, details={"test": True})
        return req.state

    return errors.perform(Session, op)


def _state(Session, rid: int) -> str:
    with Session() as s:
        return s.get(ExportRequest, rid).state


def _last_event(Session):
    with Session() as s:
        return audit.query(s)[-1]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition_checks_table_and_role_and_audits(db, source, target):
    expected = EXPECTED.get((str(source), str(target)))
    for kind, actor in [*ACTORS.items(), (None, OUTSIDER)]:
        rid = _request_in(db, source)
        allowed = expected is not None and kind is not None and expected == str(kind)
        name = actor.name if isinstance(actor, permissions.Principal) else actor
        if allowed:
            assert _move(db, rid, target, actor) == str(target)
            ev = _last_event(db)
            assert (ev.action, ev.actor, ev.project, ev.outcome) == (
                f"export.{target}",
                name,
                PROJECT,
                "allowed",
            )
            details = ev.to_dict()["details"]
            assert details["from"] == str(source) and details["to"] == str(target)
            assert details["request"] == rid and details["test"] is True
        else:
            with pytest.raises(errors.IllegalTransition) as err:
                _move(db, rid, target, actor)
            assert _state(db, rid) == str(source), "a refused transition changes nothing"
            ev = _last_event(db)
            assert (ev.action, ev.actor, ev.outcome) == (f"export.{target}", name, "denied")
            assert ev.reason == err.value.reason
            if expected is None:
                assert f"is {source}; it cannot become {target}" in ev.reason
            else:
                assert f"only the {expected} may move" in ev.reason


def test_requester_who_is_also_a_checker_counts_only_as_requester(db):
    with db() as s, s.begin():
        req = ExportRequest(
            project_slug=PROJECT, requester="bob", state="submitted", justification="j"
        )
        s.add(req)
        s.flush()
        assert permissions.roles_for(s, req, "bob") == {Actor.requester}
        assert permissions.roles_for(s, req, "chris") == {Actor.checker}
        assert permissions.roles_for(s, req, "olga") == set()
        assert permissions.roles_for(s, req, "sam") == set()  # suspended checker
        assert permissions.roles_for(s, req, permissions.SYSTEM) == {Actor.system}
        # a *person* called "system" is not the system
        assert permissions.roles_for(s, req, "system") == set()
        with pytest.raises(errors.IllegalTransition, match="only the checker"):
            transitions.transition(s, req, State.in_review, "bob")
        rid = req.id
    assert _state(db, rid) == "submitted"


def test_unknown_target_state_is_refused(db):
    rid = _request_in(db, State.draft)
    with pytest.raises(errors.IllegalTransition, match="not an export request state"):
        _move(db, rid, "published", "alice")
    with db() as s:
        assert s.scalar(select(ExportRequest.state).where(ExportRequest.id == rid)) == "draft"
