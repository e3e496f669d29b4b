"""A prober standing where a workspace stands: a port on each workspace bridge, for as long
as the bridge exists, trying the host's ports the firewall chain must block.

Run inside the engine's network namespace (``nsenter --net=/run/netns/LAB python -m
tests.bridge_probe ...``). For each bridge named on the command line it keeps one veth pair:
one end a port of that bridge (attached again whenever the bridge is made anew, e.g. by an
engine restart or a respawn), the other end in the probe namespace ``--probe-ns`` with the
last address of the bridge's subnet. A thread per bridge, in the probe namespace, opens TCP
connections every ``--interval`` seconds to the bridge's gateway: on ``--blocked`` (a
listener this process runs on 0.0.0.0 in the engine's namespace; the chain must reject it)
and, every fifth round, on ``--allowed`` (the hub API port: the chain admits it, so a
success there shows the position is live). On SIGTERM it writes its counts, and the times
(``time.monotonic()``, the machine's clock) of each success, as JSON to ``--out``.

Traffic goes only to the bridges' gateways, inside namespaces the test made.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

SIOCGIFINDEX, SIOCGIFADDR, SIOCGIFNETMASK = 0x8933, 0x8915, 0x891B
CLONE_NEWNET = 0x40000000


def _ifreq(sock: socket.socket, request: int, name: str) -> bytes | None:
    try:
        return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None


def bridge_state(sock: socket.socket, name: str) -> tuple[int, str, str] | None:
    """(ifindex, gateway address, netmask) of bridge ``name`` in this namespace, or None
    while it does not exist; ('', '') addresses while it has none."""
    idx = _ifreq(sock, SIOCGIFINDEX, name)
    if idx is None:
        return None
    index = struct.unpack("i", idx[16:20])[0]
    addr = _ifreq(sock, SIOCGIFADDR, name)
    mask = _ifreq(sock, SIOCGIFNETMASK, name)
    if addr is None or mask is None:
        return index, "", ""
    return index, socket.inet_ntoa(addr[20:24]), socket.inet_ntoa(mask[20:24])


def probe_address(gateway: str, netmask: str) -> tuple[str, int]:
    """The last host address of the gateway's subnet (a container's is the first free one)."""
    net = ipaddress.ip_network(f"{gateway}/{netmask}", strict=False)
    return str(net.broadcast_address - 1), net.prefixlen


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Probe:
    def __init__(self, i: int, bridge: str, ns: str):
        self.bridge, self.ns = bridge, ns
        self.lab_if, self.ns_if = f"sdeprb{i}", f"prb{i}"
        self.target: tuple[str, str] | None = None  # (gateway, source) while ready
        self.index = 0
        self.subnet = ("", "")
        self.counts = dict(tries=0, hits=0, allowed_tries=0, allowed_ok=0, attached=0, idle=0)
        self.hit_times: list[float] = []
        self.allowed_times: list[float] = []

    def setup(self) -> None:
        ip("link", "add", self.lab_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.ns)
        ip("-n", self.ns, "link", "set", self.ns_if, "up")

    def follow(self, state) -> None:
        """Keep the port on the bridge and the probe's address on its subnet."""
        if state is None:  # no bridge (yet, or any more)
            self.target, self.index = None, 0
            return
        if not state[1]:  # a bridge without its address yet
            self.target = None
            return
        index, gateway, mask = state
        if index != self.index:
            ip("link", "set", self.lab_if, "master", self.bridge, "up")
            self.index = index
            self.counts["attached"] += 1
        if (gateway, mask) != self.subnet:
            source, plen = probe_address(gateway, mask)
            ip("-n", self.ns, "addr", "flush", "dev", self.ns_if)
            ip("-n", self.ns, "addr", "add", f"{source}/{plen}", "dev", self.ns_if)
            self.subnet = (gateway, mask)
        self.target = (gateway, probe_address(gateway, mask)[0])


def _connect(source: str, host: str, port: int) -> bool:
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.bind((source, 0))
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def run_probe(p: Probe, args, stop: threading.Event) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{args.probe_ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    rounds = 0
    while not stop.wait(args.interval):
        target = p.target
        if target is None:
            p.counts["idle"] += 1
            continue
        gateway, source = target
        p.counts["tries"] += 1
        if _connect(source, gateway, args.blocked):
            p.counts["hits"] += 1
            p.hit_times.append(round(time.monotonic(), 3))
        rounds += 1
        if rounds % 5 == 0:
            p.counts["allowed_tries"] += 1
            if _connect(source, gateway, args.allowed):
                p.counts["allowed_ok"] += 1
                p.allowed_times.append(round(time.monotonic(), 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--probe-ns", required=True)
    ap.add_argument("--bridges", required=True, help="comma-separated bridge names")
    ap.add_argument("--blocked", type=int, required=True)
    ap.add_argument("--allowed", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.02)
    args = ap.parse_args()

    t0 = time.monotonic()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    listener = socket.create_server(("0.0.0.0", args.blocked))  # in the lab namespace only
    listener.settimeout(0.2)
    accepted: list[str] = []

    def accept():
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, addr = listener.accept()
                accepted.append(addr[0])
                conn.close()

    probes = [Probe(i, b, args.probe_ns) for i, b in enumerate(args.bridges.split(","))]
    for p in probes:
        p.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    threads = [threading.Thread(target=accept, daemon=True)]
    threads += [
        threading.Thread(target=run_probe, args=(p, args, stop), daemon=True) for p in probes
    ]
    for t in threads:
        t.start()
    print("ready", flush=True)
    while not stop.wait(0.01):
        for p in probes:
            try:
                p.follow(bridge_state(sock, p.bridge))
            except subprocess.CalledProcessError:
                p.target = None  # the bridge went away under us: try again next round
    for t in threads:
        t.join(2)
    result = {
        "seconds": round(time.monotonic() - t0, 3),
        "accepted": accepted,
        "bridges": {
            p.bridge: {**p.counts, "hit_times": p.hit_times[:1000],
                       "allowed_times": p.allowed_times[-5000:]}
            for p in probes
        },
    }  # fmt: skip
    for p in probes:
        subprocess.run(["ip", "link", "del", p.lab_if], capture_output=True, check=False)
    with open(args.out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
