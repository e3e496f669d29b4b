"""SDESpawner: a DockerSpawner that only opens locked rooms for eligible people.

Start-up, in order (each step is a progress event and, when it fails, one audit event and
one readable reason on the hub's page):

1. *eligibility* — the registry says person + project + agreement + grants are in order
   (:func:`sde_spawner.policy.decide`); ``user_options`` are validated here, hub side, so the
   REST API cannot choose another project, image or mount;
2. *extract* — the member's minimum dataset is built read-only on the host;

   (steps 1 and 2, the progress events and the registry rows are
   :class:`sde_spawner.rooms.LockedRoomMixin`, shared with the Kubernetes spawner)
3. *network* — a Docker ``internal`` network of the workspace's own, behind the host firewall;
4. *container* — the hardened spec from :func:`sde_spawner.containers.container_spec`.

Whatever a failed start created (network, new home volume) is removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlparse

from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from jupyterhub.utils import maybe_future
from traitlets import Bool, Float, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from sde_spawner import firewall, reconcile
from sde_spawner.checking.storage import BlobError
from sde_spawner.containers import (
    Limits,
    WorkspaceNames,
    container_spec,
    labels,
    network_spec,
    network_subnets,
    pick_subnet,
    volume_spec,
    workspace_names,
)
from sde_spawner.imports.materialise import prepare_imports
from sde_spawner.registry import ops
from sde_spawner.rooms import (  # noqa: F401 - re-exported: the names' old home
    SDC_SETTINGS,
    LockedRoomMixin,
    SpawnRefused,
    _sessionmaker,
    project_clipboard_env,
    project_sdc_env,
    render_project_form,
)
from sde_spawner.start_queue import StartQueue


class DockerRoomDefaults(LoggingConfigurable):
    """What the Docker-engine spawners of a locked room (SDESpawner, and SDESwarmSpawner in
    sde_spawner.swarm_spawner) share: limits, the workspace image and command, and a pool of
    threads for Docker calls so concurrent starts do not queue behind one another."""

    pids_limit = Integer(256, help="Maximum number of processes in a workspace.").tag(config=True)
    tmp_size = Unicode("256m", help="Size of the tmpfs mounted at /tmp.").tag(config=True)
    docker_threads = Integer(
        8,
        help="Threads for Docker and database calls (DockerSpawner's default is one, which "
        "serialises concurrent starts).",
    ).tag(config=True)

    @default("image")
    def _default_image(self):
        return "sde-notebook:latest"

    @default("prefix")
    def _default_prefix(self):
        return "sde"

    @default("mem_limit")
    def _default_mem_limit(self):
        return "2G"

    @default("cpu_limit")
    def _default_cpu_limit(self):
        return 1.0

    @default("use_internal_ip")
    def _default_use_internal_ip(self):
        return True

    @default("cmd")
    def _default_cmd(self):
        return ["jupyterhub-singleuser"]

    _executors: dict = {}

    @property
    def executor(self):
        key = (self.__class__, self.docker_threads)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(self.docker_threads)
        return self._executors[key]


class SDESpawner(LockedRoomMixin, DockerRoomDefaults, DockerSpawner):
    """Locked-room workspaces: one per (person, project), on their own internal network."""

    extracts_host_dir = Unicode(
        "",
        help="The same directory as the Docker engine sees it, when the hub runs in a "
        "container. Empty: same as extracts_dir.",
    ).tag(config=True)

    imports_dir = Unicode(
        "",
        help="Directory (as the hub sees it) of imports: the `sde` service's import blob store "
        "(blobs/) and the read-only layouts mounted at /imports (mounts/). Empty: imports/ "
        "beside extracts_dir (SDE_STATE_DIR/imports).",
    ).tag(config=True)

    imports_host_dir = Unicode(
        "",
        help="The same directory as the Docker engine sees it, when the hub runs in a "
        "container. Empty: same as imports_dir.",
    ).tag(config=True)

    bridge_prefix = Unicode(
        help="Name prefix of the workspaces' host bridges (1-3 lowercase letters), which the "
        "host firewall chain matches; defaults to the firewall's (SDE_BRIDGE_PREFIX, sde)."
    ).tag(config=True)

    @default("bridge_prefix")
    def _default_bridge_prefix(self):
        return firewall.BRIDGE_PREFIX

    manage_host_firewall = Bool(
        True,
        help="Install the host iptables chain that lets workspace networks reach only the hub "
        "API. Turn off only when the host firewall is managed elsewhere "
        "(`sde-admin firewall apply`). Spawns fail closed when it cannot be installed.",
    ).tag(config=True)

    firewall_extra_ports = List(
        Integer(),
        help="Host TCP ports, besides the hub API port, that workspaces may open connections to.",
    ).tag(config=True)

    hub_via_gateway = Bool(
        True,
        help="The hub runs on the host: workspaces reach it through their network's gateway "
        "address (hub_connect_url is set per spawn).",
    ).tag(config=True)

    hub_container = Unicode(
        "",
        help="Name of the hub's container when the hub runs in Docker: it is attached to every "
        "workspace network and workspaces reach it by that name.",
    ).tag(config=True)

    service_port = Integer(
        0,
        help="Port of the hub-side `sde` service (export requests, audit ingestion) on the "
        "host. Workspaces get SDE_SERVICE_URL and the host firewall admits this port. 0: none.",
    ).tag(config=True)

    drop_default_route = Bool(
        True,
        help="Delete the default route inside each workspace's network namespace after start "
        "(the hub must run on the Docker host as root). Internal networks already stop "
        "forwarding; with no default route every off-network address is unreachable at once.",
    ).tag(config=True)

    network_pool = Unicode(
        "",
        help="Address range (CIDR) the workspace networks' subnets are taken from, one "
        "/network_prefix each. Empty: Docker's default address pools, which hold only about 30 "
        "bridge networks (the 31st concurrent workspace fails). Pick a private range that no "
        "network of the host uses.",
    ).tag(config=True)

    network_prefix = Integer(
        28, help="Prefix length of each workspace network taken from network_pool."
    ).tag(config=True)

    listen_poll_interval = Float(
        0.05, help="Seconds between checks that a starting workspace accepts connections."
    ).tag(config=True)

    reconcile_retry_seconds = Float(
        2.0,
        help="Seconds between attempts to remove what a dead workspace left while the "
        "Docker engine does not answer (it is restarting).",
    ).tag(config=True)

    reconcile_retry_for = Float(
        3600.0,
        help="Give up retrying after this many seconds (the next hub start's "
        "reconciliation removes what is left: sde_spawner.reconcile).",
    ).tag(config=True)

    start_concurrency = Integer(
        help="How many workspace starts of this hub do their costly part at once (the "
        "extract, the network and container, until JupyterLab listens); later ones wait "
        "their turn, first come first served, and their progress page says how many are "
        "ahead. A crowd of starts shares the host's CPU: all running at once, they all "
        "become ready at the end, together; taken in turns, the early ones are ready early "
        "and the total time is about the same. 0: no limit. Default: the number of CPUs "
        "the hub may use, at least 2 (python -m benchmarks.spawn --concurrent 20; README, "
        "Start queue).",
    ).tag(config=True)

    @default("start_concurrency")
    def _default_start_concurrency(self):
        return default_start_concurrency()

    @default("pull_policy")
    def _default_pull_policy(self):
        return "never"

    @default("remove")
    def _default_remove(self):
        return True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.network_id = ""
        self._ended = ""  # how the poll last found the workspace ended (its container state)
        self._slot_queue: StartQueue | None = None

    # ---- the start queue (one per hub process and limit) ------------------------------
    _start_queues: dict[int, StartQueue] = {}

    @property
    def start_queue(self) -> StartQueue:
        limit = self.start_concurrency
        if limit not in self._start_queues:
            self._start_queues[limit] = StartQueue(limit)
        return self._start_queues[limit]

    async def _take_start_slot(self) -> None:
        queue = self.start_queue

        def ahead(n: int) -> None:
            message = (
                f"Waiting for a start slot: {n} start(s) ahead of yours"
                if n
                else "Waiting for a start slot: yours is next"
            )
            self.log.info("%s/%s: %s", self.user.name, self.name, message)
            self._event(25, message)

        await queue.acquire(ahead)
        self._slot_queue = queue

    def _release_start_slot(self) -> None:
        queue, self._slot_queue = self._slot_queue, None
        if queue is not None:
            queue.release()

    # ---- state (the project is LockedRoomMixin's) -------------------------------------
    def load_state(self, state):
        super().load_state(state)
        self.network_id = state.get("network_id", "")
        if self.project:
            self.network_name = self.names.network

    def get_state(self):
        state = super().get_state()
        if self.network_id:
            state["network_id"] = self.network_id
        return state

    def clear_state(self):
        super().clear_state()
        self.network_id = ""

    @property
    def names(self):
        return workspace_names(self.user.name, self.project, self.prefix, self.bridge_prefix)

    @property
    def workspace_object(self) -> str:
        return self.object_name

    # ---- start / stop --------------------------------------------------------------
    async def _prepare_start(self):
        """A start's first steps on a Docker engine (this path and Swarm's): admit the person,
        name the workspace's objects, locate the extract version, lay out the imports.
        Returns the admission (``found``: the grants)."""
        found, built = await self._admit()
        names = self.names
        self.network_name = names.network
        self.object_name = names.container
        version = os.path.relpath(built.path, self.extracts_dir)
        self._extract_host_dir = os.path.join(self.extracts_host_dir or self.extracts_dir, version)
        self._event(40, "Preparing your approved imports")
        await self._prepare_imports(self.project)
        self._event(50, "Isolating your workspace network")
        return found

    async def _start(self):
        found = await self._prepare_start()
        project = self.project
        created_network = created_volume = False
        try:
            created_network = await self._ensure_network()
            created_volume = await self._ensure_volume()
            self._event(70, "Starting your workspace")
            # The engine's start: super().start() is the mixin's, which called _start.
            ip_port = await DockerSpawner.start(self)
        except BaseException as exc:
            await self._cleanup_failed(created_network, created_volume)
            if not isinstance(exc, SpawnRefused):
                await self.record(
                    "spawn.failed", outcome="error", reason=f"{type(exc).__name__}: {exc}"[:500]
                )
            self.project = ""
            raise
        if self.drop_default_route:
            try:
                await self._drop_default_route()
            except Exception as exc:
                await self.stop(now=True)
                await self.refuse(
                    f"the workspace network could not be sealed ({exc})",
                    project=project,
                    status=500,
                )
        self._event(85, "Waiting for JupyterLab")
        await self._wait_listening(*ip_port)
        self._event(90, "Workspace started; connecting")
        await self._in_thread(self._record_started, [g.dataset for g in found.grants], ip_port[0])
        kill_at_test_point("started-unsaved")  # JupyterHub saves the state once this returns
        return ip_port

    async def _wait_listening(self, ip: str, port: int) -> None:
        """Return once the workspace accepts TCP connections, so the hub's first readiness
        check succeeds instead of backing off (0.2, 0.4, 0.8 s ...). Gives up quietly after
        ``http_timeout`` and leaves the rest to the hub; stops early if the container died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.http_timeout
        next_poll = loop.time() + 1.0
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1.0)
            except (OSError, TimeoutError):
                if loop.time() >= next_poll:
                    next_poll = loop.time() + 1.0
                    if await self.poll() is not None:
                        return
                await asyncio.sleep(self.listen_poll_interval)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _drop_default_route(self) -> None:
        info = await self.docker("inspect_container", self.object_id)
        cmd = drop_default_route_command(info["State"]["Pid"])
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0 and b"No such process" not in err:
            raise RuntimeError(err.decode(errors="replace").strip() or f"exit {proc.returncode}")

    async def _ensure_network(self) -> bool:
        """Create the workspace network if missing; True when this call created it."""
        names = self.names
        if self.manage_host_firewall:
            try:
                await self._in_thread(firewall.apply, self._firewall_ports())
            except firewall.FirewallError as exc:
                await self.refuse(f"the host firewall could not be set up ({exc})", status=500)
        created = False
        try:
            net = await self.docker("inspect_network", names.network)
        except NotFound:
            net = await self._create_network()
            created = True
        self.network_id = net["Id"]
        if self.hub_container:
            containers = net.get("Containers") or {}
            if not any(c.get("Name") == self.hub_container for c in containers.values()):
                try:
                    await self.docker("connect_container_to_network", self.hub_container, net["Id"])
                except APIError as exc:
                    if exc.status_code != 403 and "already exists" not in str(exc):
                        raise
            self.hub_connect_url = f"http://{self.hub_container}:{self._hub_port()}"
        elif self.hub_via_gateway:
            gateway = net["IPAM"]["Config"][0]["Gateway"].split("/")[0]
            self.hub_connect_url = f"http://{gateway}:{self._hub_port()}"
        return created

    _subnets_creating: set[str] = set()  # picked by this hub, network not created yet
    _subnet_attempts = 8

    async def _create_network(self) -> dict:
        """Create the workspace network, on a free subnet of ``network_pool`` when one is set.
        Concurrent spawns of this hub never pick the same subnet (the pick itself does not
        await); one that another Docker client took meanwhile makes Docker answer "overlaps",
        and the next free one is tried."""
        names = self.names
        object_labels = labels(self.user.name, self.project, self.prefix)
        if not self.network_pool:
            net = await self.docker("create_network", **network_spec(names, object_labels))
            return await self.docker("inspect_network", net["Id"])
        refused = []
        for _ in range(self._subnet_attempts):
            taken = network_subnets(await self.docker("networks"))
            taken += [*self._subnets_creating, *refused]
            subnet = pick_subnet(self.network_pool, self.network_prefix, taken, names.network)
            if subnet is None:
                break
            self._subnets_creating.add(subnet)
            try:
                net = await self.docker(
                    "create_network", **network_spec(names, object_labels, subnet)
                )
                return await self.docker("inspect_network", net["Id"])
            except APIError as exc:
                if "overlap" not in str(exc).lower():
                    raise
                refused.append(subnet)
            finally:
                self._subnets_creating.discard(subnet)
        await self.refuse(
            f"no free /{self.network_prefix} subnet in {self.network_pool} for the workspace "
            "network (SDESpawner.network_pool)",
            status=503,
        )

    async def _ensure_volume(self) -> bool:
        names = self.names
        try:
            await self.docker("inspect_volume", names.home_volume)
            return False
        except NotFound:
            await self.docker(
                "create_volume",
                **volume_spec(names, labels(self.user.name, self.project, self.prefix)),
            )
            return True

    async def _cleanup_failed(self, created_network: bool, created_volume: bool) -> None:
        names = self.names
        if self.object_id:
            try:
                await self.docker("remove_container", self.object_id, force=True)
            except APIError:
                self.log.exception("could not remove failed container %s", self.object_id)
            self.object_id = ""
        if created_network:
            await self._remove_network()
        if created_volume:
            try:
                await self.docker("remove_volume", names.home_volume)
            except APIError:
                self.log.exception("could not remove volume %s", names.home_volume)

    async def _remove_network(self) -> None:
        names = self.names
        try:
            if self.hub_container:
                with contextlib.suppress(APIError):
                    await self.docker(
                        "disconnect_container_from_network", self.hub_container, names.network
                    )
            await self.docker("remove_network", names.network)
        except NotFound:
            pass
        except APIError:
            self.log.exception("could not remove network %s", names.network)
        self.network_id = ""

    def _hub_port(self) -> int:
        return urlparse(self.hub.api_url).port or 80

    def _firewall_ports(self) -> list[int]:
        extra = [self.service_port] if self.service_port else []
        return [self._hub_port(), *extra, *self.firewall_extra_ports]

    def _imports_root(self) -> str:
        return self.imports_dir or os.path.join(
            os.path.dirname(os.path.normpath(self.extracts_dir)), "imports"
        )

    async def _prepare_imports(self, project: str) -> None:
        """Lay the project's approved imports out read-only for /imports (new approvals
        appear at the next start; a running workspace's mount never changes)."""
        root = self._imports_root()
        try:
            path, files = await self._in_thread(
                prepare_imports, _sessionmaker(self.registry_url), root, project
            )
        except (BlobError, OSError) as exc:
            self.project = ""
            await self.refuse(
                f"the project's approved imports could not be prepared ({exc})",
                project=project,
                status=500,
            )
        self._imports_host_dir = os.path.join(
            self.imports_host_dir or root, os.path.relpath(path, root)
        )
        await self.record(
            "import.mounted",
            project=project,
            details={"layout": path.name, "files": [f.relpath for f in files][:200]},
        )

    def get_env(self):
        service_url = ""
        if self.service_port and self.hub_connect_url:
            host = urlparse(self.hub_connect_url).hostname
            service_url = f"http://{host}:{self.service_port}{self.service_prefix}"
        return self._sde_env(super().get_env(), service_url)

    async def create_object(self):
        spec = container_spec(
            names=self.names,
            image=self.image,
            command=await self.get_command(),
            env=self.get_env(),
            extract_dir=self._extract_host_dir,
            imports_dir=self._imports_host_dir,
            limits=Limits(
                mem_limit=str(self._project_facts.mem_limit or self.mem_limit),
                cpu_limit=float(self._project_facts.cpu_limit or self.cpu_limit),
                pids_limit=self.pids_limit,
                tmp_size=self.tmp_size,
            ),
            object_labels=labels(self.user.name, self.project, self.prefix),
            port=self.port,
        )
        spec["host_config"] = self.client.create_host_config(**spec["host_config"])
        return await self.docker("create_container", **spec)

    async def check_allowed(self, image):
        raise SpawnRefused("the workspace image is fixed by the administrator")

    async def pull_image(self, image):
        try:
            await self.docker("inspect_image", image)
        except NotFound:
            await self.refuse(
                f"the workspace image {image} is not installed on this host "
                "(an administrator must build it: make images)",
                status=500,
            )

    async def stop(self, now=False):
        project = self.project
        await super().stop(now=now)
        if project:
            self.project = project
            await self._remove_network()
            await self._in_thread(self._record_stopped, project)
        self.project = ""

    async def poll(self):
        status = await super().poll()
        if status is not None:
            self._ended = str(status)
        return status

    async def run_post_stop_hook(self):
        """After every end of a server. One that ended without :meth:`stop` (its container
        died: an engine restart, an out-of-memory kill; JupyterHub's poll found it so and
        does not call ``stop()`` for a server already dead), or whose ``stop()`` failed (the
        engine went away under it), would leave its container, network and open registry
        row behind, unknown to the hub once it clears the state. They are removed here,
        each audited ``hub.reconciled``; while the engine does not answer (it is
        restarting), again every ``reconcile_retry_seconds`` until it does."""
        await maybe_future(super().run_post_stop_hook())
        if self.project:
            ended = Ended(
                project=self.project,
                names=self.names,
                container_id=self.object_id,
                network_id=self.network_id,
                before=self._now(),
                reason=f"the workspace ended without the hub stopping it ({self._ended or 'gone'})",
            )
            self.project = ""
            if await self._in_thread(self._close_row, ended):
                await self._reconciled(ended, "row", ended.names.container)
            try:
                await self._remove_ended(ended)
            except Exception as exc:  # the engine is away: try again until it answers
                self.log.warning(
                    "%s: engine unreachable (%s); retrying", ended.names.container, exc
                )
                task = asyncio.ensure_future(self._retry_remove_ended(ended))
                self._retries.add(task)
                task.add_done_callback(self._retries.discard)

    _retries: set = set()  # the pending retries' tasks (held, so they are not collected)

    async def _retry_remove_ended(self, ended: Ended) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconcile_retry_for
        while loop.time() < deadline:
            await asyncio.sleep(self.reconcile_retry_seconds)
            try:
                await self._remove_ended(ended)
                return
            except Exception as exc:
                self.log.debug("%s: still unreachable (%s)", ended.names.container, exc)
        self.log.error("%s: left for the next hub start to remove", ended.names.container)

    async def _remove_ended(self, ended: Ended) -> None:
        """Remove the dead workspace's container and network: only the very objects it had
        (by id), and only while nothing runs in them (a newer start reuses the names)."""
        names = ended.names
        try:
            info = await self.docker("inspect_container", names.container)
        except NotFound:
            info = None
        if (
            info is not None
            and info["Id"] == (ended.container_id or info["Id"])
            and not info["State"]["Running"]
        ):
            with contextlib.suppress(NotFound):
                await self.docker("remove_container", info["Id"], force=True)
                await self._reconciled(ended, "container", names.container)
        try:
            net = await self.docker("inspect_network", names.network)
        except NotFound:
            return
        if net["Id"] == (ended.network_id or net["Id"]) and not net.get("Containers"):
            with contextlib.suppress(NotFound):
                await self.docker("remove_network", net["Id"])
                await self._reconciled(ended, "network", names.network)

    async def _reconciled(self, ended: Ended, kind: str, name: str) -> None:
        obj = {"name": name, "user": self.user.name, "project": ended.project}
        await self._in_thread(
            reconcile.record_removed, _sessionmaker(self.registry_url), obj, kind, ended.reason
        )

    def _close_row(self, ended: Ended) -> bool:
        """Close the open registry row of this server's dead start; True if one was open."""
        with _sessionmaker(self.registry_url)() as session, session.begin():
            outcome = ops.close_workspace(
                session, self.user.name, username=self.user.name, server_name=self.name,
                project=ended.project, now=self._now(), started_before=ended.before,
            )  # fmt: skip
        return outcome.status == "stopped"


@dataclass(frozen=True)
class Ended:
    """A workspace that ended without the hub stopping it: what it had, to remove."""

    project: str
    names: WorkspaceNames
    container_id: str
    network_id: str
    before: datetime  # the end was seen then: a row or object of a later start is kept
    reason: str


def default_start_concurrency() -> int:
    """The CPUs this process may run on (its affinity), at least 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(2, cpus)


#: Test hook, inert unless set: the name of a point in a start at which the hub process
#: SIGKILLs itself (tests/docker/test_hub_faults.py kills it at "started-unsaved": the
#: container running, its network and registry row made, JupyterHub's state not yet saved).
TEST_KILL_ENV = "SDE_TEST_KILL_HUB_AT"


def kill_at_test_point(point: str) -> None:
    """SIGKILL this process when ``SDE_TEST_KILL_HUB_AT`` names ``point`` (tests only)."""
    if os.environ.get(TEST_KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def drop_default_route_command(pid: int) -> list[str]:
    """Delete the default route in the network namespace of process ``pid``."""
    return ["nsenter", f"--net=/proc/{int(pid)}/ns/net", "ip", "route", "del", "default"]
