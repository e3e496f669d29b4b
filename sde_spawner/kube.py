"""Pure builders for Kubernetes: registry facts and settings -> pod fields and NetworkPolicy.

The Kubernetes counterpart of :mod:`sde_spawner.containers` (and built from the same facts:
the account, the mount list, the limits), with no I/O and no import of kubespawner, so it is
tested as whole dicts. :class:`sde_spawner.kube_spawner.SDEKubeSpawner` sets KubeSpawner's
traits from these and creates the policy.

A locked-room pod: non-root, every capability dropped, no privilege escalation, read-only
root filesystem, seccomp ``RuntimeDefault``, no service-account token, no service links, no
host namespaces or host paths, the extract mounted read-only from a claim, CPU and memory
limits, and no DNS (``dnsPolicy: None`` with a nameserver nothing answers on; the names it
needs, the hub's, come as ``hostAliases``). Its NetworkPolicy selects that one pod and allows
egress only to the hub pod's API and `sde` service ports — nothing else, DNS included — and
ingress only from the proxy and the hub to the server port.

:func:`check_pod_hardening` and :func:`check_network_policy` list what a manifest lacks; the
spawner refuses a start whose manifests have any finding, and the tests show that removing
one control is found.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sde_spawner.containers import (
    DATA_MOUNT,
    GID,
    LABEL_PREFIX,
    SINKHOLE_DNS,
    UID,
    Limits,
    workspace_mounts,
)

#: Label that ties a workspace's pod to its NetworkPolicy (a DNS-1123 value of its own).
WORKSPACE_LABEL = f"{LABEL_PREFIX}.workspace"
#: The hub's Service name in Zero to JupyterHub; workspaces reach it (and the `sde` service
#: running beside the hub) by this name, resolved through hostAliases.
HUB_HOST = "hub"
TMP_VOLUME = "tmp"
HOME_VOLUME = "home"
DATA_VOLUME = "data"

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def _dns_label(text: str, limit: int) -> str:
    out = _NOT_LABEL.sub("-", text.lower()).strip("-")[:limit].strip("-")
    return out or "x"


@dataclass(frozen=True)
class KubeNames:
    """Names of one person's workspace objects on one project (all DNS-1123 labels)."""

    pod: str
    home_claim: str
    network_policy: str
    workspace_id: str


def kube_names(username: str, project: str, prefix: str = "sde") -> KubeNames:
    """Readable, bounded (<= 63 characters) and collision-free: the readable part is lossy,
    the hash of the exact (person, project) pair is not."""
    digest = hashlib.sha256(f"{prefix}\0{username}\0{project}".encode()).hexdigest()[:10]
    base = f"{_dns_label(prefix, 8)}-{_dns_label(username, 20)}-{_dns_label(project, 20)}"
    pod = f"{base}-{digest}"
    return KubeNames(
        pod=pod,
        home_claim=f"{pod}-home",
        network_policy=f"{pod}-egress",
        workspace_id=digest,
    )


def kube_labels(names: KubeNames, project: str, prefix: str = "sde") -> dict[str, str]:
    """Labels of the workspace's objects; values are label-safe (the person's name, which
    may not be, is KubeSpawner's ``hub.jupyter.org/username`` annotation)."""
    return {
        f"{LABEL_PREFIX}.managed-by": _dns_label(prefix, 63),
        f"{LABEL_PREFIX}.project": project,
        WORKSPACE_LABEL: names.workspace_id,
    }


def container_security_context() -> dict:
    """The workspace container's ``securityContext``."""
    return {
        "runAsUser": UID,
        "runAsGroup": GID,
        "runAsNonRoot": True,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict:
    """The pod's ``securityContext`` (``fsGroup`` so the home claim is the researcher's)."""
    return {
        "runAsUser": UID,
        "runAsGroup": GID,
        "runAsNonRoot": True,
        "fsGroup": GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_volumes(names: KubeNames, *, extracts_claim: str, limits: Limits) -> list[dict]:
    """Volumes: the home claim, the extracts claim (read-only) and a memory-backed /tmp."""
    out = []
    for m in workspace_mounts(names.home_claim, extracts_claim):
        claim = {"claimName": m.source}
        if m.read_only:
            claim["readOnly"] = True
        out.append({"name": _volume_name(m.kind), "persistentVolumeClaim": claim})
    out.append({"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": limits.tmp_size}})
    return out


def pod_volume_mounts(names: KubeNames, *, extract_subpath: str) -> list[dict]:
    """Mounts: home read-write, this member's extract version (a sub-path of the claim)
    read-only at /data, /tmp."""
    out = []
    for m in workspace_mounts(names.home_claim, ""):
        mount = {"name": _volume_name(m.kind), "mountPath": m.target}
        if m.kind == "data":
            mount["subPath"] = extract_subpath
        if m.read_only:
            mount["readOnly"] = True
        out.append(mount)
    out.append({"name": TMP_VOLUME, "mountPath": "/tmp"})  # noqa: S108 - the pod's own tmpfs
    return out


def _volume_name(kind: str) -> str:
    return HOME_VOLUME if kind == "home" else DATA_VOLUME


def kube_resources(limits: Limits) -> dict:
    """KubeSpawner's limit traits (``cpu_limit``, ``mem_limit`` and the guarantees): memory is
    guaranteed as well as limited (a workspace is never evicted for another's use); CPU is
    limited and a tenth of a core (at most the limit) guaranteed."""
    mem = limits.mem_limit  # "4g" from the registry, or bytes (JupyterHub's parsed trait)
    mem = mem if isinstance(mem, int) else str(mem).upper().removesuffix("B")
    return {
        "cpu_limit": float(limits.cpu_limit),
        "cpu_guarantee": min(float(limits.cpu_limit), 0.1),
        "mem_limit": mem,
        "mem_guarantee": mem,
    }


def extra_pod_config(*, hub_ip: str) -> dict:
    """Pod-level fields KubeSpawner has no trait for: no DNS, the hub's name, no service
    links (environment variables naming every Service of the namespace)."""
    return {
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": [SINKHOLE_DNS]},
        "hostAliases": [{"ip": hub_ip, "hostnames": [HUB_HOST]}],
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
    }


@dataclass(frozen=True)
class HubPeers:
    """How the hub, the proxy and the `sde` service are found in the cluster."""

    hub_labels: tuple[tuple[str, str], ...] = (("app", "jupyterhub"), ("component", "hub"))
    proxy_labels: tuple[tuple[str, str], ...] = (("app", "jupyterhub"), ("component", "proxy"))
    hub_port: int = 8081
    service_port: int = 9100  # the `sde` service runs in the hub pod (a hub-managed service)
    server_port: int = 8888


def network_policy(
    names: KubeNames, object_labels: dict[str, str], peers: HubPeers, namespace: str
) -> dict:
    """The workspace's own NetworkPolicy: deny all egress (DNS included) but the hub API and
    the `sde` service; admit only the proxy and the hub to the server port."""
    hub = {"podSelector": {"matchLabels": dict(peers.hub_labels)}}
    proxy = {"podSelector": {"matchLabels": dict(peers.proxy_labels)}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": names.network_policy,
            "namespace": namespace,
            "labels": dict(object_labels),
        },
        "spec": {
            "podSelector": {"matchLabels": {WORKSPACE_LABEL: names.workspace_id}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [proxy, hub],
                    "ports": [{"protocol": "TCP", "port": peers.server_port}],
                }
            ],
            "egress": [
                {
                    "to": [hub],
                    "ports": [
                        {"protocol": "TCP", "port": peers.hub_port},
                        {"protocol": "TCP", "port": peers.service_port},
                    ],
                }
            ],
        },
    }


# ---- checks -----------------------------------------------------------------------------
_CONTAINER_CONTROLS = {
    "runAsNonRoot": True,
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
}


def check_pod_hardening(pod: dict) -> list[str]:
    """Every locked-room control a pod manifest (API form, camelCase) lacks; [] when none.

    Checks every container and init container, the pod's own fields and its volumes.
    """
    spec = pod.get("spec") or {}
    problems = []
    psc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("pod: the service-account token is mounted")
    for field in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        if spec.get(field):
            problems.append(f"pod: {field} is on")
    if spec.get("dnsPolicy") != "None" or (spec.get("dnsConfig") or {}).get("nameservers") != [
        SINKHOLE_DNS
    ]:
        problems.append("pod: DNS is not sunk (dnsPolicy None, nameserver 0.0.0.0)")
    if spec.get("enableServiceLinks") is not False:
        problems.append("pod: service links are on")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for v in volumes.values():
        if "hostPath" in v:
            problems.append(f"volume {v.get('name')}: a host path")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if not spec.get("containers"):
        problems.append("pod: no containers")
    for c in containers:
        problems += _check_container(c, psc, volumes)
    return problems


def _check_container(c: dict, psc: dict, volumes: dict) -> list[str]:
    name = f"container {c.get('name')}"
    sc = c.get("securityContext") or {}
    problems = []
    for key, wanted in _CONTAINER_CONTROLS.items():
        value = sc.get(key, psc.get(key)) if key == "runAsNonRoot" else sc.get(key)
        if value is not wanted:
            problems.append(f"{name}: {key} is not {str(wanted).lower()}")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or (sc.get("capabilities") or {}).get(
        "add"
    ):
        problems.append(f"{name}: capabilities are not all dropped")
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccomp is not RuntimeDefault")
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    if not uid:
        problems.append(f"{name}: may run as root (runAsUser unset or 0)")
    limits = (c.get("resources") or {}).get("limits") or {}
    for resource in ("cpu", "memory"):
        if resource not in limits:
            problems.append(f"{name}: no {resource} limit")
    for m in c.get("volumeMounts") or []:
        if m.get("mountPath") == DATA_MOUNT:
            claim = (volumes.get(m.get("name")) or {}).get("persistentVolumeClaim") or {}
            if not (m.get("readOnly") and claim.get("readOnly")):
                problems.append(f"{name}: the dataset at {DATA_MOUNT} is not read-only")
    return problems


def check_network_policy(policy: dict, pod_labels: dict[str, str], peers: HubPeers) -> list[str]:
    """What keeps ``policy`` from being a locked room's: it must select the pod, govern its
    egress, and allow only the hub pod's API and `sde` service ports (so no DNS)."""
    spec = policy.get("spec") or {}
    problems = []
    selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
    if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
        problems.append("policy does not select the workspace pod")
    if "Egress" not in (spec.get("policyTypes") or []):
        problems.append("policy does not govern egress")
    if "Ingress" not in (spec.get("policyTypes") or []):
        problems.append("policy does not govern ingress")
    allowed_ports = {peers.hub_port, peers.service_port}
    hub = dict(peers.hub_labels)
    callers = [hub, dict(peers.proxy_labels)]
    for i, rule in enumerate(spec.get("ingress") or []):
        sources = rule.get("from") or []
        if not sources:
            problems.append(f"ingress rule {i}: admits every source")
        for peer in sources:
            if (
                set(peer) != {"podSelector"}
                or (peer["podSelector"] or {}).get("matchLabels") not in callers
            ):
                problems.append(f"ingress rule {i}: admits a source other than the hub and proxy")
    for i, rule in enumerate(spec.get("egress") or []):
        peers_to = rule.get("to") or []
        if not peers_to:
            problems.append(f"egress rule {i}: allows every destination")
        for peer in peers_to:
            if (
                set(peer) != {"podSelector"}
                or (peer["podSelector"] or {}).get("matchLabels") != hub
            ):
                problems.append(f"egress rule {i}: allows a destination other than the hub")
        ports = rule.get("ports") or []
        if not ports:
            problems.append(f"egress rule {i}: allows every port")
        for p in ports:
            if p.get("port") not in allowed_ports or p.get("endPort"):
                problems.append(f"egress rule {i}: allows port {p.get('port')}")
    return problems
