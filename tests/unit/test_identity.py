"""Which tokens count as a workspace's own (exactly a server token's scopes), and the
stand-alone audit append the service uses for refusals."""

import pytest

from sde_spawner.services.identity import server_of_scopes

SERVER = [
    "access:servers!server=alice/proj-a",
    "read:users:activity!user=alice",
    "read:users:groups!user=alice",
    "read:users:name!user=alice",
    "users:activity!user=alice",
]


def test_server_token_is_recognised():
    assert server_of_scopes(SERVER) == ("alice", "proj-a")
    assert server_of_scopes(["access:servers!server=alice/"]) == ("alice", "")


@pytest.mark.parametrize(
    "extra",
    [
        "servers!user=alice",
        "tokens!user=alice",
        "access:servers!user=alice",
        "read:users!user=alice",
        "admin:users",
        "access:servers!server=alice/other",
        "users:activity!user=bob",
        "access:services!service=sde",
    ],
)
def test_anything_broader_is_a_personal_token(extra):
    assert server_of_scopes([*SERVER, extra]) is None


def test_other_users_server_scope_does_not_match_their_activity_scopes():
    assert server_of_scopes(["access:servers!server=bob/p", "users:activity!user=alice"]) is None
    assert server_of_scopes([]) is None


def test_append_committed_writes_one_event_in_its_own_transaction(tmp_path):
    from sde_spawner import audit
    from sde_spawner.db import open_db

    Session = open_db(f"sqlite:///{tmp_path}/a.sqlite")
    audit.append_committed(Session, "x.refused", actor="alice", outcome="denied", reason="no")
    with Session() as s:
        rows = audit.query(s)
        assert [(e.action, e.actor, e.outcome, e.reason) for e in rows] == [
            ("x.refused", "alice", "denied", "no")
        ]
        assert audit.verify(s).ok


def test_a_workspace_token_is_accepted_from_its_own_address_only():
    from sde_spawner.services.identity import WorkspaceIdentity

    ws = WorkspaceIdentity("alice", "p1", "p1", 1, "172.18.0.2")
    assert ws.accepts("172.18.0.2")
    assert not ws.accepts("127.0.0.1") and not ws.accepts(None)
    assert "not from 127.0.0.1" in ws.refusal("127.0.0.1")
    old = WorkspaceIdentity("alice", "p1", "p1", 1, None)  # a row from before migration 0005
    assert not old.accepts("172.18.0.2")
    assert "stop and start it again" in old.refusal("172.18.0.2")
