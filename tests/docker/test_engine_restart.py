"""A Docker engine restart under a running hub with running workspaces: the hub's view is
reconciled with the engine's, nothing is left that the hub does not know, and the host
firewall chain is in place before any workspace is reachable (exposure measured: zero).

The machine's engine is never restarted: the hub runs against an engine of its own
(``tests/private_engine.py``: its own ``dockerd`` in the network namespace ``sdeer-a``, on a
tmpfs data root), and the hub itself, its proxy and its ``sde`` service run in that same
namespace (this module's thread enters it with ``setns``), so the hub's chain (``FQE-INPUT``,
bridges ``fqe*``) and the workspaces' bridges are that namespace's. The engine is stopped by
PID (SIGTERM: dockerd stops its containers first; SIGKILL: a crash, the containers live on
until the next dockerd stops them: no live-restore) and started again on the same data root.

A prober (``tests/bridge_probe.py``) stands where a workspace stands, on a port of every
workspace bridge for as long as the bridge exists (through the restart and the respawn),
and every 20 ms tries a host port the chain must block, and the hub API port it admits.

Without live-restore every workspace's container is dead after the restart; JupyterHub's
poll (SDE_POLL_SECONDS) sees it, and does not call the spawner's ``stop()`` for a server it
found dead: ``SDESpawner.run_post_stop_hook`` removes the container, network and open
registry row (audited ``hub.reconciled``), so the owner's next start is a clean one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sde_spawner.containers import workspace_names
from tests.private_engine import (
    Engine,
    in_netns,
    load_image,
    mount_tmpfs,
    prerequisites,
    run,
    stop_all,
    unmount_under,
)
from tests.support import REPO, Hub, User, close_sessions, free_port, own_firewall, wait_for

pytestmark = pytest.mark.docker

PREFIX = "sdeer"
LAB_NS = f"{PREFIX}-a"  # the engine's, the hub's and the bridges' namespace
PROBE_NS = f"{PREFIX}-p"  # the prober's far ends
ROOT = Path("/tmp") / f"{PREFIX}-lab"  # a tmpfs of this module's own
#: A plain engine: no docker0, its iptables rules in its own namespace, no live-restore.
FLAGS = ("--bridge=none", "--iptables=true", "--ip6tables=false", "--userland-proxy=false")
#: The hub's chain and bridges (in the lab namespace; distinct names all the same).
OWN = {"SDE_BRIDGE_PREFIX": "fqe", "SDE_FIREWALL_CHAIN": "FQE-INPUT"}
POOL = "10.216.0.0/16"  # clear of the default pool (10.213/16) and the swarm lab (10.214/24)
ROOMS = [("rina", "engine-a"), ("rina", "engine-b"), ("omar", "engine-a")]


def lab_down(engine: Engine | None = None) -> None:
    """Everything of this module's lab, by PID and by name: engine, namespaces, tmpfs."""
    stop_all([engine or Engine(LAB_NS, ROOT / "engine")])
    for ns in (LAB_NS, PROBE_NS):
        run("ip", "netns", "del", ns, check=False)
    unmount_under(ROOT)


@pytest.fixture(scope="module")
def engine(notebook_image):
    reason = prerequisites("the engine-restart test", f"{PREFIX}-check")
    if reason:
        pytest.skip(reason)
    lab_down()  # what an interrupted earlier run left
    mount_tmpfs(ROOT, "6g", f"{PREFIX}-lab")
    e = Engine(LAB_NS, ROOT / "engine", FLAGS)
    try:
        for ns in (LAB_NS, PROBE_NS):
            run("ip", "netns", "add", ns)
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        e.start()
        t0 = time.monotonic()
        load_image(notebook_image, [e])
        print(f"image loaded into the lab engine in {time.monotonic() - t0:.1f} s")
        yield e
    finally:
        lab_down(e)


class LabHub(Hub):
    """The real hub, run in the lab namespace against the lab engine."""

    engine: Engine

    @property
    def env(self) -> dict:
        return {
            **super().env,
            **OWN,
            "DOCKER_HOST": self.engine.sock,
            "SDE_NETWORK_POOL": POOL,
            "SDE_FIREWALL_WATCH_SECONDS": "1",
            "SDE_FIREWALL_LOCK": str(ROOT / "firewall.lock"),
            "SDE_POLL_SECONDS": "2",
        }


@pytest.fixture(scope="module")
def hub(engine, tmp_path_factory):
    with in_netns(LAB_NS):  # this thread, the hub and everything they start
        h = LabHub(tmp_path_factory.mktemp("enginehub"), f"{PREFIX}{uuid.uuid4().hex[:6]}")
        h.engine = engine
        h.seed()
        h.add_project("engine-a", ["rina", "omar"])
        h.add_project("engine-b", ["rina"])
        h.start()
        try:
            yield h
        finally:
            close_sessions()
            h.stop()


# ---- what the test looks at -----------------------------------------------------------
def ports(hub) -> list[int]:
    return [hub.hub_port, hub.service_port]


def chain_missing(hub) -> list[str]:
    """What of the hub's chain is missing in the lab namespace (``firewall.missing``)."""
    out = own_firewall(OWN, f"print(','.join(firewall.missing({ports(hub)})))")
    return [m for m in out.stdout.strip().split(",") if m]


def iptables_s(chain: str) -> list[str]:
    return run("iptables", "-w", "-S", chain).stdout.splitlines()


def lab_objects(engine: Engine, prefix: str) -> dict[str, list[str]]:
    flt = {"label": f"org.sde-tre.managed-by={prefix}"}
    client = engine.client()
    try:
        return {
            "containers": sorted(c.name for c in client.containers.list(all=True, filters=flt)),
            "networks": sorted(n.name for n in client.networks.list(filters=flt)),
            "volumes": sorted(v.name for v in client.volumes.list(filters=flt)),
        }
    finally:
        client.close()


def open_rows(hub) -> list[tuple]:
    from sqlalchemy import create_engine, text

    eng = create_engine(hub.db_url)
    try:
        with eng.connect() as conn:
            q = "SELECT username, server_name FROM workspace WHERE stopped_at IS NULL"
            return sorted(tuple(r) for r in conn.execute(text(q)).all())
    finally:
        eng.dispose()


def names(hub, user: str, project: str):
    return workspace_names(user, project, hub.prefix, OWN["SDE_BRIDGE_PREFIX"])


def people(hub) -> dict[str, User]:
    out = {n: User(hub, n) for n in sorted({u for u, _ in ROOMS})}
    assert all(u.logged_in for u in out.values()), hub.log_tail()
    return out


def start_all(hub, users: dict[str, User]) -> float:
    """Every room started by its owner (concurrently, through the REST API); seconds."""
    t0 = time.monotonic()
    for user, project in ROOMS:
        if users[user].server(project) is None:
            r = users[user].api(
                "POST", f"/users/{user}/servers/{project}", json={"project": project}
            )
            assert r.status_code in (201, 202), r.text
    with ThreadPoolExecutor(len(ROOMS)) as pool:
        list(pool.map(lambda room: users[room[0]].wait_ready(room[1], 300), ROOMS))
    return time.monotonic() - t0


def assert_owned_and_reachable(hub, users: dict[str, User]) -> None:
    for user, project in ROOMS:
        assert users[user].workspace_get(project, "api/status").status_code == 200
        other = next(u for n, u in users.items() if n != user)
        r = requests.get(
            f"{hub.url}/user/{user}/{project}/api/status",
            headers={"Authorization": f"token {other.token}"},
            timeout=30,
            allow_redirects=False,
        )
        assert r.status_code == 403, (user, project, other.name, r.status_code)


class Prober:
    """``tests/bridge_probe.py`` on every room's bridge, in the lab namespace."""

    def __init__(self, hub, out: Path):
        self.bridges = [names(hub, u, p).bridge for u, p in ROOMS]
        self.blocked = free_port()
        self.allowed = hub.hub_port
        self.out = out
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prober:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "tests.bridge_probe", "--probe-ns", PROBE_NS,
                "--bridges", ",".join(self.bridges), "--blocked", str(self.blocked),
                "--allowed", str(self.allowed), "--out", str(self.out),
            ],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0
        self.proc.stdout.close()
        return json.loads(self.out.read_text())


def allowed_between(result: dict, t0: float, t1: float) -> dict[str, int]:
    return {b: sum(t0 <= t < t1 for t in r["allowed_times"]) for b, r in result["bridges"].items()}


# ---- the restarts -----------------------------------------------------------------------
def restart_and_reconcile(hub, engine: Engine, sig: int, users: dict[str, User], tmp: Path):
    """Stop the engine with ``sig``, start it again, and wait for the hub to see every room
    stopped; the prober runs all the while. Returns the figures and the probe's result."""
    expect = {(kind, n, user) for user, project in ROOMS for kind, n in
              (("container", names(hub, user, project).container),
               ("network", names(hub, user, project).network),
               ("row", names(hub, user, project).container))}  # fmt: skip
    seen_before = len(hub.events(action="hub.reconciled"))
    input_before = iptables_s("INPUT")
    chain_before = iptables_s(OWN["SDE_FIREWALL_CHAIN"])
    forward_before = iptables_s("FORWARD")
    prober = Prober(hub, tmp / f"probe-{sig}.json").start()
    stop_while_down = None
    try:
        time.sleep(1.5)  # the prober on every bridge, and through, before the fault
        t_fault = time.monotonic()
        stopped_in = engine.stop(sig)
        missing_down = chain_missing(hub)
        served_down = (
            {  # a crash: are the rooms still served while no dockerd runs?
                (u, p): users[u].workspace_get(p, "api/status").status_code for u, p in ROOMS
            }
            if sig == signal.SIGKILL
            else {}
        )
        if sig == signal.SIGKILL:
            # an owner asks to stop a room while no engine answers (JupyterHub's poll in
            # the stop raises: 500, the room stays the hub's; it is reconciled with the
            # others once the engine is back, as the assertions below check)
            r = users["rina"].api("DELETE", "/users/rina/servers/engine-b")
            stop_while_down = r.status_code
        t_start = time.monotonic()
        up_in = engine.start()
        t_up = time.monotonic()
        missing_up = chain_missing(hub)  # the first look once the engine answers again
        wait_for(
            lambda: all(users[u].server(p) is None for u, p in ROOMS),
            90,
            "the hub to see every room stopped",
            interval=0.2,
        )
        reconciled_in = time.monotonic() - t_up
        wait_for(
            lambda: lab_objects(engine, hub.prefix)["networks"] == [],
            30,
            "the rooms' networks to be removed",
        )
        cleaned_in = time.monotonic() - t_up
        objects = lab_objects(engine, hub.prefix)
        rows = open_rows(hub)
        events = hub.events(action="hub.reconciled")[seen_before:]  # this restart's
        removed = {
            (e["details"]["removed"], e["details"]["name"], e["details"]["target"]) for e in events
        }
        # the owners start again, cleanly
        respawned_in = start_all(hub, users)
        assert_owned_and_reachable(hub, users)
        t_respawned = time.monotonic()
        time.sleep(1.5)  # the prober on the respawned rooms' bridges
        missing_after = chain_missing(hub)
    finally:
        result = prober.stop()
    figures = dict(
        stopped_in=stopped_in, up_in=up_in, reconciled_in=reconciled_in,
        cleaned_in=cleaned_in, respawned_in=respawned_in,
    )  # fmt: skip
    # -- the hub's view and the engine's agree; nothing orphaned; audited
    assert objects["containers"] == [] and objects["networks"] == [], objects
    assert len(objects["volumes"]) == len(ROOMS), objects  # the researchers' work is kept
    assert rows == [], rows
    assert removed == expect, (removed, expect)
    assert all("ended without the hub stopping it" in (e["reason"] or "") for e in events)
    # -- the firewall: never missing, INPUT not rewritten by the engine's restart
    assert missing_down == [] and missing_up == [] and missing_after == [], (
        missing_down, missing_up, missing_after,
    )  # fmt: skip
    assert iptables_s("INPUT") == input_before
    assert iptables_s(OWN["SDE_FIREWALL_CHAIN"]) == chain_before
    # -- exposure: the blocked port never answered, from any room's position, while the
    #    position was live before the fault and again after the respawn
    tries = sum(r["tries"] for r in result["bridges"].values())
    hits = sum(r["hits"] for r in result["bridges"].values())
    assert tries > 100, result
    assert hits == 0 and result["accepted"] == [], result
    assert all(n > 0 for n in allowed_between(result, 0, t_fault).values()), result
    assert all(n > 0 for n in allowed_between(result, t_respawned, 1e12).values()), result
    return figures, result, dict(
        t_fault=t_fault, t_start=t_start, t_up=t_up, served_down=served_down,
        stop_while_down=stop_while_down,
        forward_changed=iptables_s("FORWARD") != forward_before,
    )  # fmt: skip


def report(what: str, figures: dict, result: dict, extra: dict) -> None:
    tries = sum(r["tries"] for r in result["bridges"].values())
    hits = sum(r["hits"] for r in result["bridges"].values())
    idle = sum(r["idle"] for r in result["bridges"].values())
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"{what}: {hits} of {tries} probes through to the blocked port ({idle} rounds with "
        f"no bridge); engine stopped in {figures['stopped_in']:.1f} s, answering again "
        f"{figures['up_in']:.1f} s after its start; the hub saw every room stopped "
        f"{figures['reconciled_in']:.1f} s later and had removed their objects after "
        f"{figures['cleaned_in']:.1f} s; the owners' restarts took {figures['respawned_in']:.1f} "
        f"s; served while the engine was down: {extra['served_down']}; a stop asked then: "
        f"{extra['stop_while_down']}; FORWARD rewritten by "
        f"the engine: {extra['forward_changed']}; load {' '.join(load)}"
    )


def test_an_engine_restart_is_reconciled_with_no_exposure(hub, engine, tmp_path):
    users = people(hub)
    spawned_in = start_all(hub, users)
    assert_owned_and_reachable(hub, users)
    assert chain_missing(hub) == []
    figures, result, extra = restart_and_reconcile(hub, engine, signal.SIGTERM, users, tmp_path)
    print(f"three rooms started in {spawned_in:.1f} s")
    report("SIGTERM", figures, result, extra)


def test_an_engine_crash_is_reconciled_with_no_exposure(hub, engine, tmp_path):
    users = people(hub)
    start_all(hub, users)
    figures, result, extra = restart_and_reconcile(hub, engine, signal.SIGKILL, users, tmp_path)
    # a crashed dockerd leaves its containers running (their shims live on) until the next
    # dockerd stops them: the rooms were still served, behind the same chain
    assert all(code == 200 for code in extra["served_down"].values()), extra
    report("SIGKILL", figures, result, extra)


def test_control_a_firewall_lost_during_the_restart_is_seen_by_the_probe(hub, engine, tmp_path):
    """The zero above is the chain's doing, not the probe's blindness: the jump and the
    backstop taken out while the engine is down (as a host firewall reset during the
    restart would), the same probe gets through at once, until the hub's watcher has put
    them back (SDE_FIREWALL_WATCH_SECONDS=1); then nothing again."""
    users = people(hub)
    start_all(hub, users)
    chain = OWN["SDE_FIREWALL_CHAIN"]
    backstop = own_firewall(OWN, "print(' '.join(firewall.backstop()))").stdout.split()
    restored_before = len(hub.events(action="firewall.restored"))
    prober = Prober(hub, tmp_path / "probe-control.json").start()
    try:
        time.sleep(1.0)
        engine.stop(signal.SIGKILL)  # the rooms live on meanwhile (see the crash test)
        t_reset = time.monotonic()
        # out for one second at least (taken out again whenever the watcher is quicker),
        # then left to the watcher
        while time.monotonic() < t_reset + 1.0:
            for rule in (["-j", chain], backstop):
                run("iptables", "-w", "-D", "INPUT", *rule, check=False)
            time.sleep(0.05)
        t_left = time.monotonic()
        wait_for(lambda: chain_missing(hub) == [], 30, "the watcher to restore", interval=0.05)
        restored_in = time.monotonic() - t_left
        t_restored = time.monotonic()
        time.sleep(1.5)  # and after the restore: nothing
        engine.start()
        wait_for(lambda: all(users[u].server(p) is None for u, p in ROOMS), 90, "the rooms to stop")
    finally:
        result = prober.stop()
    hits = sorted(t for r in result["bridges"].values() for t in r["hit_times"])
    assert hits and len(result["accepted"]) == len(hits), result
    assert all(t_reset <= t <= t_restored for t in hits), (hits, t_reset, t_restored)
    restored = hub.events(action="firewall.restored")[restored_before:]
    # (a round of the watcher may fail while the test takes the jump out again under it,
    # "Index of insertion too big": audited as an error, the next round puts them back)
    put_back = {m for e in restored for m in e["details"]["missing"]}
    assert {m for m in put_back if not m.startswith("error:")} == {"jump", "backstop"}, put_back
    print(
        f"control: {len(hits)} probes through over {hits[-1] - hits[0]:.2f} s (the rules out "
        f"for 1 s, then put back by the hub {restored_in:.2f} s later); none after"
    )
