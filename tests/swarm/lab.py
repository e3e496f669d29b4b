"""A throw-away Docker Swarm on this one machine: one engine per network namespace.

Each node is its own ``dockerd`` (own data root, exec root, socket, pid file and managed
containerd) started inside its own network namespace, so its iptables rules, bridges and
overlay plumbing stay in that namespace and the machine's shared engine is never touched
(no ``docker swarm init`` on it). The node namespaces hang off one bridge in a third
namespace (never the host's)::

    sdesw-x  sdeswbr0 10.214.0.1/24   the switch, and "the outside test host"
    sdesw-a  eth0     10.214.0.2/24   node A, manager
    sdesw-b  eth0     10.214.0.3/24   node B, worker

``python -m tests.swarm.lab up|down`` runs the same steps by hand. Everything is stopped by
PID and removed in :meth:`Lab.down`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.private_engine import (
    Engine,
    load_image,
    mount_tmpfs,
    stop_all,
    unmount_under,
)
from tests.private_engine import prerequisites as engine_prerequisites

PREFIX = "sdesw"
OUTSIDE_NS = f"{PREFIX}-x"  # the switch, and the "outside test host" on it
BRIDGE = f"{PREFIX}br0"
HOST_ADDR = "10.214.0.1"
NODES = {"a": "10.214.0.2", "b": "10.214.0.3"}
ROOT = Path("/tmp") / f"{PREFIX}-lab"  # a directory of this lab's own (a tmpfs while up)
ROOT_SIZE = "8g"


def _run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


#: The node engines' flags (tests/private_engine.py adds the private data root, socket...)
NODE_FLAGS = (
    "--bridge=none",
    # iptables inside the node's own namespace only: the overlay and the
    # docker_gwbridge rules of this node, none on the host.
    "--iptables=true", "--ip6tables=false",
    # Swarm services (API 1.41) cannot ask for no-new-privileges or a private
    # IPC namespace: the node's defaults give them to every container.
    "--no-new-privileges", "--default-ipc-mode=private",
    "--userland-proxy=false",
)  # fmt: skip


def prerequisites() -> str:
    """Why this machine cannot run the lab, or '' when it can."""
    probe = f"{PREFIX}-probe"
    reason = engine_prerequisites("the swarm lab", probe)
    if reason:
        return reason
    _run("ip", "netns", "add", probe)
    try:
        res = _run(
            "ip", "netns", "exec", probe,
            "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789",
            check=False,
        )  # fmt: skip
        if res.returncode != 0:
            return f"the kernel has no VXLAN (overlay networks): {res.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return ""


def kernel_ipsec() -> str:
    """'' when the kernel can hold the ESP state encrypted overlays use (AES-GCM,
    rfc4106), else the kernel's error."""
    probe = f"{PREFIX}-xfrm"
    _run("ip", "netns", "add", probe, check=False)
    try:
        res = _run(
            "ip", "netns", "exec", probe, "ip", "xfrm", "state", "add",
            "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "esp", "spi", "0x100",
            "reqid", "1", "mode", "transport",
            "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "64",
            check=False,
        )  # fmt: skip
        return "" if res.returncode == 0 else res.stderr.strip()
    finally:
        _run("ip", "netns", "del", probe, check=False)


@dataclass
class Node:
    name: str
    addr: str
    node_id: str = ""
    engine: Engine = field(init=False)

    def __post_init__(self):
        self.engine = Engine(f"{PREFIX}-{self.name}", ROOT / self.name, NODE_FLAGS)

    @property
    def netns(self) -> str:
        return self.engine.netns

    @property
    def dir(self) -> Path:
        return self.engine.dir

    @property
    def sock(self) -> str:
        return self.engine.sock

    def docker(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return self.engine.docker(*args, check=check, **kw)

    def client(self):
        return self.engine.client()


@dataclass
class Lab:
    nodes: dict[str, Node] = field(
        default_factory=lambda: {k: Node(k, v) for k, v in NODES.items()}
    )
    timings: dict[str, float] = field(default_factory=dict)

    # ---- network ----------------------------------------------------------------
    def _net_up(self) -> None:
        # The switch lives in a namespace of its own, not on the host: the host's bridged
        # traffic passes the host's iptables FORWARD chain (br_netfilter), which the
        # machine's engine owns; this namespace's chains are empty.
        _run("ip", "netns", "add", OUTSIDE_NS)
        out = ("ip", "netns", "exec", OUTSIDE_NS)
        _run(*out, "ip", "link", "add", BRIDGE, "type", "bridge")
        _run(*out, "ip", "addr", "add", f"{HOST_ADDR}/24", "dev", BRIDGE)
        _run(*out, "ip", "link", "set", BRIDGE, "up")
        _run(*out, "ip", "link", "set", "lo", "up")
        for node in self.nodes.values():
            port = f"{PREFIX}{node.name}0"
            _run("ip", "netns", "add", node.netns)
            _run("ip", "link", "add", port, "netns", OUTSIDE_NS, "type", "veth", "peer",
                 "name", "eth0", "netns", node.netns)  # fmt: skip
            _run(*out, "ip", "link", "set", port, "master", BRIDGE, "up")
            ns = ("ip", "netns", "exec", node.netns)
            _run(*ns, "ip", "addr", "add", f"{node.addr}/24", "dev", "eth0")
            _run(*ns, "ip", "link", "set", "eth0", "up")
            _run(*ns, "ip", "link", "set", "lo", "up")

    # ---- engines ----------------------------------------------------------------
    def log(self, node: Node) -> str:
        return node.engine.log()

    def up(self, images: tuple[str, ...] = ()) -> Lab:
        t0 = time.monotonic()
        self.down()
        # The engines' data roots live on a tmpfs of the lab's own: loading the image is a
        # memory copy and removing two image stores at the end is one unmount.
        mount_tmpfs(ROOT, ROOT_SIZE, f"{PREFIX}-lab")
        self._net_up()
        for node in self.nodes.values():
            node.engine.start()
        self.timings["engines"] = time.monotonic() - t0
        a, b = self.nodes["a"], self.nodes["b"]
        t1 = time.monotonic()
        a.docker("swarm", "init", "--advertise-addr", a.addr, "--listen-addr", f"{a.addr}:2377")
        token = a.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        b.docker("swarm", "join", "--token", token, "--advertise-addr", b.addr, f"{a.addr}:2377")
        for node in self.nodes.values():
            node.node_id = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        self.timings["swarm"] = time.monotonic() - t1
        t2 = time.monotonic()
        for image in images:
            self.load_image(image)
        self.timings["images"] = time.monotonic() - t2
        return self

    def attach(self) -> bool:
        """Use a lab already up (``python -m tests.swarm.lab up``); False if there is none."""
        for node in self.nodes.values():
            res = node.docker("info", "--format", "{{.Swarm.NodeID}}", check=False)
            if res.returncode != 0 or not res.stdout.strip():
                return False
            node.node_id = res.stdout.strip()
        return True

    def load_image(self, image: str) -> None:
        """The machine engine's image, loaded into every node (one save, piped to each)."""
        load_image(image, [n.engine for n in self.nodes.values()])

    def down(self) -> None:
        """Stop every engine of the lab by its PID and remove its namespaces and files."""
        stop_all([n.engine for n in self.nodes.values()])
        for node in self.nodes.values():
            _run("ip", "netns", "del", node.netns, check=False)
        _run("ip", "netns", "del", OUTSIDE_NS, check=False)
        unmount_under(ROOT)  # overlay mounts and netns bind mounts left under the exec roots


if __name__ == "__main__":
    lab = Lab()
    if sys.argv[1:2] == ["up"]:
        reason = prerequisites()
        if reason:
            sys.exit(reason)
        lab.up(tuple(sys.argv[2:]) or ("sde-notebook:latest",))
        print(json.dumps({"timings": lab.timings, "ipsec": kernel_ipsec() or "ok"}))
    elif sys.argv[1:] == ["down"]:
        lab.down()
    else:
        sys.exit("usage: python -m tests.swarm.lab up|down")
