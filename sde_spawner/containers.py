"""Pure builders: registry facts and settings -> Docker names, network, volume and container specs.

No I/O here (in the style of kubespawner's ``objects.py``): the spawner calls these and hands
the dicts to Docker, and tests compare whole dicts, so a dropped ``cap_drop`` or a writable
``/data`` fails a test.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import string
from dataclasses import dataclass

LABEL_PREFIX = "org.sde-tre"
#: Host interface names of workspace networks: bridge prefix + 12 hex (<= 15 chars). The host
#: firewall matches them as ``<prefix>+``; a hub of its own bridge prefix (1-3 lowercase
#: letters, SDE_BRIDGE_PREFIX read by sde_spawner.firewall) has bridges no other hub's chain
#: matches (tests/docker/test_firewall_restore.py).
BRIDGE_PREFIX = "sde"


def check_bridge_prefix(prefix: str) -> str:
    """``prefix`` when it is 1-3 lowercase letters; ``ValueError`` otherwise."""
    if not re.fullmatch(r"[a-z]{1,3}", prefix):
        raise ValueError(f"the bridge prefix must be 1-3 lowercase letters: {prefix!r}")
    return prefix


WORKSPACE_HOME = "/home/researcher"
DATA_MOUNT = "/data"
IMPORTS_MOUNT = "/imports"  # approved imports of the project (sde_spawner.imports), read-only
UID = GID = 1000  # the researcher's account in images/notebook
WORKSPACE_UID = f"{UID}:{GID}"
# The embedded DNS server of user-defined networks forwards names it does not know to the
# container's upstream servers. A workspace gets an upstream that can never answer: the
# unspecified address, i.e. its own (empty) loopback, so no query leaves the container.
SINKHOLE_DNS = "0.0.0.0"  # noqa: S104 - an address nothing answers on, not a bind
SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")

_SAFE = set(string.ascii_lowercase + string.digits + "-")


def escape(text: str) -> str:
    """Docker-safe, collision-free form of an arbitrary name (like escapism: '_' + hex).

    The output never contains '__', which is what joins person and project in names.
    """
    out = []
    for ch in text:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.append("".join(f"_{b:02x}" for b in ch.encode()))
    return "".join(out)


def _short(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - 11]}-{digest}"


@dataclass(frozen=True)
class WorkspaceNames:
    container: str
    network: str
    bridge: str
    home_volume: str


def workspace_names(
    username: str, project: str, prefix: str = "sde", bridge_prefix: str = BRIDGE_PREFIX
) -> WorkspaceNames:
    """Names of every Docker object of one person's workspace on one project."""
    base = _short(f"{prefix}-{escape(username)}__{escape(project)}", 100)
    digest = hashlib.sha256(f"{prefix}/{base}".encode()).hexdigest()[:12]
    bridge = check_bridge_prefix(bridge_prefix) + digest
    return WorkspaceNames(
        container=base,
        network=f"{base}-net",
        bridge=bridge,
        home_volume=f"{base}-home",
    )


def labels(username: str, project: str, prefix: str = "sde") -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}.managed-by": prefix,
        f"{LABEL_PREFIX}.user": username,
        f"{LABEL_PREFIX}.project": project,
    }


def network_spec(
    names: WorkspaceNames, object_labels: dict[str, str], subnet: str | None = None
) -> dict:
    """A network of the workspace's own: internal (no forwarding out), no inter-container
    traffic, on a host bridge whose name the host firewall matches. ``subnet``: its address
    range (:func:`pick_subnet`); None leaves the choice to Docker's default address pools."""
    spec = {
        "name": names.network,
        "driver": "bridge",
        "internal": True,
        "check_duplicate": True,
        "labels": dict(object_labels),
        "options": {
            "com.docker.network.bridge.name": names.bridge,
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.enable_ip_masquerade": "false",
        },
    }
    if subnet:
        # The gateway given too: Docker reports it in the network's IPAM config only then
        # (workspaces reach the hub through it).
        gateway = str(next(ipaddress.ip_network(subnet).hosts()))
        spec["ipam"] = {"Driver": "default", "Config": [{"Subnet": subnet, "Gateway": gateway}]}
    return spec


def network_subnets(networks: list[dict]) -> list[str]:
    """The IPv4/IPv6 subnets of Docker networks as ``GET /networks`` lists them."""
    return [
        cfg["Subnet"]
        for net in networks
        for cfg in ((net.get("IPAM") or {}).get("Config") or [])
        if cfg.get("Subnet")
    ]


def pick_subnet(pool: str, prefix: int, taken: list[str], key: str) -> str | None:
    """A /``prefix`` subnet of ``pool`` that overlaps none of ``taken``, or None when the pool
    is full. The search starts at a place derived from ``key`` (the network name), so that
    hubs sharing an engine and pool rarely try the same subnet at once.

    Why: Docker's default address pools hold about 30 bridge networks (172.17-31.0.0/16 and
    192.168.0.0/16 in /20s), and every workspace has a network of its own, so the 31st
    concurrent workspace would fail with "could not find an available, non-overlapping IPv4
    address pool". A workspace network holds the gateway and one container: a /28 is plenty.
    """
    net = ipaddress.ip_network(pool)
    if not net.prefixlen <= prefix <= net.max_prefixlen - 2:
        raise ValueError(f"cannot carve /{prefix} subnets out of {pool}")
    busy = []
    for t in taken:
        with contextlib.suppress(ValueError):
            other = ipaddress.ip_network(t, strict=False)
            if other.version == net.version and other.overlaps(net):
                busy.append(other)
    count = 1 << (prefix - net.prefixlen)
    start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count
    size = 1 << (net.max_prefixlen - prefix)
    base = int(net.network_address)
    for i in range(count):
        candidate = ipaddress.ip_network((base + ((start + i) % count) * size, prefix))
        if not any(candidate.overlaps(b) for b in busy):
            return str(candidate)
    return None


def volume_spec(names: WorkspaceNames, object_labels: dict[str, str]) -> dict:
    return {"name": names.home_volume, "driver": "local", "labels": dict(object_labels)}


@dataclass(frozen=True)
class Limits:
    mem_limit: str = "2g"
    cpu_limit: float = 1.0
    pids_limit: int = 256
    tmp_size: str = "256m"


@dataclass(frozen=True)
class Mount:
    """One filesystem a workspace sees, engine-neutral (Docker mount or pod volume)."""

    target: str
    source: str  # Docker: volume name or host path; Kubernetes: claim name
    kind: str  # "home" (the person's writable home), "data" (the extract) or "imports"
    read_only: bool


def workspace_mounts(home: str, data: str, imports: str | None = None) -> tuple[Mount, ...]:
    """The only filesystems of a locked room besides its tmpfs: a writable home, the
    read-only minimum-dataset extract at ``/data`` and, where given, the project's approved
    imports read-only at ``/imports``."""
    mounts = (
        Mount(WORKSPACE_HOME, home, "home", read_only=False),
        Mount(DATA_MOUNT, data, "data", read_only=True),
    )
    if imports is not None:
        mounts += (Mount(IMPORTS_MOUNT, imports, "imports", read_only=True),)
    return mounts


NO_IPV6_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
}
#: Docker (since 20.10) lets every group of a container open ICMP "ping" sockets without
#: CAP_NET_RAW (``ping_group_range 0 2147483647``); the empty range "1 0" takes that back, so
#: a workspace opens no ICMP socket at all (tests/security/test_room_limits.py).
NO_PING_SYSCTLS = {"net.ipv4.ping_group_range": "1 0"}


def container_spec(
    *,
    names: WorkspaceNames,
    image: str,
    command: list[str],
    env: dict[str, str],
    extract_dir: str,
    imports_dir: str,
    limits: Limits,
    object_labels: dict[str, str],
    port: int = 8888,
) -> dict:
    """docker-py ``create_container`` kwargs of a locked-room workspace.

    ``host_config`` holds ``create_host_config`` kwargs (the spawner converts it).
    """
    return {
        "image": image,
        "name": names.container,
        "command": list(command),
        "environment": dict(env),
        "user": WORKSPACE_UID,
        "working_dir": WORKSPACE_HOME,
        "hostname": "workspace",
        "labels": dict(object_labels),
        "ports": {f"{port}/tcp": None},
        "host_config": {
            "network_mode": names.network,
            "dns": [SINKHOLE_DNS],
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_size},mode=1777"},  # noqa: S108
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            # No IPv6 in the room: a link-local address would reach every host service bound
            # to [::] past the IPv4 chain (the host's ip6tables chain rejects it as well).
            # No ICMP sockets either: cap_drop takes raw sockets, the sysctl ping sockets.
            "sysctls": {**NO_IPV6_SYSCTLS, **NO_PING_SYSCTLS},
            "privileged": False,
            "ipc_mode": "private",
            "pids_limit": limits.pids_limit,
            "mem_limit": limits.mem_limit,
            "memswap_limit": limits.mem_limit,
            "nano_cpus": int(limits.cpu_limit * 1e9),
            "mounts": [
                {
                    "Target": m.target,
                    "Source": m.source,
                    "Type": "volume" if m.kind == "home" else "bind",
                    "ReadOnly": m.read_only,
                }
                for m in workspace_mounts(names.home_volume, extract_dir, imports_dir)
            ],
            "auto_remove": False,
        },
    }
