"""SDESpawner: a DockerSpawner that only opens locked rooms for eligible people.

Start-up, in order (each step is a progress event and, when it fails, one audit event and
one readable reason on the hub's page):

1. *eligibility* — the registry says person + project + agreement + grants are in order
   (:func:`sde_spawner.policy.decide`); ``user_options`` are validated here, hub side, so the
   REST API cannot choose another project, image or mount;
2. *extract* — the member's minimum dataset is built read-only on the host;
3. *network* — a Docker ``internal`` network of the workspace's own, behind the host firewall;
4. *container* — the hardened spec from :func:`sde_spawner.containers.container_spec`.

Whatever a failed start created (network, new home volume) is removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlparse

from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Bool, Float, Integer, List, Unicode, default

from sde_airlock.rules import EXPORT_SETTINGS
from sde_spawner import audit, firewall
from sde_spawner.containers import (
    SLUG_RE,
    Limits,
    container_spec,
    escape,
    labels,
    network_spec,
    volume_spec,
    workspace_names,
)
from sde_spawner.datasets.extract import ExtractError
from sde_spawner.datasets.hub import prepare_extract
from sde_spawner.db import DEFAULT_DB_URL, make_engine, make_sessionmaker
from sde_spawner.notices import notices_for, render_notices
from sde_spawner.policy import Decision
from sde_spawner.registry import ops
from sde_spawner.registry.store import Eligibility, eligibility, projects_for

_SESSIONMAKERS: dict = {}


def _sessionmaker(url: str):
    if url not in _SESSIONMAKERS:
        _SESSIONMAKERS[url] = make_sessionmaker(make_engine(url))
    return _SESSIONMAKERS[url]


class SpawnRefused(web.HTTPError):
    """A start refused for a reason the person can read (shown on the hub page)."""

    def __init__(self, reason: str, status: int = 403):
        super().__init__(status, log_message=reason)
        self.reason_text = reason
        self.jupyterhub_message = f"Workspace not started: {reason}"


#: Disclosure-control settings of the `sde` service, passed on to workspaces.
#: A project's output policy (``sde-admin apply``) -> the settings the checks read.
_POLICY_SDC = {
    "cell_threshold": "SDE_SDC_THRESHOLD",
    "dof_threshold": "SDE_SDC_DOF_THRESHOLD",
    "zeros_are_disclosive": "SDE_SDC_ZEROS_ARE_DISCLOSIVE",
    "rounding": "SDE_SDC_ROUNDING",
}


def project_sdc_env(policy: dict) -> dict[str, str]:
    """The disclosure thresholds a project's output policy sets, as ``SDE_SDC_*`` values
    (they override the deployment's for that project's workspaces)."""
    out = {}
    for key, name in _POLICY_SDC.items():
        value = policy.get(key)
        if value is None or value == "":
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def project_clipboard_env(policy: dict) -> dict[str, str]:
    """The project's copy-out rule for its workspaces' JupyterLab: ``SDE_CLIPBOARD_OUT`` is
    ``block`` unless the output policy says ``clipboard_out = "allow"`` (the UK TRE standard
    asks that the clipboard not be a way out, so blocking is the default)."""
    return {"SDE_CLIPBOARD_OUT": "allow" if policy.get("clipboard_out") == "allow" else "block"}


SDC_SETTINGS = (
    "SDE_SDC_THRESHOLD",
    "SDE_SDC_DOF_THRESHOLD",
    "SDE_SDC_ZEROS_ARE_DISCLOSIVE",
    "SDE_SDC_ROUNDING",
)


class SDESpawner(DockerSpawner):
    """Locked-room workspaces: one per (person, project), on their own internal network."""

    registry_url = Unicode(
        DEFAULT_DB_URL,
        help="SQLAlchemy URL of the registry (and audit) database.",
    ).tag(config=True)

    extracts_dir = Unicode(
        "/var/lib/sde/extracts",
        help="Directory (as the hub sees it) where minimum-dataset extracts are written.",
    ).tag(config=True)

    extracts_host_dir = Unicode(
        "",
        help="The same directory as the Docker engine sees it, when the hub runs in a "
        "container. Empty: same as extracts_dir.",
    ).tag(config=True)

    pseudonym_key_file = Unicode(
        "",
        help="Hub-side file (0600, created on first use) holding the master key of per-project "
        "pseudonyms. Never under extracts_dir. Empty: keys/pseudonym-master.key beside "
        "extracts_dir.",
    ).tag(config=True)

    pids_limit = Integer(256, help="Maximum number of processes in a workspace.").tag(config=True)
    tmp_size = Unicode("256m", help="Size of the tmpfs mounted at /tmp.").tag(config=True)

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

    service_prefix = Unicode("/services/sde/", help="URL prefix of the `sde` service.").tag(
        config=True
    )

    drop_default_route = Bool(
        True,
        help="Delete the default route inside each workspace's network namespace after start "
        "(the hub must run on the Docker host as root). Internal networks already stop "
        "forwarding; with no default route every off-network address is unreachable at once.",
    ).tag(config=True)

    docker_threads = Integer(
        8,
        help="Threads for Docker and database calls (DockerSpawner's default is one, which "
        "serialises concurrent starts).",
    ).tag(config=True)

    listen_poll_interval = Float(
        0.05, help="Seconds between checks that a starting workspace accepts connections."
    ).tag(config=True)

    progress_poll_interval = Float(0.2, help="Seconds between progress checks.").tag(config=True)

    # ---- defaults that make the room locked --------------------------------------------
    @default("image")
    def _default_image(self):
        return "sde-notebook:latest"

    @default("pull_policy")
    def _default_pull_policy(self):
        return "never"

    @default("remove")
    def _default_remove(self):
        return True

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

    @default("options_form")
    def _default_options_form(self):
        return self._render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return self._options_from_form

    _executors: dict = {}

    @property
    def executor(self):
        key = (self.__class__, self.docker_threads)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(self.docker_threads)
        return self._executors[key]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.project = ""
        # The registry's facts of the project being started (limits, output policy).
        self._project_facts = Eligibility("", "", Decision(True), ())
        self.network_id = ""
        self._events: list[dict] = []
        self._starting = False

    # ---- state ---------------------------------------------------------------------
    def load_state(self, state):
        super().load_state(state)
        self.project = state.get("project", "")
        self.network_id = state.get("network_id", "")
        if self.project:
            self.network_name = self.names.network

    def get_state(self):
        state = super().get_state()
        if self.project:
            state["project"] = self.project
        if self.network_id:
            state["network_id"] = self.network_id
        return state

    def clear_state(self):
        super().clear_state()
        self.network_id = ""

    @property
    def names(self):
        return workspace_names(self.user.name, self.project, self.prefix)

    # ---- helpers -------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    async def _in_thread(self, fn, *args):
        return await asyncio.wrap_future(self.executor.submit(fn, *args))

    def _db_audit(self, action, *, outcome="allowed", reason=None, project=None, details=None):
        audit.append_committed(
            _sessionmaker(self.registry_url),
            action,
            actor=self.user.name,
            project=project if project is not None else (self.project or None),
            outcome=outcome,
            reason=reason,
            details={"server": self.name, **(details or {})},
        )

    def _record_started(self, datasets: list[str], address: str) -> None:
        """The open-workspace row and its audit event, in one transaction."""
        Session = _sessionmaker(self.registry_url)
        with Session() as session, session.begin():
            ops.open_workspace(
                session,
                self.user.name,
                username=self.user.name,
                server_name=self.name,
                project=self.project,
                container=self.object_name,
                address=address,
                now=self._now(),
                datasets=datasets,
            )

    def _record_stopped(self, project: str) -> None:
        Session = _sessionmaker(self.registry_url)
        with Session() as session, session.begin():
            ops.close_workspace(
                session,
                self.user.name,
                username=self.user.name,
                server_name=self.name,
                project=project,
                now=self._now(),
            )

    async def record(self, action, **kwargs):
        await self._in_thread(lambda: self._db_audit(action, **kwargs))

    async def refuse(self, reason: str, *, project=None, details=None, status=403):
        self.log.warning("Refusing workspace for %s: %s", self.user.name, reason)
        await self.record(
            "spawn.refused", outcome="denied", reason=reason, project=project, details=details
        )
        raise SpawnRefused(reason, status)

    def _eligibility(self, project: str) -> Eligibility:
        Session = _sessionmaker(self.registry_url)
        with Session() as session:
            return eligibility(session, self.user.name, project, self._now())

    def _event(self, progress: int, message: str) -> None:
        self._events.append({"progress": progress, "message": message})

    # ---- the spawn form ------------------------------------------------------------
    def _projects(self) -> list[Eligibility]:
        Session = _sessionmaker(self.registry_url)
        with Session() as session:
            return projects_for(session, self.user.name, self._now())

    def _notices(self) -> str:
        Session = _sessionmaker(self.registry_url)
        with Session() as session:
            return render_notices(notices_for(session, self.user.name, self._now().date()))

    async def _render_options_form(self, spawner=None):
        items = await self._in_thread(self._projects)
        notices = await self._in_thread(self._notices)
        return notices + render_project_form(items, preselect=self.name)

    @staticmethod
    def _options_from_form(formdata):
        values = formdata.get("project") or [""]
        return {"project": values[0]}

    def _requested_project(self) -> str | None:
        """The project asked for, or None with the reason in ``self._bad_options``."""
        opts = self.user_options
        if not isinstance(opts, dict):
            return None
        unknown = sorted(set(opts) - {"project"})
        if unknown:
            self._bad_options = (
                f"option(s) {', '.join(map(repr, unknown))[:200]} cannot be set; "
                "only a project may be chosen"
            )
            return None
        project = opts.get("project") or self.name
        if not isinstance(project, str) or not SLUG_RE.match(project):
            self._bad_options = f"unknown project {str(project)[:80]!r}"
            return None
        if self.name and project != self.name:
            self._bad_options = (
                f"the server named {self.name!r} can only open project {self.name!r}"
            )
            return None
        return project

    # ---- start / stop --------------------------------------------------------------
    async def progress(self):
        seen = 0
        while True:
            while seen < len(self._events):
                yield self._events[seen]
                seen += 1
            if not self._starting:
                break
            await asyncio.sleep(self.progress_poll_interval)

    async def start(self):
        self._events = []
        self._starting = True
        try:
            return await self._start()
        finally:
            self._starting = False

    async def _start(self):
        self._bad_options = "options must be a JSON object naming a project"
        self._event(10, "Checking approvals")
        project = self._requested_project()
        if project is None:
            await self.refuse(self._bad_options, details={"options": repr(self.user_options)[:300]})
        found = await self._in_thread(self._eligibility, project)
        if not found.decision.allowed:
            await self.refuse(found.decision.reason, project=project)
        await self._ensure_not_open_elsewhere(project)
        self.project = project
        self._project_facts = found
        names = self.names
        self.network_name = names.network
        self.object_name = names.container

        self._event(30, "Preparing your data")
        extract = os.path.join(project, escape(self.user.name))
        key_file = self.pseudonym_key_file or os.path.join(
            os.path.dirname(os.path.normpath(self.extracts_dir)), "keys", "pseudonym-master.key"
        )
        try:
            built = await self._in_thread(
                lambda: prepare_extract(
                    _sessionmaker(self.registry_url),
                    project=project,
                    username=self.user.name,
                    grants=list(found.grants),
                    target=os.path.join(self.extracts_dir, extract),
                    extracts_dir=self.extracts_dir,
                    key_file=key_file,
                )
            )
        except ExtractError as exc:
            self.project = ""
            await self.refuse(str(exc), project=project, status=500)
        version = os.path.relpath(built.path, self.extracts_dir)
        self._extract_host_dir = os.path.join(self.extracts_host_dir or self.extracts_dir, version)

        self._event(50, "Isolating your workspace network")
        created_network = created_volume = False
        try:
            created_network = await self._ensure_network()
            created_volume = await self._ensure_volume()
            self._event(70, "Starting your workspace")
            ip_port = await super().start()
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

    async def _ensure_not_open_elsewhere(self, project: str) -> None:
        for name, other in self.user.spawners.items():
            if other is self or name == self.name:
                continue
            if getattr(other, "project", "") == project and (other.ready or other.pending):
                await self.refuse(
                    f"project {project} is already open in your server {name or 'default'!r}",
                    project=project,
                )

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
            spec = network_spec(names, labels(self.user.name, self.project, self.prefix))
            net = await self.docker("create_network", **spec)
            net = await self.docker("inspect_network", net["Id"])
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

    def get_env(self):
        env = super().get_env()
        if self.service_port and self.hub_connect_url:
            host = urlparse(self.hub_connect_url).hostname
            env["SDE_SERVICE_URL"] = f"http://{host}:{self.service_port}{self.service_prefix}"
        if self.project:
            env["SDE_PROJECT"] = self.project
        # No activity heartbeat: the hub gate refuses it (its timestamps would be a way out);
        # the hub takes activity from the proxy's routes instead.
        env.pop("JUPYTERHUB_ACTIVITY_URL", None)
        # Researchers' pre-checks use the checkers' thresholds, and the extension's early
        # feedback the service's export rules (which the service enforces again).
        # ... and the welcome page says whom to ask (the deployment's SDE_SUPPORT_CONTACT).
        for name in (*SDC_SETTINGS, *EXPORT_SETTINGS, "SDE_SUPPORT_CONTACT"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.update(project_sdc_env(self._project_facts.output_policy))
        env.update(project_clipboard_env(self._project_facts.output_policy))
        return env

    async def create_object(self):
        spec = container_spec(
            names=self.names,
            image=self.image,
            command=await self.get_command(),
            env=self.get_env(),
            extract_dir=self._extract_host_dir,
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


def drop_default_route_command(pid: int) -> list[str]:
    """Delete the default route in the network namespace of process ``pid``."""
    return ["nsenter", f"--net=/proc/{int(pid)}/ns/net", "ip", "route", "del", "default"]


def render_project_form(items: list[Eligibility], preselect: str = "") -> str:
    """The spawn form: eligible projects to choose from, the others with their reasons."""
    eligible = [e for e in items if e.decision.allowed]
    refused = [e for e in items if not e.decision.allowed]
    parts = ['<div class="sde-projects">']
    if eligible:
        parts.append("<p>Choose the approved project to work on:</p>")
        for i, e in enumerate(eligible):
            checked = " checked" if (e.project == preselect or (not preselect and i == 0)) else ""
            slug = html.escape(e.project)
            parts.append(
                f'<div class="radio"><label><input type="radio" name="project" value="{slug}"'
                f"{checked}> <strong>{slug}</strong> {html.escape(e.project_title)}"
                f" <small>({len(e.grants)} dataset(s))</small></label></div>"
            )
    else:
        parts.append(
            '<p class="alert alert-warning" id="sde-no-projects">You have no project you can '
            "work on at the moment. The reasons are listed below; your project lead or the data "
            "access team can put them right.</p>"
        )
    if refused:
        parts.append('<p>Not available:</p><ul class="sde-refused">')
        for e in refused:
            parts.append(
                f"<li><strong>{html.escape(e.project)}</strong>: "
                f"{html.escape(e.decision.reason)}</li>"
            )
        parts.append("</ul>")
    parts.append("</div>")
    return "\n".join(parts)
