"""The lifecycle plan: which open workspaces close, and why."""

from datetime import date

from sde_spawner.lifecycle import Closure, plan
from sde_spawner.policy import Decision
from sde_spawner.registry.models import Workspace


def test_plan_closes_only_the_ineligible_and_says_why():
    rooms = [
        Workspace(username="alice", server_name="p1", project_slug="p1"),
        Workspace(username="bob", server_name="", project_slug="p1"),
        Workspace(username="carol", server_name="p2", project_slug="p2"),
    ]
    decisions = {
        ("alice", "p1"): Decision(True),
        ("bob", "p1"): Decision(False, ("your account is suspended",)),
        ("carol", "p2"): Decision(False, (f"agreement A ended {date(2026, 1, 1)}",)),
    }
    assert plan(rooms, lambda u, p: decisions[(u, p)]) == [
        Closure("bob", "", "p1", "your account is suspended"),
        Closure("carol", "p2", "p2", "agreement A ended 2026-01-01"),
    ]
    assert plan([], lambda u, p: Decision(False, ("x",))) == []


def test_the_service_sees_a_registry_change_from_the_audit_head(tmp_path):
    from sde_spawner import audit
    from sde_spawner.db import open_db
    from sde_spawner.lifecycle import audit_head, registry_changed
    from sde_spawner.registry import ops

    sm = open_db(f"sqlite:///{tmp_path}/r.sqlite")
    ops.perform(sm, ops.add_person, "admin", "alice", training_expires="2030-01-01")
    with sm() as s:
        seen = audit_head(s)
        assert seen > 0 and registry_changed(s, seen) == (seen, False)
    # Workspace activity moves the head but is no registry change.
    audit.append_committed(sm, "code.executed", actor="alice", details={"code": "1"})
    with sm() as s:
        head, changed = registry_changed(s, seen)
        assert head == seen + 1 and not changed
    # A refused suspension (audited as denied) is not a change; a suspension is.
    import pytest

    with pytest.raises(ops.RegistryError):
        ops.perform(sm, ops.suspend_person, "admin", "alice", " ")
    with sm() as s:
        head, changed = registry_changed(s, head)
        assert not changed
    ops.perform(sm, ops.suspend_person, "admin", "alice", "DAC instruction")
    with sm() as s:
        head2, changed = registry_changed(s, head)
        assert head2 > head and changed
        assert registry_changed(s, head2) == (head2, False)
