"""Which hub requests become audit events, as whole dicts."""

import pytest

from sde_spawner.hub_events import classify


def ev(action, actor, path, method, status=200, target=None, outcome="allowed", reason=None):
    details = {"method": method, "path": path, "status": status}
    if target:
        details["target"] = target
    return {
        "actor": actor,
        "outcome": outcome,
        "action": action,
        "reason": reason,
        "details": details,
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("POST", "api/users/alice/tokens", 201, "alice"),
            ev("token.created", "alice", "/hub/api/users/alice/tokens", "POST", 201, "alice"),
        ),
        (
            ("DELETE", "api/users/alice/tokens/a12", 204, "alice"),
            ev("token.revoked", "alice", "/hub/api/users/alice/tokens/a12", "DELETE", 204, "alice"),
        ),
        (
            ("POST", "api/users/alice/servers/proj", 201, "alice"),
            ev(
                "spawn.requested",
                "alice",
                "/hub/api/users/alice/servers/proj",
                "POST",
                201,
                "alice",
            ),
        ),
        (
            ("POST", "spawn/alice/proj", 302, "alice"),
            ev("spawn.requested", "alice", "/hub/spawn/alice/proj", "POST", 302),
        ),
        (
            ("DELETE", "api/users/bob/server", 403, "alice"),
            ev(
                "stop.requested",
                "alice",
                "/hub/api/users/bob/server",
                "DELETE",
                403,
                "bob",
                "denied",
                "HTTP 403",
            ),
        ),
        (
            ("POST", "api/users", 201, "admin"),
            ev("hub.api.changed", "admin", "/hub/api/users", "POST", 201),
        ),
        (
            ("PATCH", "api/users/bob", 200, "admin"),
            ev("hub.api.changed", "admin", "/hub/api/users/bob", "PATCH", 200, "bob"),
        ),
        (
            ("GET", "api/users", 200, "admin"),
            ev("hub.api.read", "admin", "/hub/api/users", "GET", 200),
        ),
        (
            ("GET", "api/users/bob", 403, "alice"),
            ev(
                "hub.api.read",
                "alice",
                "/hub/api/users/bob",
                "GET",
                403,
                "bob",
                "denied",
                "HTTP 403",
            ),
        ),
        (
            ("POST", "api/groups/g/users", 401, None),
            ev(
                "hub.api.changed",
                "(anonymous)",
                "/hub/api/groups/g/users",
                "POST",
                401,
                None,
                "denied",
                "HTTP 401",
            ),
        ),
    ],
)
def test_audited_requests(args, expected):
    assert classify(*args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "api/users/alice", 200, "alice"),  # reading oneself
        ("GET", "api/", 200, None),
        ("GET", "home", 200, "alice"),
        ("POST", "api/users/alice/activity", 200, "alice"),
        ("GET", "spawn/alice/proj", 200, "alice"),
        ("OPTIONS", "api/users", 204, None),
    ],
)
def test_unaudited_requests(args):
    assert classify(*args) is None


def test_a_stop_by_the_idle_culler_service_is_a_cull():
    path = "api/users/alice/servers/proj"
    culled = classify("DELETE", path, 204, "idle-culler", "service")
    assert culled == {
        **ev("workspace.culled", "idle-culler", "/hub/" + path, "DELETE", 204, "alice"),
        "reason": "idle longer than the hub-wide limit (the idle-culler service)",
    }
    # a person (even one named so) or a refused stop is not
    assert classify("DELETE", path, 204, "idle-culler", "user")["action"] == "stop.requested"
    assert classify("DELETE", path, 403, "idle-culler", "service")["action"] == "stop.requested"
    assert classify("DELETE", path, 204, "sde", "service")["action"] == "stop.requested"
