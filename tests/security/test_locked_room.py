"""Attack cases run from inside a real workspace: no route out, no DNS, no neighbours, no host.

Each probe is paired with a control in which the same probe *does* get through (a container
on an ordinary bridge, the firewall taken out, the host side reaching a workspace), so a
probe that cannot see a breach cannot pass by accident.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import uuid

import pytest

from sde_spawner import firewall
from sde_spawner.containers import workspace_names
from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"

PROBE = r"""
import json, socket, sys
def tcp(host, port, timeout=3):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.settimeout(1)
        try:
            data = s.recv(64)
        except socket.timeout:
            data = b""
        return "open:" + data.decode(errors="replace").strip()[:20]
    except OSError as e:
        return type(e).__name__ + ":" + str(e.errno)
    finally:
        s.close()
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"sde-probe", (host, port))
        return "sent"
    except OSError as e:
        return type(e).__name__ + ":" + str(e.errno)
def resolve(name):
    try:
        return socket.getaddrinfo(name, 80)[0][4][0]
    except OSError as e:
        return "fail:" + type(e).__name__
def dns_raw(server, name, timeout=3):
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
        bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, (server, 53))
        data = s.recv(512)
        answers = int.from_bytes(data[6:8], "big")
        return f"rcode={data[3] & 15} answers={answers}"
    except OSError as e:
        return "fail:" + type(e).__name__
def default_route():
    rows = open("/proc/net/route").read().splitlines()[1:]
    return any(r.split()[1] == "00000000" for r in rows)
ops = json.loads(sys.argv[1])
out = {}
for key, (fn, *args) in ops.items():
    out[key] = globals()[fn](*args)
print(json.dumps(out))
"""


def probe(container, **ops) -> dict:
    res = container.exec_run(["python3", "-c", PROBE, json.dumps(ops)])
    out = res.output.decode(errors="replace")
    assert res.exit_code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def ensure_running(hub, user: User, docker_client):
    user.ensure_running(PROJECT)
    return docker_client.containers.get(workspace_names(user.name, PROJECT, hub.prefix).container)


@pytest.fixture(scope="module")
def alice_ws(hub, docker_client):
    return ensure_running(hub, User(hub, "alice"), docker_client)


@pytest.fixture(scope="module")
def bob_ws(hub, docker_client):
    return ensure_running(hub, User(hub, "bob"), docker_client)


def gateway_of(container) -> str:
    container.reload()
    net = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))
    return net["Gateway"]


def ip_of(container) -> str:
    container.reload()
    return next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]


@pytest.fixture(scope="module")
def open_bridge_box(docker_client, notebook_image):
    """Control: the same image on an ordinary (not internal) bridge network."""
    tag = uuid.uuid4().hex[:6]
    net = docker_client.networks.create(f"sdetest-open-{tag}", driver="bridge")
    box = docker_client.containers.run(
        notebook_image,
        ["sleep", "600"],
        name=f"sdetest-open-{tag}",
        network=net.name,
        detach=True,
        user="1000:1000",
    )
    yield box
    box.remove(force=True)
    net.remove()


class HostListener:
    """A listener the test starts on the host side, on every address (0.0.0.0, or [::] with
    ``ipv6``: dual stack, as sshd and many daemons bind)."""

    def __init__(self, ipv6: bool = False):
        self.sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::" if ipv6 else "0.0.0.0", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.sendall(b"host\n")
            conn.close()

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def host_listener():
    listener = HostListener()
    yield listener
    listener.close()


# ---- no route out ------------------------------------------------------------------------
def test_outside_host_is_unreachable_from_the_workspace(alice_ws, outside_host):
    before = len(outside_host.hits())
    out = probe(
        alice_ws,
        tcp=["tcp", outside_host.ip, outside_host.tcp_port],
        udp=["udp", outside_host.ip, outside_host.udp_port],
        route=["default_route"],
    )
    assert not out["tcp"].startswith("open"), out
    assert out["route"] is False
    assert outside_host.hits()[before:] == []


def test_internal_network_alone_blocks_the_outside(
    hub, alice_ws, docker_client, notebook_image, outside_host
):
    """Layer by layer: a box on the workspace's network that keeps its default route (the
    spawner only drops it in workspaces) still cannot get out, because the network is
    internal. Removing `internal` from the network spec turns this red."""
    net = workspace_names("alice", PROJECT, hub.prefix).network
    assert docker_client.networks.get(net).attrs["Internal"] is True
    box = docker_client.containers.run(
        notebook_image,
        ["sleep", "120"],
        name=f"sdetest-layer-{uuid.uuid4().hex[:6]}",
        network=net,
        detach=True,
        user="1000:1000",
    )
    try:
        before = len(outside_host.hits())
        out = probe(
            box, tcp=["tcp", outside_host.ip, outside_host.tcp_port], route=["default_route"]
        )
        assert out["route"] is True, out  # the route exists, and still nothing gets through
        assert not out["tcp"].startswith("open"), out
        assert outside_host.hits()[before:] == []
    finally:
        box.remove(force=True)


def test_control_outside_host_is_reachable_from_an_ordinary_bridge(open_bridge_box, outside_host):
    before = len(outside_host.hits())
    out = probe(
        open_bridge_box,
        tcp=["tcp", outside_host.ip, outside_host.tcp_port],
        route=["default_route"],
    )
    assert out == {"tcp": "open:outside", "route": True}
    assert any(h.startswith("tcp ") for h in outside_host.hits()[before:])


# ---- no DNS ----------------------------------------------------------------------------------
def test_no_name_resolves_and_no_query_leaves(alice_ws, outside_host):
    before = len(outside_host.hits())
    out = probe(
        alice_ws,
        name=["resolve", "outside.sde-test.invalid"],
        raw=["dns_raw", "127.0.0.11", "outside.sde-test.invalid"],
        hub=["resolve", "hub"],
    )
    assert out["name"].startswith("fail:") and out["hub"].startswith("fail:"), out
    assert out["raw"].startswith("fail:") or "answers=0" in out["raw"], out
    code, resolv = alice_ws.exec_run(["cat", "/etc/resolv.conf"])
    assert code == 0
    servers = [ln.split()[1] for ln in resolv.decode().splitlines() if ln.startswith("nameserver")]
    assert servers == ["127.0.0.11"]
    assert outside_host.hits()[before:] == []


def test_control_dns_probe_sees_a_reachable_resolver(docker_client, notebook_image, outside_host):
    """A container whose upstream resolver is the outside host does leak the query there."""
    tag = uuid.uuid4().hex[:6]
    net = docker_client.networks.create(f"sdetest-dns-{tag}", driver="bridge")
    box = docker_client.containers.run(
        notebook_image,
        ["sleep", "120"],
        name=f"sdetest-dns-{tag}",
        network=net.name,
        detach=True,
        dns=[outside_host.ip],
    )
    try:
        before = len(outside_host.hits())
        probe(box, raw=["dns_raw", "127.0.0.11", "leak.sde-test.invalid", 2])
        wait_for(
            lambda: any(h.startswith("udp ") for h in outside_host.hits()[before:]),
            10,
            "the leaked DNS query at the outside host",
        )
    finally:
        box.remove(force=True)
        net.remove()


# ---- no neighbours ---------------------------------------------------------------------------
def test_another_users_workspace_is_unreachable(alice_ws, bob_ws):
    bob_ip = ip_of(bob_ws)
    out = probe(alice_ws, bob=["tcp", bob_ip, 8888])
    assert not out["bob"].startswith("open"), out
    # control: from the host side bob's server does answer on that address and port
    with socket.create_connection((bob_ip, 8888), timeout=5):
        pass


# ---- no neighbours on other projects -------------------------------------------------------
OTHER_PROJECT = "attack-other"


@pytest.fixture(scope="module")
def gina_ws(hub, docker_client):
    """The room of gina, a researcher on another project (its own network and extract)."""
    hub.add_project(OTHER_PROJECT, ["gina"], agreement="DSA-T-OTHER")
    gina = User(hub, "gina")
    assert gina.logged_in, hub.log_tail()
    gina.ensure_running(OTHER_PROJECT)
    yield docker_client.containers.get(workspace_names("gina", OTHER_PROJECT, hub.prefix).container)
    gina.ensure_stopped(OTHER_PROJECT)


def test_a_workspace_of_another_project_is_unreachable(
    hub, alice_ws, gina_ws, docker_client, notebook_image
):
    gina_ip, alice_ip = ip_of(gina_ws), ip_of(alice_ws)
    assert gateway_of(gina_ws) != gateway_of(alice_ws)  # a network of its own
    out = probe(alice_ws, gina=["tcp", gina_ip, 8888], gina_gw=["tcp", gateway_of(gina_ws), 8888])
    assert out["gina"].startswith("OSError:101"), out  # ENETUNREACH: no route to that network
    assert out["gina_gw"].startswith("OSError:101"), out
    back = probe(gina_ws, alice=["tcp", alice_ip, 8888])
    assert back["alice"].startswith("OSError:101"), back

    # Layer by layer: a box on alice's network that keeps its default route (workspaces have
    # none) sends to gina through the host, which does not forward between workspace networks
    # (internal networks: Docker's isolation rules drop it).
    box = docker_client.containers.run(
        notebook_image,
        ["sleep", "120"],
        name=f"sdetest-cross-{uuid.uuid4().hex[:6]}",
        network=workspace_names("alice", PROJECT, hub.prefix).network,
        detach=True,
        user="1000:1000",
    )
    try:
        routed = probe(box, gina=["tcp", gina_ip, 8888], route=["default_route"])
    finally:
        box.remove(force=True)
    assert routed["route"] is True and not routed["gina"].startswith("open"), routed

    # control: from the host side gina's server does answer on that address and port
    with socket.create_connection((gina_ip, 8888), timeout=5):
        pass


# ---- of the host, only the hub API --------------------------------------------------------
def test_only_the_hub_api_is_reachable_on_the_host(hub, alice_ws, host_listener):
    gw = gateway_of(alice_ws)
    out = probe(
        alice_ws,
        hub=["tcp", gw, hub.hub_port],
        proxy_public=["tcp", gw, hub.port],
        proxy_api=["tcp", gw, hub.proxy_api_port],
        listener=["tcp", gw, host_listener.port],
        postgres=["tcp", gw, 5432],
        ssh=["tcp", gw, 22],
    )
    assert out["hub"].startswith("open"), out
    for key in ("proxy_public", "proxy_api", "listener", "postgres", "ssh"):
        assert out[key].startswith("ConnectionRefusedError"), (key, out)
    assert host_listener.accepted == 0
    _, text = alice_ws.exec_run(
        [
            "python3",
            "-c",
            f"import urllib.request;print(urllib.request.urlopen('http://{gw}:{hub.hub_port}"
            f"/hub/api/', timeout=5).status)",
        ]
    )
    assert text.decode().strip() == "200", text


def reject_counter() -> int:
    """Packets the host chain's TCP reject rule has answered (shared by every workspace)."""
    out = subprocess.run(
        ["iptables", "-w", "-L", firewall.CHAIN, "-v", "-x", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = next(ln for ln in out.splitlines() if "REJECT" in ln and "tcp-reset" in ln)
    return int(row.split()[0])


def docker0_address() -> str | None:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "docker0"], capture_output=True, text=True
    ).stdout
    return out.split()[3].split("/")[0] if out.strip() else None


def test_the_docker_api_is_out_of_reach(hub, alice_ws):
    """The engine's TCP ports (2375 plain, 2376 TLS) on the gateway are rejected by the host
    chain, whether or not the daemon listens there; other host addresses have no route; the
    engine's socket is not in the room. (The probe sees an open port when one is reachable:
    test_control_without_the_firewall_the_host_listener_is_reached.)"""
    gw = gateway_of(alice_ws)
    ops = {"gw2375": ["tcp", gw, 2375], "gw2376": ["tcp", gw, 2376]}
    if (bridge := docker0_address()) is not None:
        ops.update(docker0_2375=["tcp", bridge, 2375], docker0_2376=["tcp", bridge, 2376])
    rejected = reject_counter()
    out = probe(alice_ws, **ops)
    assert out["gw2375"].startswith("ConnectionRefusedError") and out["gw2376"].startswith(
        "ConnectionRefusedError"
    ), out
    assert reject_counter() >= rejected + 2  # the firewall answered, not (only) a closed port
    for key in ("docker0_2375", "docker0_2376"):
        if key in out:
            assert out[key].startswith("OSError:101"), out  # ENETUNREACH
    res = alice_ws.exec_run(
        ["sh", "-c", "ls -l /var/run/docker.sock /run/docker.sock; printenv DOCKER_HOST"]
    )
    assert res.exit_code != 0 and b"docker.sock" in res.output, res.output
    assert b"No such file" in res.output and b"tcp://" not in res.output, res.output


def test_control_without_the_firewall_the_host_listener_is_reached(hub, alice_ws, host_listener):
    gw = gateway_of(alice_ws)
    allowed = firewall.allowed_ports()
    firewall.remove()
    try:
        out = probe(alice_ws, listener=["tcp", gw, host_listener.port])
    finally:
        firewall.apply(allowed)
    assert out["listener"] == "open:host", out
    assert host_listener.accepted == 1
    out = probe(alice_ws, listener=["tcp", gw, host_listener.port])
    assert out["listener"].startswith("ConnectionRefusedError"), out


# ---- no IPv6 ---------------------------------------------------------------------------------

V6_PROBE = r"""
import json, socket, sys
ll, port = sys.argv[1], int(sys.argv[2])
addrs = open("/proc/net/if_inet6").read().split()
try:
    s = socket.create_connection((ll + "%eth0", port), timeout=4)
    got = "open:" + s.recv(16).decode(errors="replace").strip()
    s.close()
except OSError as e:
    got = type(e).__name__ + ":" + str(e.errno)
print(json.dumps({"inet6": len(addrs), "connect": got}))
"""


def bridge_link_local(docker_client, network: str) -> str:
    import subprocess

    bridge = (
        docker_client.networks.get(network).attrs["Options"].get("com.docker.network.bridge.name")
    )
    out = subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", bridge, "scope", "link"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[3].split("/")[0]


@pytest.fixture
def host6_listener():
    if not firewall.ipv6_enabled():
        pytest.skip("this kernel has no IPv6")
    listener = HostListener(ipv6=True)
    yield listener
    listener.close()


def v6_probe(container, ll: str, port: int) -> dict:
    res = container.exec_run(["python3", "-c", V6_PROBE, ll, str(port)])
    out = res.output.decode(errors="replace")
    assert res.exit_code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_the_workspace_has_no_ipv6_to_reach_the_host_with(
    hub, alice_ws, docker_client, host6_listener
):
    alice_ws.reload()
    assert alice_ws.attrs["HostConfig"]["Sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "1"
    net = workspace_names("alice", PROJECT, hub.prefix).network
    out = v6_probe(alice_ws, bridge_link_local(docker_client, net), host6_listener.port)
    assert out["inet6"] == 0 and not out["connect"].startswith("open"), out
    assert host6_listener.accepted == 0


def test_ipv6_chain_blocks_a_workspace_that_has_ipv6_anyway(
    hub, alice_ws, docker_client, notebook_image, host6_listener
):
    """Layer by layer: a box on a workspace-style network *with* IPv6 switched on (as a
    different daemon or a lost sysctl would leave it) reaches a [::] host listener through
    the bridge's link-local address unless the ip6tables chain is there."""
    tag = uuid.uuid4().hex[:8]
    net = docker_client.networks.create(
        f"sdetest-v6-{tag}",
        driver="bridge",
        internal=True,
        options={"com.docker.network.bridge.name": f"sdet{tag}"[:15]},
    )
    box = docker_client.containers.run(
        notebook_image,
        ["sleep", "120"],
        name=f"sdetest-v6-{tag}",
        network=net.name,
        detach=True,
        user="1000:1000",
        sysctls={"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0",
                 "net.ipv6.conf.eth0.disable_ipv6": "0"},
    )  # fmt: skip
    try:
        ll = bridge_link_local(docker_client, net.name)
        # until the box's link-local address has passed duplicate detection (EADDRNOTAVAIL)
        blocked = wait_for(
            lambda: (r := v6_probe(box, ll, host6_listener.port))["connect"] != "OSError:99" and r,
            30,
            "a usable link-local address in the box",
        )
        firewall.remove(ipv6=True)
        try:
            reached = v6_probe(box, ll, host6_listener.port)
        finally:
            firewall.apply(firewall.allowed_ports())
        again = v6_probe(box, ll, host6_listener.port)
    finally:
        box.remove(force=True)
        net.remove()
    assert not blocked["connect"].startswith("open"), blocked
    assert reached["connect"] == "open:host", reached  # control: without the chain it gets in
    assert not again["connect"].startswith("open"), again
    assert host6_listener.accepted == 1
