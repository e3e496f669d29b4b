"""SDESwarmSpawner: a dockerspawner ``SwarmSpawner`` that only opens locked rooms.

The Docker Swarm path of :class:`sde_spawner.spawner.SDESpawner`, with the same gate, extract
and registry rows (:class:`sde_spawner.rooms.LockedRoomMixin`) and the specs of
:mod:`sde_spawner.swarm`. Start-up, in order:

1. *eligibility* and 2. *extract* — as on Docker; the hub writes the extract under
   ``extracts_dir``, which must be the same path on every node labelled
   ``org.sde-tre.extracts=<extracts_store>`` (the hub's own node, or nodes sharing one
   filesystem there);
3. *network* — the workspace's own ``internal`` (and by default ``encrypted``) overlay; the
   hub's container (``hub_container``, on a manager node) is attached to it and is the only
   peer there;
4. *service* — one task, placed by constraint on a node that sees the extract, hardened by
   :func:`sde_spawner.swarm.service_spec`; the manager's stored spec is compared with what was
   sent (:func:`sde_spawner.swarm.check_service_spec`) and any lost control refuses the start.

Why a placement constraint and not a volume driver for the extract: a bind mount is resolved
on the node that runs the task, and a node label names exactly the nodes where that path is
the extract store; the engine rejects the task if the path is missing (fail closed). A volume
plugin would add a moving part on every node (and a credential to the store) for the same
read-only mount; an operator with shared storage labels every node that mounts it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlparse

from docker.errors import APIError, NotFound
from dockerspawner import SwarmSpawner
from traitlets import Bool, Float, Integer, Unicode

from sde_spawner.containers import Limits, labels, workspace_names
from sde_spawner.rooms import LockedRoomMixin, SpawnRefused
from sde_spawner.spawner import DockerRoomDefaults, SDESpawner
from sde_spawner.swarm import check_service_spec, overlay_network_spec, service_spec


class SDESwarmSpawner(LockedRoomMixin, DockerRoomDefaults, SwarmSpawner):
    """Locked-room workspaces as Swarm services, each on its own internal overlay network."""

    extracts_store = Unicode(
        "local",
        help="Value of the node label org.sde-tre.extracts on the nodes that see the extract "
        "store at extracts_dir (`docker node update --label-add org.sde-tre.extracts=local "
        "<hub node>`). Workspaces are placed only on those nodes.",
    ).tag(config=True)

    encrypt_overlay = Bool(
        True,
        help="Create workspace overlays with `--opt encrypted` (IPsec ESP between nodes). The "
        "nodes' kernels need ESP and AES-GCM; without them the engine cannot install the "
        "keys and the overlay carries nothing between nodes (it never falls back to clear).",
    ).tag(config=True)

    hub_container = Unicode(
        "",
        help="Name of the hub's container on a manager node: attached to every workspace "
        "network, the only peer a workspace has. Required.",
    ).tag(config=True)

    imports_dir = Unicode(
        "",
        help="Directory of imports as on SDESpawner (the same path on the placement nodes).",
    ).tag(config=True)

    imports_host_dir = Unicode("", help="As on SDESpawner.").tag(config=True)
    extracts_host_dir = Unicode("", help="As on SDESpawner.").tag(config=True)

    service_port = Integer(
        0, help="Port of the `sde` service on the hub's container (SDE_SERVICE_URL). 0: none."
    ).tag(config=True)
    network_removal_timeout = Float(
        60.0,
        help="Seconds a stop waits for the workspace's task to go before its overlay network "
        "can be removed (the task's stop grace period, 10 s by default, plus the node's "
        "report).",
    ).tag(config=True)

    # ---- state (the project is LockedRoomMixin's) -------------------------------------
    def load_state(self, state):
        super().load_state(state)
        if self.project:
            self.network_name = self.names.network

    @property
    def names(self):
        return workspace_names(self.user.name, self.project, self.prefix)

    @property
    def workspace_object(self) -> str:
        return self.object_name

    # The same imports layout as the Docker path (its helpers use only traits both share).
    _imports_root = SDESpawner._imports_root
    _prepare_imports = SDESpawner._prepare_imports
    _prepare_start = SDESpawner._prepare_start

    # ---- start / stop --------------------------------------------------------------
    async def _start(self):
        if not self.hub_container:
            await self.refuse("no hub_container is configured for the Swarm path", status=500)
        found = await self._prepare_start()
        created_network = False
        try:
            created_network = await self._ensure_network()
            self._event(70, "Starting your workspace")
            ip_port = await SwarmSpawner.start(self)
        except BaseException as exc:
            await self._cleanup_failed(created_network)
            if not isinstance(exc, SpawnRefused):
                await self.record(
                    "spawn.failed", outcome="error", reason=f"{type(exc).__name__}: {exc}"[:500]
                )
            self.project = ""
            raise
        self._event(90, "Workspace started; connecting")
        await self._in_thread(self._record_started, [g.dataset for g in found.grants], ip_port[0])
        return ip_port

    def room_service_spec(self, command: list[str]) -> dict:
        facts = self._project_facts
        return service_spec(
            names=self.names,
            image=self.image,
            command=command,
            env=self.get_env(),
            extract_dir=self._extract_host_dir,
            imports_dir=self._imports_host_dir,
            limits=Limits(
                mem_limit=str(facts.mem_limit or self.mem_limit),
                cpu_limit=float(facts.cpu_limit or self.cpu_limit),
                pids_limit=self.pids_limit,
                tmp_size=self.tmp_size,
            ),
            object_labels=labels(self.user.name, self.project, self.prefix),
            extracts_store=self.extracts_store,
        )

    async def create_object(self):
        spec = self.room_service_spec(await self.get_command())
        service = await self.docker("create_service", **spec)
        stored = await self.docker("inspect_service", service["ID"])
        problems = check_service_spec(stored["Spec"], spec)
        if problems:
            with contextlib.suppress(APIError):
                await self.docker("remove_service", service["ID"])
            await self.refuse(
                "the workspace service would not be locked down: " + "; ".join(problems),
                status=500,
            )
        return service

    def get_env(self):
        service_url = ""
        if self.service_port and self.hub_container:
            service_url = f"http://{self.hub_container}:{self.service_port}{self.service_prefix}"
        return self._sde_env(super().get_env(), service_url)

    async def _ensure_network(self) -> bool:
        """Create the workspace overlay if missing and attach the hub's container to it;
        True when this call created it. A network of the same name still being removed (a
        stop just before) is waited out and created anew."""
        names = self.names
        created = False
        for attempt in range(20):
            try:
                net = await self.docker("inspect_network", names.network)
            except NotFound:
                spec = overlay_network_spec(
                    names,
                    labels(self.user.name, self.project, self.prefix),
                    encrypted=self.encrypt_overlay,
                )
                net = await self.docker("create_network", **spec)
                created = True
            try:
                await self.docker("connect_container_to_network", self.hub_container, net["Id"])
                break
            except APIError as exc:
                if "already exists" in str(exc) or exc.status_code == 403:
                    break
                if "not found" not in str(exc) or attempt == 19:
                    raise
            await asyncio.sleep(0.5)
        port = urlparse(self.hub.api_url).port or 80
        self.hub_connect_url = f"http://{self.hub_container}:{port}"
        return created

    async def _cleanup_failed(self, created_network: bool) -> None:
        if self.object_id:
            with contextlib.suppress(APIError):
                await self.docker("remove_service", self.object_id)
            self.object_id = ""
        if created_network:
            await self._remove_network()

    async def _remove_network(self) -> None:
        """Detach the hub and remove the overlay. Its endpoints go only once the task's
        container has stopped (up to its stop grace period after the service is removed)."""
        names = self.names
        with contextlib.suppress(APIError):
            await self.docker(
                "disconnect_container_from_network", self.hub_container, names.network
            )
        for _ in range(int(self.network_removal_timeout / 0.5)):
            try:
                await self.docker("remove_network", names.network)
                return
            except NotFound:
                return
            except APIError as exc:
                # the manager: "network ... is in use by task ..."; a node: "active endpoints"
                if "in use" not in str(exc) and "active endpoints" not in str(exc):
                    self.log.exception("could not remove network %s", names.network)
                    return
            await asyncio.sleep(0.5)
        self.log.error("network %s still has endpoints; left in place", names.network)

    async def check_allowed(self, image):
        raise SpawnRefused("the workspace image is fixed by the administrator")

    async def stop(self, now=False):
        project = self.project
        if self.object_id:
            await super().stop(now=now)
        if project:
            self.project = project
            await self._remove_network()
            await self._in_thread(self._record_stopped, project)
        self.project = ""
