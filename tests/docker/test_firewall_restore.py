"""A flushed host firewall chain (``iptables -F``) is put back by the hub without an operator,
and no workspace reaches a blocked host listener meanwhile: exposure zero.

The hub here has a chain and workspace bridges of its own (SDE_FIREWALL_CHAIN,
SDE_BRIDGE_PREFIX), so flushing its chain touches no other hub's workspaces. From inside a
real workspace a probe opens connections to a host listener on the workspace network's
gateway every 20 ms while the test flushes the chain; the hub's watcher restores it (and
audits ``firewall.restored``). With the backstop rule in INPUT the probe gets nothing through;
the control removes the backstop too and the same probe gets through until the watcher has
put both back, so the probe would see the breach.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid

import pytest

from sde_spawner.containers import workspace_names
from tests.support import Hub, User, retire_hub, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
BRIDGES = "fqa"
CHAIN = "FQA-INPUT"
OWN = {"SDE_BRIDGE_PREFIX": BRIDGES, "SDE_FIREWALL_CHAIN": CHAIN}
BACKSTOP = ["-i", f"{BRIDGES}+", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED",
            "-j", "DROP"]  # fmt: skip

#: From inside the workspace: try the host listener every 20 ms for N seconds.
PROBE = r"""
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tries = hits = 0; first = last = None; t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    tries += 1
    s = socket.socket(); s.settimeout(0.2)
    try:
        s.connect((host, port)); hits += 1
        now = time.monotonic() - t0; first = now if first is None else first; last = now
    except OSError:
        pass
    finally:
        s.close()
    time.sleep(0.02)
print(json.dumps({"tries": tries, "hits": hits, "first": first, "last": last}))
"""


class OwnChainHub(Hub):
    @property
    def env(self) -> dict:
        return {**super().env, **OWN, "SDE_FIREWALL_WATCH_SECONDS": "1"}


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def own_hub(tmp_path_factory, docker_client, notebook_image):
    prefix = f"sdeq{uuid.uuid4().hex[:6]}"
    h = OwnChainHub(tmp_path_factory.mktemp("ownchain"), prefix)
    h.seed()
    h.start()
    yield h
    retire_hub(h, docker_client, OWN)


class Listener:
    """A host TCP listener on one address, counting the connections it accepts."""

    def __init__(self, host: str):
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


def probe_during(container, host: str, port: int, seconds: float, fault) -> tuple[dict, float]:
    """Run the probe in the workspace; call ``fault()`` once it is under way; return the
    probe's counts and how long the hub took to put the chain back."""
    out: dict = {}

    def run():
        res = container.exec_run(["python3", "-c", PROBE, host, str(port), str(seconds)])
        out["res"] = res

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    fault()
    wait_for(lambda: chain_complete(), 30, "the hub to put the chain back", interval=0.05)
    restored_in = time.monotonic() - t0
    t.join(seconds + 60)
    res = out["res"]
    assert res.exit_code == 0, res.output.decode()[-1000:]
    return json.loads(res.output.decode().strip().splitlines()[-1]), restored_in


def chain_complete() -> bool:
    rules = iptables("-S", CHAIN, check=False).stdout
    return (
        "--reject-with tcp-reset" in rules
        and iptables("-C", "INPUT", "-j", CHAIN, check=False).returncode == 0
        and iptables("-C", "INPUT", *BACKSTOP, check=False).returncode == 0
    )


def test_a_flushed_chain_is_restored_with_no_exposure(own_hub, docker_client):
    hub = own_hub
    alice = User(hub, "alice")
    assert alice.logged_in
    alice.ensure_running(PROJECT)
    names = workspace_names("alice", PROJECT, hub.prefix)
    ws = docker_client.containers.get(names.container)
    net = docker_client.networks.get(names.network)
    bridge = net.attrs["Options"]["com.docker.network.bridge.name"]
    assert bridge.startswith(BRIDGES), bridge  # only this hub's chain matches it
    gateway = net.attrs["IPAM"]["Config"][0]["Gateway"].split("/")[0]
    listener = Listener(gateway)
    try:
        assert chain_complete()
        assert alice.workspace_get(PROJECT, "api/status").status_code == 200
        # with the chain and its backstop: the probe gets nothing through before, during
        # or after the flush
        seen, restored_in = probe_during(
            ws, gateway, listener.port, 5.0, lambda: iptables("-F", CHAIN)
        )
        assert seen["tries"] > 50, seen
        assert seen["hits"] == 0 and listener.accepted == 0, seen
        events = hub.events(action="firewall.restored")
        assert [e["details"]["missing"] for e in events] == [["chain"]], events

        # control: the backstop removed too, the same probe gets through until the watcher
        # has put both back
        def flush_all():
            iptables("-D", "INPUT", *BACKSTOP)
            iptables("-F", CHAIN)

        control, control_restored_in = probe_during(ws, gateway, listener.port, 5.0, flush_all)
        assert control["hits"] > 0 and listener.accepted == control["hits"], control
        # (the watcher may see the two changes in one round or in two)
        put_back = {m for e in hub.events(action="firewall.restored")[1:] for m in
                    e["details"]["missing"]}  # fmt: skip
        assert {"backstop"} <= put_back <= {"chain", "backstop"}, put_back

        # and after the restore nothing gets through again
        after, _ = probe_during(ws, gateway, listener.port, 2.0, lambda: None)
        assert after["hits"] == 0, after
        # the workspace is still served (its hub API port is allowed again)
        t0 = time.monotonic()
        wait_for(
            lambda: alice.workspace_get(PROJECT, "api/status").status_code == 200,
            120,
            "the workspace to answer through the proxy again",
        )
        served_after = time.monotonic() - t0
    finally:
        listener.close()
    window = (control["last"] or 0) - (control["first"] or 0)
    print(
        f"restored in {restored_in:.2f} s with the backstop: {seen['hits']} of "
        f"{seen['tries']} probes through; without it: {control['hits']} of "
        f"{control['tries']} through over {window:.2f} s (restored in "
        f"{control_restored_in:.2f} s); served again after {served_after:.1f} s"
    )
