"""Faults of the hub itself, against a real hub process and the real Docker engine.

* A hub restart with ten running workspaces (ten people): every workspace is the same
  container afterwards, reachable through the proxy with its owner's token, refused to every
  other person's, and labelled and recorded as its owner's.
* A hub SIGKILLed between "container started" and "state saved" (the spawner's test hook
  ``SDE_TEST_KILL_HUB_AT=started-unsaved``, inert unless set): the orphans are there (the
  probe sees container, network and open registry row with no saved state), and the next
  start removes them before the hub answers, audits each removal, keeps the person's home
  volume and installs the host firewall chain; the person can start again.

The hub's children (proxy, services) are ended by PID after a SIGKILL, as systemd ends the
rest of a killed unit's control group.
"""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
import requests
from sqlalchemy import create_engine, text

from sde_spawner.containers import workspace_names
from tests.support import Hub, User, own_firewall, retire_hub

pytestmark = pytest.mark.docker

TEN = "ten-rooms"
PEOPLE = [f"res{i:02d}" for i in range(10)]
PROJECT = "diabetes-outcomes"  # the demo's, with alice a member


#: A chain and bridges of this module's own: its hubs' firewall (and its watcher) touch no
#: other hub's (tests/docker/test_firewall_restore.py flushes one).
OWN = {"SDE_BRIDGE_PREFIX": "fqb", "SDE_FIREWALL_CHAIN": "FQB-INPUT"}


class FaultHub(Hub):
    """A test hub whose environment a test can add to between restarts."""

    extra_env: dict[str, str] = {}

    @property
    def env(self) -> dict:
        return {**super().env, **OWN, **self.extra_env}


@pytest.fixture(scope="module")
def fault_hub(tmp_path_factory, docker_client, notebook_image):
    prefix = f"sdef{uuid.uuid4().hex[:6]}"
    h = FaultHub(tmp_path_factory.mktemp("faulthub"), prefix)
    h.extra_env = {}
    h.seed()
    h.add_project(TEN, PEOPLE)
    h.start()
    yield h
    retire_hub(h, docker_client, OWN)


def open_rows(hub, username: str | None = None) -> list[tuple]:
    engine = create_engine(hub.db_url)
    try:
        with engine.connect() as conn:
            query = "SELECT username, server_name, container FROM workspace"
            query += " WHERE stopped_at IS NULL"
            rows = conn.execute(text(query)).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows if username is None or r[0] == username]


def start_via_api(user: User, project: str) -> None:
    r = user.api("POST", f"/users/{user.name}/servers/{project}", json={"project": project})
    assert r.status_code in (201, 202), r.text


def test_hub_restart_keeps_ten_workspaces_reachable_and_owned(fault_hub, docker_client):
    hub = fault_hub
    people = [User(hub, name) for name in PEOPLE]
    assert all(p.logged_in for p in people), hub.log_tail()
    t0 = time.monotonic()
    for p in people:  # the hub starts them concurrently (docker_threads)
        start_via_api(p, TEN)
    with ThreadPoolExecutor(len(people)) as pool:
        list(pool.map(lambda p: p.wait_ready(TEN, timeout=600), people))
    spawned_in = time.monotonic() - t0

    def container(p: User):
        return docker_client.containers.get(workspace_names(p.name, TEN, hub.prefix).container)

    before = {p.name: container(p).id for p in people}
    assert all(p.workspace_get(TEN, "api/status").status_code == 200 for p in people)

    t1 = time.monotonic()
    hub.stop()
    hub.start()
    restarted_in = time.monotonic() - t1

    for i, p in enumerate(people):
        info = p.server(TEN)
        assert info and info["ready"], (p.name, info)
        c = container(p)
        assert c.id == before[p.name] and c.status == "running", "not the same workspace"
        assert c.labels["org.sde-tre.user"] == p.name
        assert open_rows(hub, p.name) == [(p.name, TEN, c.name)]
        assert p.workspace_get(TEN, "api/status").status_code == 200, p.name
        # another person's token does not open it
        other = people[(i + 1) % len(people)]
        r = requests.get(
            f"{hub.url}/user/{p.name}/{TEN}/api/status",
            headers={"Authorization": f"token {other.token}"},
            timeout=30,
            allow_redirects=False,
        )
        assert r.status_code == 403, (p.name, other.name, r.status_code)
    assert not hub.events(action="hub.reconciled"), "a restart removed a workspace it knew"
    print(f"ten workspaces started in {spawned_in:.1f} s; hub restarted in {restarted_in:.1f} s")
    with ThreadPoolExecutor(len(people)) as pool:
        list(pool.map(lambda p: p.stop(TEN), people))


def kill_hub(hub) -> None:
    """Wait for the hub's self-SIGKILL, then end what it left running (``Hub.stop``: by PID,
    the children it noted while the hub ran)."""
    assert hub.proc.wait(120) == -signal.SIGKILL, hub.log_tail()
    hub.stop()


def test_a_hub_killed_before_saving_state_leaves_nothing_the_next_start_keeps(
    fault_hub, docker_client
):
    hub = fault_hub
    names = workspace_names("alice", PROJECT, hub.prefix)
    hub.stop()
    hub.extra_env = {"SDE_TEST_KILL_HUB_AT": "started-unsaved"}
    hub.start()
    try:
        alice = User(hub, "alice")
        assert alice.logged_in
        # 202 when the start outlasts the hub's wait, 503 from the proxy when the hub dies first
        r = alice.api("POST", f"/users/alice/servers/{PROJECT}", json={"project": PROJECT})
        assert r.status_code in (202, 503), r.text
    finally:
        kill_hub(hub)

    # the probe: what the killed start left, with no saved state referring to it
    orphan = docker_client.containers.get(names.container)
    assert orphan.status == "running"
    network = docker_client.networks.get(names.network)
    assert open_rows(hub, "alice") == [("alice", PROJECT, names.container)]

    hub.extra_env = {}
    hub.start()

    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(orphan.id)
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(network.id)
    assert open_rows(hub, "alice") == []
    docker_client.volumes.get(names.home_volume)  # her work is kept
    removed = {
        (e["details"]["removed"], e["details"]["name"], e["details"]["target"])
        for e in hub.events(action="hub.reconciled")
    }
    assert removed == {
        ("container", names.container, "alice"),
        ("network", names.network, "alice"),
        ("row", names.container, "alice"),
    }, removed
    installed = own_firewall(OWN, "print(firewall.jumped_to(), firewall.allowed_ports())")
    assert installed.stdout.strip() == f"True {sorted([hub.hub_port, hub.service_port])}"

    # and she can start again
    alice = User(hub, "alice")
    start_via_api(alice, PROJECT)
    alice.wait_ready(PROJECT, timeout=300)
    assert alice.workspace_get(PROJECT, "api/status").status_code == 200
    verify = hub.admin("audit", "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("OK"), verify.stdout
    alice.stop(PROJECT)
