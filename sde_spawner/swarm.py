"""Pure builders of the Swarm path: registry facts -> overlay network and service specs.

The Swarm counterpart of :mod:`sde_spawner.containers` (whose names, labels, limits and
mounts it reuses). No I/O: :class:`sde_spawner.swarm_spawner.SDESwarmSpawner` hands these
dicts to the Docker API and tests compare them whole.

What a Swarm service (Engine API 1.41, Docker 20.10) can and cannot say, and what makes up
for it (``SWARM_GAPS``): the service spec has read-only root, ``CapabilityDrop``, sysctls,
DNS servers, a PIDs limit and memory/CPU limits, but no ``no-new-privileges``, IPC mode, swap
limit or ``privileged=False`` switch. Those come from the node (``dockerd --no-new-privileges
--default-ipc-mode=private``, no swap on the node) and are checked on the running task.
"""

from __future__ import annotations

from sde_spawner.containers import (
    NO_IPV6_SYSCTLS,
    NO_PING_SYSCTLS,
    SINKHOLE_DNS,
    WORKSPACE_HOME,
    WORKSPACE_UID,
    Limits,
    WorkspaceNames,
    workspace_mounts,
)

#: Node label whose value names the extract store a node sees at ``extracts_dir``.
EXTRACTS_LABEL = "org.sde-tre.extracts"

#: Controls of the Docker path a Swarm service spec cannot carry, and what stands in.
SWARM_GAPS = {
    "no-new-privileges": "node default: dockerd --no-new-privileges (checked on the task)",
    "ipc_mode=private": "node default: dockerd --default-ipc-mode=private",
    "memswap_limit": "none in the service spec: nodes run without swap",
    "drop_default_route": "not needed: an internal overlay gives no gateway (checked)",
    "host firewall chain": "not needed: no workspace traffic reaches a node's host stack",
}

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def to_bytes(size: str | int) -> int:
    """``"2g"``/``"2G"``/``"512Mi"``/``2147483648`` -> bytes (a Swarm spec takes only bytes)."""
    if isinstance(size, int):
        return size
    text = str(size).strip().lower().removesuffix("i").removesuffix("b")
    if text and text[-1] in _UNITS:
        return int(float(text[:-1]) * _UNITS[text[-1]])
    return int(text)


def overlay_network_spec(
    names: WorkspaceNames, object_labels: dict[str, str], *, encrypted: bool = True
) -> dict:
    """docker-py ``create_network`` kwargs: the workspace's own swarm-scoped overlay.

    ``internal``: no gateway and no docker_gwbridge leg, so nothing leaves it; ``attachable``
    so the hub's container joins it (the only peer); ``encrypted``: IPsec between nodes.
    """
    return {
        "name": names.network,
        "driver": "overlay",
        "scope": "swarm",
        "internal": True,
        "attachable": True,
        "check_duplicate": True,
        "labels": dict(object_labels),
        "options": {"encrypted": ""} if encrypted else {},
    }


def placement_constraints(extracts_store: str) -> list[str]:
    """Only nodes that see the extract store at ``extracts_dir`` may run a workspace."""
    return [f"node.labels.{EXTRACTS_LABEL}=={extracts_store}"]


def service_spec(
    *,
    names: WorkspaceNames,
    image: str,
    command: list[str],
    env: dict[str, str],
    extract_dir: str,
    imports_dir: str,
    limits: Limits,
    object_labels: dict[str, str],
    extracts_store: str,
) -> dict:
    """docker-py ``create_service`` kwargs of a locked-room workspace (one task, no restart).

    ``endpoint_spec`` is DNS round-robin with no published port: no routing-mesh VIP and no
    port on any node; the hub reaches the task on the workspace network.
    """
    mounts = []
    for m in workspace_mounts(names.home_volume, extract_dir, imports_dir):
        mounts.append(
            {
                "Target": m.target,
                "Source": m.source,
                "Type": "volume" if m.kind == "home" else "bind",
                "ReadOnly": m.read_only,
            }
        )
    mounts.append(
        {
            "Target": "/tmp",  # noqa: S108 - the workspace's own tmpfs
            "Type": "tmpfs",
            "TmpfsOptions": {"SizeBytes": to_bytes(limits.tmp_size), "Mode": 0o1777},
        }
    )
    return {
        "name": names.container,
        "labels": dict(object_labels),
        "task_template": {
            "ContainerSpec": {
                "Image": image,
                "Args": list(command),
                "Env": [f"{k}={v}" for k, v in env.items()],
                "User": WORKSPACE_UID,
                "Dir": WORKSPACE_HOME,
                "Hostname": "workspace",
                "Labels": dict(object_labels),
                "ReadOnly": True,
                "Mounts": mounts,
                "CapabilityDrop": ["ALL"],
                "Sysctls": {**NO_IPV6_SYSCTLS, **NO_PING_SYSCTLS},
                "DNSConfig": {"Nameservers": [SINKHOLE_DNS]},
                "Init": False,
            },
            "Resources": {
                "Limits": {
                    "MemoryBytes": to_bytes(limits.mem_limit),
                    "NanoCPUs": int(limits.cpu_limit * 1e9),
                    "Pids": limits.pids_limit,
                },
            },
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
            "Placement": {"Constraints": placement_constraints(extracts_store)},
            "Networks": [{"Target": names.network, "Aliases": ["workspace"]}],
        },
        "mode": {"Replicated": {"Replicas": 1}},
        "endpoint_spec": {"Mode": "dnsrr"},
    }


def check_service_spec(stored: dict, wanted: dict) -> list[str]:
    """What the manager's stored ``Spec`` of a service (``inspect_service``) lost of the
    locked room ``wanted`` (a :func:`service_spec`). An older manager drops fields it does not
    know (``CapabilityDrop`` before API 1.41, ``Sysctls`` before 1.40) without an error."""
    problems = []
    got_task = stored.get("TaskTemplate") or {}
    got, want = got_task.get("ContainerSpec") or {}, wanted["task_template"]["ContainerSpec"]
    for key in ("ReadOnly", "CapabilityDrop", "Sysctls", "DNSConfig", "User"):
        if got.get(key) != want[key]:
            problems.append(f"ContainerSpec.{key} is {got.get(key)!r}, not {want[key]!r}")
    if _mounts(got.get("Mounts")) != _mounts(want["Mounts"]):
        problems.append(f"ContainerSpec.Mounts are {got.get('Mounts')!r}")
    got_limits = (got_task.get("Resources") or {}).get("Limits") or {}
    for key, value in wanted["task_template"]["Resources"]["Limits"].items():
        if got_limits.get(key) != value:
            problems.append(f"Resources.Limits.{key} is {got_limits.get(key)!r}, not {value!r}")
    want_place = wanted["task_template"]["Placement"]["Constraints"]
    if (got_task.get("Placement") or {}).get("Constraints") != want_place:
        problems.append("placement constraints differ")
    if (stored.get("EndpointSpec") or {}).get("Ports"):
        problems.append("the service publishes ports")
    return problems


def _mounts(mounts) -> list[tuple]:
    return sorted(
        (m.get("Target"), m.get("Source", ""), m.get("Type"), bool(m.get("ReadOnly")))
        for m in mounts or []
    )
