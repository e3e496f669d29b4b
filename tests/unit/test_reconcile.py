"""sde_spawner.reconcile.plan: what a starting hub removes, and what it keeps."""

from __future__ import annotations

import json
import sqlite3

import pytest

from sde_spawner.reconcile import Plan, plan, saved_states


def c(name: str, cid: str) -> dict:
    return {"id": cid, "name": name, "user": name.split("-")[1], "project": "p"}


def test_what_no_saved_state_refers_to_is_removed_and_the_rest_kept():
    containers = [c("sdx-ann__p", "c1"), c("sdx-bob__p", "c2"), c("sdx-cat__p", "c3")]
    networks = [
        {"id": "n1", "name": "sdx-ann__p-net", "user": "ann", "project": "p"},
        {"id": "n2", "name": "sdx-bob__p-net", "user": "bob", "project": "p"},
        {"id": "n3", "name": "sdx-cat__p-net", "user": "cat", "project": "p"},
    ]
    rows = [
        {"username": "ann", "server": "p", "project": "p", "container": "sdx-ann__p"},
        {"username": "bob", "server": "p", "project": "p", "container": "sdx-bob__p"},
        {"username": "dan", "server": "p", "project": "p", "container": "other-dan__p"},
    ]
    states = [
        {"object_id": "c1", "object_name": "sdx-ann__p", "network_id": "n1", "project": "p"},
        # a state naming the container only (its network found by name)
        {"object_name": "sdx-cat__p", "project": "p"},
    ]
    assert plan("sdx", containers, networks, rows, states) == Plan(
        containers=[c("sdx-bob__p", "c2")],
        networks=[{"id": "n2", "name": "sdx-bob__p-net", "user": "bob", "project": "p"}],
        # another prefix's row is not this hub's to close
        rows=[{"username": "bob", "server": "p", "project": "p", "container": "sdx-bob__p"}],
    )


def test_nothing_saved_means_nothing_kept():
    containers = [c("sdx-ann__p", "c1")]
    assert plan("sdx", containers, [], [], []).containers == containers


def test_saved_states_read_from_jupyterhubs_database(tmp_path):
    assert saved_states(tmp_path / "missing.sqlite") == []
    db = tmp_path / "jupyterhub.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE spawners (id INTEGER PRIMARY KEY, state TEXT)")
    conn.executemany(
        "INSERT INTO spawners (state) VALUES (?)",
        [(json.dumps({"object_id": "c1"}),), (None,), (json.dumps({}),)],
    )
    conn.commit()
    conn.close()
    assert saved_states(db) == [{"object_id": "c1"}]


def test_saved_states_read_through_a_database_url(tmp_path):
    """SDE_HUB_DB_URL may put JupyterHub's database elsewhere: the states are read from there,
    and a database that cannot be read raises instead of looking empty (which would make every
    running workspace an orphan)."""
    db = tmp_path / "hub.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE spawners (id INTEGER, state TEXT)")
    conn.execute("INSERT INTO spawners VALUES (1, ?)", ('{"object_id": "c2"}',))
    conn.commit()
    conn.close()
    assert saved_states(f"sqlite:///{db}") == [{"object_id": "c2"}]
    assert saved_states(f"sqlite:///{tmp_path}/none.sqlite") == []
    (tmp_path / "bad.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(Exception, match=r"not a database|file is not"):
        saved_states(tmp_path / "bad.sqlite")
