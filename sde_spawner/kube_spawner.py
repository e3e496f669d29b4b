"""SDEKubeSpawner: a KubeSpawner that only opens locked rooms for eligible people.

The Kubernetes path of :class:`sde_spawner.spawner.SDESpawner`, with the same gate and the
same registry facts (:class:`sde_spawner.rooms.LockedRoomMixin`). Start-up, in order:

1. *eligibility* and 2. *extract* — as on Docker; the extract is written by the hub under
   ``extracts_dir``, which is the ``extracts_claim`` volume (shared storage the operator
   provides) mounted in the hub pod;
3. *network* — the workspace's own NetworkPolicy (:func:`sde_spawner.kube.network_policy`) is
   created *before* its pod, so the pod never runs unpoliced;
4. *pod* — KubeSpawner's own manifest (``get_pod_manifest``), its traits set from the pure
   builders of :mod:`sde_spawner.kube`, checked by :func:`sde_spawner.kube.check_pod_hardening`
   before it is sent: a finding refuses the start (audited) instead of running a weaker room.

Whatever a failed start created (the policy) is removed again; stopping removes it too.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from traitlets import Dict, Integer, Unicode, default

from sde_spawner.containers import Limits
from sde_spawner.kube import (
    HubPeers,
    check_network_policy,
    check_pod_hardening,
    container_security_context,
    extra_pod_config,
    kube_labels,
    kube_names,
    kube_resources,
    network_policy,
    pod_security_context,
    pod_volume_mounts,
    pod_volumes,
)
from sde_spawner.rooms import LockedRoomMixin, SpawnRefused

_SERIALISER = ApiClient.__new__(ApiClient)  # only sanitize_for_serialization: no pool, no I/O


def manifest_dict(obj) -> dict:
    """A kubernetes client model as the API server receives it (camelCase dict)."""
    return ApiClient.sanitize_for_serialization(_SERIALISER, obj)


class SDEKubeSpawner(LockedRoomMixin, KubeSpawner):
    """Locked-room workspaces as pods, one per (person, project), each under its own policy."""

    extracts_claim = Unicode(
        "sde-extracts",
        help="PersistentVolumeClaim holding the extracts (shared storage: ReadWriteMany or "
        "ReadOnlyMany). The hub mounts it read-write at extracts_dir; each workspace mounts "
        "its own extract version from it read-only at /data.",
    ).tag(config=True)

    hub_ip = Unicode(
        "",
        help="Address workspaces reach the hub Service at (no DNS in a workspace: the name "
        "'hub' is a host alias of it). Empty: the ClusterIP of the Service hub_service_name, "
        "read at each start.",
    ).tag(config=True)

    hub_service_name = Unicode("hub", help="Name of the hub's Service.").tag(config=True)

    hub_pod_labels = Dict(
        {"app": "jupyterhub", "component": "hub"},
        help="Labels of the hub pod (Zero to JupyterHub's): the only pod workspaces may reach.",
    ).tag(config=True)

    proxy_pod_labels = Dict(
        {"app": "jupyterhub", "component": "proxy"},
        help="Labels of the proxy pod: with the hub, the only pods that may reach a workspace.",
    ).tag(config=True)

    hub_api_port = Integer(8081, help="Port of the hub API on the hub pod.").tag(config=True)

    service_port = Integer(
        9100,
        help="Port of the `sde` service (a hub-managed service running in the hub pod, exposed "
        "on the hub Service). Workspaces get SDE_SERVICE_URL on it.",
    ).tag(config=True)

    tmp_size = Unicode("256Mi", help="Size of the memory-backed /tmp.").tag(config=True)

    object_prefix = Unicode(
        "sde", help="First part of workspace object names and the value of the managed-by label."
    ).tag(config=True)

    db_threads = Integer(8, help="Threads for registry database calls.").tag(config=True)

    # ---- defaults that make the room locked --------------------------------------------
    @default("image")
    def _default_image(self):
        return "sde-notebook:latest"

    @default("cmd")
    def _default_cmd(self):
        return ["jupyterhub-singleuser"]

    @default("uid")
    def _default_uid(self):
        return container_security_context()["runAsUser"]

    @default("gid")
    def _default_gid(self):
        return container_security_context()["runAsGroup"]

    @default("fs_gid")
    def _default_fs_gid(self):
        return pod_security_context()["fsGroup"]

    @default("allow_privilege_escalation")
    def _default_allow_privilege_escalation(self):
        return False

    @default("container_security_context")
    def _default_container_security_context(self):
        return container_security_context()

    @default("pod_security_context")
    def _default_pod_security_context(self):
        return pod_security_context()

    @default("automount_service_account_token")
    def _default_automount_service_account_token(self):
        return False

    @default("mem_limit")
    def _default_mem_limit(self):
        return "2G"

    @default("cpu_limit")
    def _default_cpu_limit(self):
        return 1.0

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self):
        return True

    @default("storage_capacity")
    def _default_storage_capacity(self):
        return "10Gi"

    # KubeSpawner names its own form defaults so; these names make ours win (a profile list
    # would let a person choose what the administrator fixes).
    @default("options_form")
    def _options_form_default(self):
        return self._render_options_form

    @default("options_from_form")
    def _options_from_form_default(self):
        return self._options_from_form

    _executors: dict = {}

    @property
    def executor(self):
        key = (self.__class__, self.db_threads)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(self.db_threads)
        return self._executors[key]

    @property
    def names(self):
        return kube_names(self.user.name, self.project, self.object_prefix)

    @property
    def room_labels(self) -> dict[str, str]:
        return kube_labels(self.names, self.project, self.object_prefix)

    @property
    def workspace_object(self) -> str:
        return self.pod_name

    @property
    def peers(self) -> HubPeers:
        return HubPeers(
            hub_labels=tuple(sorted(self.hub_pod_labels.items())),
            proxy_labels=tuple(sorted(self.proxy_pod_labels.items())),
            hub_port=self.hub_api_port,
            service_port=self.service_port,
            server_port=self.port,
        )

    # ---- the room ------------------------------------------------------------------
    def apply_room(self, *, extract_subpath: str, hub_ip: str) -> None:
        """Set KubeSpawner's per-workspace traits from the builders (no I/O).

        Called once the person is admitted, with ``self.project`` and the facts set.
        """
        names = self.names
        facts = self._project_facts
        limits = Limits(
            mem_limit=facts.mem_limit or self.mem_limit,  # "4g", or bytes
            cpu_limit=float(facts.cpu_limit or self.cpu_limit),
            tmp_size=self.tmp_size,
        )
        self.pod_name = names.pod
        self.pvc_name = names.home_claim
        self.volumes = pod_volumes(names, extracts_claim=self.extracts_claim, limits=limits)
        self.volume_mounts = pod_volume_mounts(names, extract_subpath=extract_subpath)
        self.extra_labels = {
            **self.extra_labels,
            **self.room_labels,
        }
        self.extra_pod_config = {**self.extra_pod_config, **extra_pod_config(hub_ip=hub_ip)}
        for trait, value in kube_resources(limits).items():
            setattr(self, trait, value)

    def network_policy_manifest(self) -> dict:
        return network_policy(
            self.names,
            self.room_labels,
            self.peers,
            self.namespace,
        )

    def get_env(self):
        service_url = ""
        if self.service_port:
            host = urlparse(self.hub.api_url).hostname
            service_url = f"http://{host}:{self.service_port}{self.service_prefix}"
        return self._sde_env(super().get_env(), service_url)

    async def get_pod_manifest(self):
        """KubeSpawner's manifest, refused if any locked-room control is missing."""
        pod = await super().get_pod_manifest()
        problems = check_pod_hardening(manifest_dict(pod))
        if problems:
            await self.refuse(
                "the workspace pod would not be locked down: " + "; ".join(problems),
                status=500,
            )
        return pod

    async def load_user_options(self):
        """No profiles: the only choice a person makes is the project (checked by the gate)."""

    # ---- start / stop --------------------------------------------------------------
    async def _start(self):
        found, built = await self._admit()
        project = self.project
        self._event(50, "Isolating your workspace network")
        created_policy = engine_started = False
        try:
            hub_ip = self.hub_ip or await self._hub_cluster_ip()
            version = os.path.relpath(built.path, self.extracts_dir)
            self.apply_room(extract_subpath=version, hub_ip=hub_ip)
            created_policy = await self._ensure_network_policy()
            self._event(70, "Starting your workspace")
            engine_started = True
            # The engine's start: super()._start would be ours again through the mixin.
            url = await KubeSpawner._start(self)
        except BaseException as exc:
            await self._cleanup_failed(created_policy, engine_started)
            if not isinstance(exc, SpawnRefused):
                await self.record(
                    "spawn.failed",
                    outcome="error",
                    reason=f"{type(exc).__name__}: {exc}"[:500],
                    project=project,
                )
            self.project = ""
            raise
        self._event(90, "Workspace started; connecting")
        address = urlparse(url).hostname or ""
        await self._in_thread(self._record_started, [g.dataset for g in found.grants], address)
        return url

    def start(self):
        # KubeSpawner keeps the start future for its progress; the mixin's start wraps _start.
        self._start_future = asyncio.ensure_future(LockedRoomMixin.start(self))
        return self._start_future

    async def _cleanup_failed(self, created_policy: bool, engine_started: bool) -> None:
        """Remove what a failed start created. The policy goes only once no pod can be
        running under it: if the pod cannot be confirmed gone, the policy stays (fail closed)."""
        if engine_started:
            try:
                await KubeSpawner.stop(self, now=True)
            except Exception:
                self.log.exception("could not remove the pod of a failed start %s", self.pod_name)
                return
        if created_policy:
            await self._delete_network_policy()

    async def _hub_cluster_ip(self) -> str:
        svc = await self.api.read_namespaced_service(self.hub_service_name, self.namespace)
        return svc.spec.cluster_ip

    def _networking(self):
        return shared_client("NetworkingV1Api")

    async def _ensure_network_policy(self) -> bool:
        """Create (or replace) the workspace's policy; True when this call created it."""
        body = self.network_policy_manifest()
        problems = check_network_policy(body, self.room_labels, self.peers)
        if problems:
            await self.refuse("the workspace network policy is wrong: " + "; ".join(problems))
        api = self._networking()
        name = body["metadata"]["name"]
        try:
            await api.create_namespaced_network_policy(self.namespace, body)
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
        await api.replace_namespaced_network_policy(name, self.namespace, body)
        return False

    async def _delete_network_policy(self) -> None:
        try:
            await self._networking().delete_namespaced_network_policy(
                self.names.network_policy, self.namespace
            )
        except ApiException as exc:
            if exc.status != 404:
                self.log.exception("could not delete network policy %s", self.names.network_policy)

    async def stop(self, now=False):
        project = self.project
        await super().stop(now=now)
        if project:
            await self._delete_network_policy()
            await self._in_thread(self._record_stopped, project)
        self.project = ""
