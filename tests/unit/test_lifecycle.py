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
