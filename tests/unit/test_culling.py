"""Which idle workspaces are culled, as whole plans (pure): each project's own timeout, the
service default for the others, only servers the registry knows as workspaces, and never one
still starting or stopping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sde_spawner.culling import Cull, human, plan

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def server(idle: timedelta | None, **kw) -> dict:
    last = (NOW - idle).isoformat().replace("+00:00", "Z") if idle is not None else None
    return {"ready": True, "pending": None, "last_activity": last,
            "started": (NOW - timedelta(days=1)).isoformat(), **kw}  # fmt: skip


def test_each_project_has_its_own_timeout_and_the_rest_the_default():
    users = [
        {"name": "alice", "servers": {
            "short": server(timedelta(minutes=11)),  # past short's 10 min
            "long": server(timedelta(minutes=50)),  # within long's 2 h
            "plain": server(timedelta(minutes=61)),  # past the 1 h default
        }},
        {"name": "bob", "servers": {
            "short": server(timedelta(minutes=9)),  # within
            "": server(timedelta(hours=5)),  # not a workspace the registry knows
            "other": server(timedelta(hours=5), pending="stop"),  # already stopping
            "starting": server(timedelta(hours=5), ready=False),
        }},
    ]  # fmt: skip
    rooms = {("alice", "short"): "short", ("alice", "long"): "long", ("alice", "plain"): "plain",
             ("bob", "short"): "short", ("bob", "other"): "plain",
             ("bob", "starting"): "plain"}  # fmt: skip
    timeouts = {"short": 600, "long": 7200, "plain": None}
    assert plan(users, rooms, timeouts, 3600, NOW) == [
        Cull("alice", "plain", "plain", 61 * 60.0, 3600),
        Cull("alice", "short", "short", 11 * 60.0, 600),
    ]


def test_a_server_without_activity_counts_from_its_start_and_the_reason_says_why():
    users = [{"name": "alice", "servers": {"p": server(None)}}]
    (cull,) = plan(users, {("alice", "p"): "p"}, {"p": 3600}, 600, NOW)
    assert cull.idle_seconds == 86400.0
    assert cull.reason == (
        "idle for 24 h (no activity through the hub's proxy); project p's idle timeout is 1 h"
    )
    assert [human(s) for s in (45, 150, 5400)] == ["45 s", "2 min", "1 h 30 min"]
