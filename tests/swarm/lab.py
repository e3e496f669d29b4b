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

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "sdesw"
OUTSIDE_NS = f"{PREFIX}-x"  # the switch, and the "outside test host" on it
BRIDGE = f"{PREFIX}br0"
HOST_ADDR = "10.214.0.1"
NODES = {"a": "10.214.0.2", "b": "10.214.0.3"}
ROOT = Path("/tmp") / f"{PREFIX}-lab"  # a directory of this lab's own (a tmpfs while up)
ROOT_SIZE = "8g"


def _run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def prerequisites() -> str:
    """Why this machine cannot run the lab, or '' when it can."""
    if os.geteuid() != 0:
        return "the swarm lab needs root (network namespaces and its own dockerd)"
    for tool in ("dockerd", "containerd", "ip", "iptables", "docker"):
        if not shutil.which(tool):
            return f"the swarm lab needs {tool} on PATH"
    probe = f"{PREFIX}-probe"
    res = _run("ip", "netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"cannot create a network namespace: {res.stderr.strip()}"
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
    pid: int = 0
    node_id: str = ""
    proc: subprocess.Popen | None = None
    log_file: object = None

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def dir(self) -> Path:
        return ROOT / self.name

    @property
    def sock(self) -> str:
        return f"unix://{self.dir / 'docker.sock'}"

    def docker(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return _run("docker", "-H", self.sock, *args, check=check, **kw)

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.sock, timeout=120)


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
    def _start_engine(self, node: Node) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        config = node.dir / "daemon.json"
        config.write_text(json.dumps({}))  # not the machine's /etc/docker/daemon.json
        log = node.log_file = open(node.dir / "dockerd.log", "w")  # noqa: SIM115 - closed in down
        proc = subprocess.Popen(
            [
                # nsenter, not `ip netns exec`: that remounts /sys and hides the cgroups
                "nsenter", f"--net=/run/netns/{node.netns}", "dockerd",
                "--config-file", str(config),
                "--data-root", str(node.dir / "data"),
                "--exec-root", str(node.dir / "exec"),
                "--pidfile", str(node.dir / "docker.pid"),
                "-H", node.sock,
                "--bridge=none",
                # iptables inside the node's own namespace only: the overlay and the
                # docker_gwbridge rules of this node, none on the host.
                "--iptables=true", "--ip6tables=false",
                # Swarm services (API 1.41) cannot ask for no-new-privileges or a private
                # IPC namespace: the node's defaults give them to every container.
                "--no-new-privileges", "--default-ipc-mode=private",
                "--userland-proxy=false",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        node.proc, node.pid = proc, proc.pid  # nsenter execs dockerd: the same PID
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd {node.name} exited: {self.log(node)[-2000:]}")
            if node.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"dockerd {node.name} did not answer: {self.log(node)[-2000:]}")

    def log(self, node: Node) -> str:
        try:
            return (node.dir / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""

    def up(self, images: tuple[str, ...] = ()) -> Lab:
        t0 = time.monotonic()
        self.down()
        # The engines' data roots live on a tmpfs of the lab's own: loading the image is a
        # memory copy and removing two image stores at the end is one unmount.
        ROOT.mkdir(parents=True)
        _run(
            "mount", "-t", "tmpfs", "-o", f"size={ROOT_SIZE},mode=0755", f"{PREFIX}-lab", str(ROOT)
        )
        self._net_up()
        for node in self.nodes.values():
            self._start_engine(node)
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
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaders = [
            subprocess.Popen(
                ["docker", "-H", n.sock, "load", "-q"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for n in self.nodes.values()
        ]
        assert save.stdout is not None
        while chunk := save.stdout.read(1 << 20):
            for loader in loaders:
                loader.stdin.write(chunk)
        save.wait()
        save.stdout.close()
        for loader in loaders:
            loader.stdin.close()
            err = loader.stderr.read().decode()
            loader.stderr.close()
            if loader.wait() != 0:
                raise RuntimeError(f"docker load {image}: {err}")

    def down(self) -> None:
        """Stop every engine of the lab by its PID and remove its namespaces and files."""
        pids = {}
        for node in self.nodes.values():  # all engines at once: each takes seconds to stop
            pid = node.pid
            pidfile = node.dir / "docker.pid"
            if not pid and pidfile.exists():
                try:
                    pid = int(pidfile.read_text().strip())
                except ValueError:
                    pid = 0
            # only a dockerd of this lab (a stale pid file may name another process now)
            if pid and pid in _pids_under(node.dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    pids[node.name] = pid
        deadline = time.monotonic() + 15
        for pid in pids.values():
            try:
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes.values():
            node.pid = 0
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(5)
                node.proc = None
            if node.log_file is not None:
                node.log_file.close()
                node.log_file = None
            # the engines' containers' shims, if dockerd died before stopping them
            for shim in _pids_under(node.dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(shim, signal.SIGKILL)
            _run("ip", "netns", "del", node.netns, check=False)
        _run("ip", "netns", "del", OUTSIDE_NS, check=False)
        if ROOT.exists():
            # overlay mounts and netns bind mounts left under the exec roots
            mounts = [
                line.split()[1]
                for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[1].startswith(str(ROOT))
            ]
            for mnt in sorted(mounts, key=len, reverse=True):
                _run("umount", "-l", mnt, check=False)
            shutil.rmtree(ROOT, ignore_errors=True)  # empty once the tmpfs is gone


def _pids_under(directory: Path) -> list[int]:
    """Processes whose command line names ``directory`` (this lab's containerd and shims)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline:
            out.append(int(entry.name))
    return out


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
