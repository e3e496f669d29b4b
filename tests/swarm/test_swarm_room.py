"""The Swarm path on a real two-node swarm: SDESwarmSpawner starts locked rooms as services.

Node A (manager) runs the hub's container; alice's workspace is placed on node B, bob's on
node A, by the extract-store label. From inside alice's room on node B: the hub answers, and
nothing else does — not bob's room on node A, not the outside test host, not a port of either
node. The control (a task on an ordinary, non-internal overlay on node B) reaches the outside
host with the same probe, so a probe that cannot see a breach cannot pass by accident.
"""

from __future__ import annotations

import json
import time
import types

import pytest
import pytest_asyncio

from sde_spawner.swarm import SWARM_GAPS
from sde_spawner.swarm_spawner import SDESwarmSpawner
from tests.security.test_locked_room import PROBE
from tests.swarm import lab as lab_mod
from tests.swarm.conftest import HUB, HUB_PORT, NOTEBOOK_IMAGE

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROJECT = "diabetes-outcomes"


def make_spawner(lab, registry, username: str, store: str, **traits) -> SDESwarmSpawner:
    traits.setdefault("prefix", "sdesw")
    user = types.SimpleNamespace(name=username, id=7, url=f"/user/{username}/", spawners={})
    hub = types.SimpleNamespace(
        public_host="",
        url=f"http://{HUB}:{HUB_PORT}/hub/",
        base_url="/hub/",
        api_url=f"http://{HUB}:{HUB_PORT}/hub/api",
    )
    spawner = SDESwarmSpawner(
        user=user,
        hub=hub,
        registry_url=registry.url,
        extracts_dir=registry.extracts,
        client_kwargs={"base_url": lab.nodes["a"].sock},
        hub_container=HUB,
        extracts_store=store,
        image=NOTEBOOK_IMAGE,
        cmd=["python3", "-m", "http.server", "8888"],
        **traits,
    )
    spawner.api_token = f"token-of-{username}"
    spawner.user_options = {"project": PROJECT}
    return spawner


def task_of(lab, service: str) -> tuple[str, dict]:
    """(node letter, container inspect) of the running task of ``service``."""
    a = lab.nodes["a"].client()
    tasks = a.api.tasks(filters={"service": service, "desired-state": "running"})
    assert len(tasks) == 1, tasks
    node = next(k for k, n in lab.nodes.items() if n.node_id == tasks[0]["NodeID"])
    cid = tasks[0]["Status"]["ContainerStatus"]["ContainerID"]
    return node, lab.nodes[node].client().api.inspect_container(cid)


def probe(lab, node: str, container_id: str, **ops) -> dict:
    res = lab.nodes[node].docker("exec", container_id, "python3", "-c", PROBE, json.dumps(ops))
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_in(lab, node: str, container_id: str, script: str) -> str:
    return lab.nodes[node].docker("exec", container_id, "sh", "-c", script).stdout


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rooms(swarm_lab, registry):
    """alice on node B (extract store lab-b), bob on node A (lab-a); both started for real.

    Encrypted overlays need ESP in the nodes' kernels to carry anything between nodes; where
    the kernel has none (tests/swarm/lab.py kernel_ipsec) alice's cross-node room uses a plain
    overlay and test_encrypted_overlay_fails_closed_between_nodes shows why."""
    ipsec = lab_mod.kernel_ipsec()
    alice = make_spawner(swarm_lab, registry, "alice", "lab-b", encrypt_overlay=not ipsec)
    bob = make_spawner(swarm_lab, registry, "bob", "lab-a", encrypt_overlay=True)
    t0 = time.monotonic()
    a_ip = await alice.start()
    t1 = time.monotonic()
    b_ip = await bob.start()
    t2 = time.monotonic()
    print(f"swarm spawn alice {t1 - t0:.1f}s bob {t2 - t1:.1f}s")
    yield types.SimpleNamespace(alice=alice, bob=bob, a_ip=a_ip, b_ip=b_ip, ipsec=ipsec)
    for spawner in (alice, bob):
        if spawner.project:
            await spawner.stop()


async def test_placement_puts_each_room_on_a_node_that_sees_its_extract(swarm_lab, rooms):
    a_node, a_info = task_of(swarm_lab, rooms.alice.object_name)
    b_node, _ = task_of(swarm_lab, rooms.bob.object_name)
    assert (a_node, b_node) == ("b", "a")
    data = [m for m in a_info["Mounts"] if m["Destination"] == "/data"]
    assert data == [
        {
            "Type": "bind",
            "Source": rooms.alice._extract_host_dir,
            "Destination": "/data",
            "Mode": "",
            "RW": False,
            "Propagation": "rprivate",
        }
    ]
    assert run_in(swarm_lab, "b", a_info["Id"], "ls /data").split()
    assert "Read-only file system" in run_in(swarm_lab, "b", a_info["Id"], "touch /data/x 2>&1; :")


async def test_the_running_task_is_hardened_including_what_the_node_supplies(swarm_lab, rooms):
    _, info = task_of(swarm_lab, rooms.alice.object_name)
    host = info["HostConfig"]
    assert (host["ReadonlyRootfs"], host["CapDrop"], host["PidsLimit"]) == (True, ["ALL"], 256)
    assert (host["Memory"], host["NanoCpus"], host["IpcMode"]) == (2 << 30, 10**9, "private")
    assert host["Dns"] == ["0.0.0.0"]
    assert info["Config"]["User"] == "1000:1000"
    status = run_in(
        swarm_lab, "b", info["Id"], "grep -E '^(NoNewPrivs|CapEff|CapBnd)' /proc/1/status"
    )
    # NoNewPrivs comes from the node (dockerd --no-new-privileges): SWARM_GAPS.
    assert "no-new-privileges" in SWARM_GAPS
    assert status.split() == ["CapEff:", "0" * 16, "CapBnd:", "0" * 16, "NoNewPrivs:", "1"]
    sysctls = run_in(
        swarm_lab,
        "b",
        info["Id"],
        "cat /proc/sys/net/ipv4/ping_group_range /proc/sys/net/ipv6/conf/all/disable_ipv6",
    )
    assert sysctls.split() == ["1", "0", "1"]
    assert "Read-only file system" in run_in(swarm_lab, "b", info["Id"], "touch /x 2>&1; :")


async def test_from_node_b_only_the_hub_answers(swarm_lab, rooms, outside_listener):
    _, alice = task_of(swarm_lab, rooms.alice.object_name)
    _, bob = task_of(swarm_lab, rooms.bob.object_name)
    bob_ip = next(iter(bob["NetworkSettings"]["Networks"].values()))["IPAddress"]
    outside = list(outside_listener)
    out = probe(
        swarm_lab,
        "b",
        alice["Id"],
        hub=["tcp", HUB, HUB_PORT],
        bob=["tcp", bob_ip, 8888],
        outside=["tcp", *outside],
        node_a_manager=["tcp", lab_mod.NODES["a"], 2377],
        node_a_gossip=["tcp", lab_mod.NODES["a"], 7946],
        node_b_gossip=["tcp", lab_mod.NODES["b"], 7946],
        dns_name=["resolve", "example.org"],
        dns_raw=["dns_raw", "127.0.0.11", "example.org"],
        route=["default_route"],
    )
    assert out["hub"].startswith("open")
    assert out["route"] is False
    unreachable = ("OSError:101", "TimeoutError:None", "timeout:None", "OSError:113")
    for key in ("bob", "outside", "node_a_manager", "node_a_gossip", "node_b_gossip"):
        assert out[key] in unreachable, (key, out[key])
    assert out["dns_name"].startswith("fail:")
    assert not out["dns_raw"].endswith(("answers=1", "answers=2"))


async def test_control_an_ordinary_overlay_on_node_b_reaches_the_outside_host(
    swarm_lab, outside_listener
):
    a = swarm_lab.nodes["a"]
    name = "sdesw-control"
    a.docker("network", "create", "-d", "overlay", "--attachable", f"{name}-net")
    try:
        a.docker(
            "service", "create", "--detach", "--name", name, "--network", f"{name}-net",
            "--constraint", "node.labels.org.sde-tre.extracts==lab-b", "--restart-condition",
            "none", NOTEBOOK_IMAGE, "sleep", "600",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = a.client().api.tasks(filters={"service": name, "desired-state": "running"})
            if tasks and tasks[0]["Status"]["State"] == "running":
                break
            time.sleep(0.5)
        node, info = task_of(swarm_lab, name)
        assert node == "b"
        out = probe(swarm_lab, "b", info["Id"], outside=["tcp", *outside_listener])
        assert out["outside"].startswith("open"), out
    finally:
        a.docker("service", "rm", name, check=False)
        for _ in range(20):
            if a.docker("network", "rm", f"{name}-net", check=False).returncode == 0:
                break
            time.sleep(0.5)


async def test_the_hub_reaches_the_room_it_started(swarm_lab, rooms):
    """The hub (on node A) reaches bob's room on node A by its service name, on the
    encrypted overlay: the address the spawner returned is the one the hub uses."""
    host, port = rooms.b_ip
    out = swarm_lab.nodes["a"].docker(
        "exec", HUB, "python3", "-c",
        f"import urllib.request;print(urllib.request.urlopen('http://{host}:{port}/',"
        "timeout=10).status)",
    )  # fmt: skip
    assert out.stdout.strip() == "200"
    # alice's room on node B, across nodes: on this kernel a plain overlay (see rooms), the
    # positive control of test_encrypted_overlay_fails_closed_between_nodes.
    host, port = rooms.a_ip
    out = swarm_lab.nodes["a"].docker(
        "exec", HUB, "python3", "-c",
        f"import urllib.request;print(urllib.request.urlopen('http://{host}:{port}/',"
        "timeout=10).status)",
    )  # fmt: skip
    assert out.stdout.strip() == "200"
    net = swarm_lab.nodes["a"].client().api.inspect_network(rooms.bob.names.network)
    assert (net["Internal"], net["Options"].get("encrypted"), net["Scope"]) == (True, "", "swarm")


async def test_encrypted_overlay_fails_closed_between_nodes(swarm_lab, registry, rooms):
    """Where the kernel cannot hold ESP state, an encrypted overlay carries nothing between
    nodes (the engine drops unencrypted VXLAN of that network): never clear text."""
    if not rooms.ipsec:
        pytest.skip("this kernel has ESP: encrypted overlays work between nodes")
    carol = make_spawner(swarm_lab, registry, "bob", "lab-b", encrypt_overlay=True, prefix="sdesw2")
    await rooms.bob.stop()  # bob's project may be open once
    try:
        host, port = await carol.start()
        assert task_of(swarm_lab, carol.object_name)[0] == "b"
        res = swarm_lab.nodes["a"].docker(
            "exec", HUB, "python3", "-c",
            f"import socket;s=socket.socket();s.settimeout(4);print(s.connect_ex(('{host}',"
            f"{port})))",
            check=False,
        )  # fmt: skip
        assert res.returncode != 0 or res.stdout.strip() != "0", res.stdout
    finally:
        await carol.stop()


async def test_stop_removes_the_service_and_its_network(swarm_lab, rooms):
    alice = rooms.alice
    names = alice.names
    await alice.stop()
    a = swarm_lab.nodes["a"].client()
    assert a.api.services(filters={"name": names.container}) == []
    deadline = time.monotonic() + 15  # the manager lists a removed network a moment longer
    while a.api.networks(names=[names.network]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [n["Name"] for n in a.api.networks(names=[names.network])] == []
