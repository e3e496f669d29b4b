"""What every locked-room spawner does before and after its engine runs a workspace.

:class:`LockedRoomMixin` is shared by the Docker spawner (:mod:`sde_spawner.spawner`) and
the Kubernetes one (:mod:`sde_spawner.kube_spawner`), so both apply the same gate:

1. *eligibility* — ``user_options`` are validated hub side (only a project may be chosen)
   and the registry says person + project + agreement + grants are in order
   (:func:`sde_spawner.registry.store.eligibility`); a refusal is one readable reason on the
   hub's page and one audit event;
2. *extract* — the member's minimum dataset is built (or reused) read-only under
   ``extracts_dir`` (:func:`sde_spawner.datasets.hub.prepare_extract`);

and the same bookkeeping: progress events, the open/closed workspace rows and their audit
events, the spawn form, and the environment a workspace gets (:func:`workspace_env`).
"""

from __future__ import annotations

import asyncio
import html
import os
from datetime import UTC, datetime

from tornado import web
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

from sde_airlock.rules import EXPORT_SETTINGS
from sde_spawner import audit
from sde_spawner.containers import SLUG_RE, escape
from sde_spawner.datasets.extract import BuildResult, ExtractError
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


SDC_SETTINGS = (
    "SDE_SDC_THRESHOLD",
    "SDE_SDC_DOF_THRESHOLD",
    "SDE_SDC_ZEROS_ARE_DISCLOSIVE",
    "SDE_SDC_ROUNDING",
)


def project_clipboard_env(policy: dict) -> dict[str, str]:
    """The project's copy-out rule for its workspaces' JupyterLab: ``SDE_CLIPBOARD_OUT`` is
    ``block`` unless the output policy says ``clipboard_out = "allow"`` (the UK TRE standard
    asks that the clipboard not be a way out, so blocking is the default)."""
    return {"SDE_CLIPBOARD_OUT": "allow" if policy.get("clipboard_out") == "allow" else "block"}


def workspace_env(
    env: dict[str, str],
    *,
    project: str,
    service_url: str,
    output_policy: dict,
    environ: dict[str, str],
) -> dict[str, str]:
    """The hub's single-user environment ``env`` as a locked room gets it (a new dict).

    Adds the `sde` service's URL and the project, drops the activity heartbeat (the hub gate
    refuses it: its timestamps would be a way out; the hub takes activity from the proxy's
    routes), and passes on the checkers' disclosure thresholds and the export rules from the
    hub's ``environ`` so researchers' pre-checks match the service (which enforces them again),
    the project's own output policy overriding the deployment's; the project's copy-out rule;
    and whom to ask (the deployment's ``SDE_SUPPORT_CONTACT``, for the welcome page).
    """
    out = dict(env)
    if service_url:
        out["SDE_SERVICE_URL"] = service_url
    if project:
        out["SDE_PROJECT"] = project
    out.pop("JUPYTERHUB_ACTIVITY_URL", None)
    for name in (*SDC_SETTINGS, *EXPORT_SETTINGS, "SDE_SUPPORT_CONTACT"):
        if environ.get(name):
            out[name] = environ[name]
    out.update(project_sdc_env(output_policy))
    out.update(project_clipboard_env(output_policy))
    return out


#: ``SDE_SPAWNER`` -> the spawner class (an entry point name or an import path).
SPAWNERS = {
    "docker": "sde",
    "swarm": "sde_spawner.swarm_spawner.SDESwarmSpawner",
    "kubernetes": "sde_spawner.kube_spawner.SDEKubeSpawner",
}


def choose_spawner(environ) -> str:
    """The spawner ``SDE_SPAWNER`` names (default docker), or ValueError saying what to set."""
    wanted = environ.get("SDE_SPAWNER", "").strip().lower() or "docker"
    if wanted == "swarm" and not environ.get("SDE_HUB_CONTAINER", "").strip():
        raise ValueError(
            "SDE_SPAWNER=swarm needs SDE_HUB_CONTAINER (the hub's container on a manager node)"
        )
    if wanted not in SPAWNERS:
        raise ValueError(f"SDE_SPAWNER={wanted[:40]!r} is not one of {', '.join(SPAWNERS)}")
    return SPAWNERS[wanted]


class LockedRoomMixin(LoggingConfigurable):
    """Eligibility gate, extract preparation, progress and registry rows of a spawner.

    The engine-specific class defines ``executor`` (threads for database calls),
    ``workspace_object`` (the container or pod name recorded) and ``_start_workspace``.
    """

    registry_url = Unicode(
        DEFAULT_DB_URL,
        help="SQLAlchemy URL of the registry (and audit) database.",
    ).tag(config=True)

    extracts_dir = Unicode(
        "/var/lib/sde/extracts",
        help="Directory (as the hub sees it) where minimum-dataset extracts are written.",
    ).tag(config=True)

    pseudonym_key_file = Unicode(
        "",
        help="Hub-side file (0600, created on first use) holding the master key of per-project "
        "pseudonyms. Never under extracts_dir. Empty: keys/pseudonym-master.key beside "
        "extracts_dir.",
    ).tag(config=True)

    service_prefix = Unicode("/services/sde/", help="URL prefix of the `sde` service.").tag(
        config=True
    )

    progress_poll_interval = Float(0.2, help="Seconds between progress checks.").tag(config=True)

    @default("options_form")
    def _default_options_form(self):
        return self._render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return self._options_from_form

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_room()

    def _init_room(self) -> None:
        """Per-instance state, set by ``__init__``."""
        self.project = ""
        # The registry's facts of the project being started (limits, output policy).
        self._project_facts = Eligibility("", "", Decision(True), ())
        self._events: list[dict] = []
        self._starting = False

    # ---- state: the project is saved with the spawner's own state -----------------------
    def load_state(self, state):
        super().load_state(state)
        self.project = state.get("project", "")

    def get_state(self):
        state = super().get_state()
        if self.project:
            state["project"] = self.project
        return state

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
                container=self.workspace_object,
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

    def _sde_env(self, env: dict[str, str], service_url: str) -> dict[str, str]:
        return workspace_env(
            env,
            project=self.project,
            service_url=service_url,
            output_policy=self._project_facts.output_policy,
            environ=dict(os.environ),
        )

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

    # ---- start ---------------------------------------------------------------------
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
            self._release_start_slot()

    # ---- start queue: the engine's spawner may let only so many starts run at once ------
    async def _take_start_slot(self) -> None:
        """Called once a person is admitted, before the costly part of the start (the
        extract, then the engine's work): wait for a turn. Here: no queue."""

    def _release_start_slot(self) -> None:
        """Called when ``start()`` ends, however it ends (idempotent)."""

    async def _admit(self) -> tuple[Eligibility, BuildResult]:
        """Steps 1 and 2: the gate and the extract; sets ``self.project`` once admitted.

        Raises :class:`SpawnRefused` (audited) when the person may not open the project or
        the extract cannot be built.
        """
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
        await self._take_start_slot()

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
        return found, built

    async def _ensure_not_open_elsewhere(self, project: str) -> None:
        for name, other in self.user.spawners.items():
            if other is self or name == self.name:
                continue
            if getattr(other, "project", "") == project and (other.ready or other.pending):
                await self.refuse(
                    f"project {project} is already open in your server {name or 'default'!r}",
                    project=project,
                )


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
