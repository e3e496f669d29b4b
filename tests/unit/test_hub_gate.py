"""The hub gate's two decisions, as pure functions: which peers are the host's own, and which
hub calls a workspace's server may make. (Against the real hub: tests/security.)"""

from __future__ import annotations

import pytest

from sde_spawner.hub_gate import WorkspaceGate, allowed_for_workspace


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "api", True),
        ("GET", "api/", True),
        ("GET", "api/user", True),
        ("POST", "api/oauth2/token", True),
        ("POST", "api/users/alice/activity", False),  # chosen timestamps, read outside
        ("GET", "api/users/alice/activity", False),
        ("POST", "api/users/alice/tokens", False),
        ("GET", "api/users/alice/tokens", False),
        ("GET", "api/users", False),
        ("POST", "api/users/alice/servers/x", False),
        ("DELETE", "api/users/alice/server", False),
        ("GET", "api/user/../users", False),
        ("POST", "api/user", False),
        ("GET", "login", False),
        ("POST", "login", False),
        ("GET", "token", False),
        ("GET", "api/oauth2/authorize", False),
        ("POST", "api/users/alice/activity/x", False),
    ],
)
def test_a_workspace_may_make_only_its_servers_calls(method, path, allowed):
    assert allowed_for_workspace(method, path) is allowed


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        (None, True),  # a Unix socket on the host
        ("172.18.0.2", False),
        ("10.213.77.2", False),
        ("::ffff:172.18.0.2", False),
        ("fe80::1%eth0", False),
        ("not-an-address", False),
    ],
)
def test_only_the_hosts_loopback_is_trusted(peer, trusted):
    assert WorkspaceGate(hub_app=None, hub_prefix="/hub/").trusts(peer) is trusted
