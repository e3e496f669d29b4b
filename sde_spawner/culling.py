"""Idle culling with a timeout per project: workspaces nobody used for their project's idle
timeout are stopped, with a ``workspace.culled`` audit event saying why.

How culling works here, and why so:

* Activity comes from the proxy only. The single-user server's own activity heartbeat is
  closed (:mod:`sde_spawner.hub_gate`: its timestamps would be a way out of the room), so
  the hub takes each server's ``last_activity`` from configurable-http-proxy's routes every
  ``JupyterHub.last_activity_interval`` (the wiring's ``SDE_ACTIVITY_INTERVAL``). A page open
  in a browser polls its server and counts as activity; a kernel computing with no page open
  does not.
* ``jupyterhub-idle-culler`` runs as the hub service ``idle-culler`` with the hub-wide
  ceiling (``SDE_IDLE_CULL_SECONDS``, default 24 h): whatever a project says, no workspace
  idles longer. It knows one timeout only, so it cannot apply the projects' own; its stops
  are audited by the hub (:mod:`sde_spawner.hub_events`: ``workspace.culled``).
* Each project's own timeout (registry ``project.idle_timeout``, from the project file's
  ``[limits] idle = "30m"``; unset: the service's ``idle_timeout``) is applied by the ``sde``
  service: :func:`plan` (pure) compares the hub's ``last_activity`` of every server with the
  timeout of the project the registry says it works on, and :func:`cull` stops those past it
  through the hub's REST API (as the lifecycle sweep does), one audit event per room.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from sde_spawner import audit
from sde_spawner.lifecycle import Closure, stop_server
from sde_spawner.registry import ops
from sde_spawner.registry.models import Project

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cull:
    username: str
    server_name: str
    project: str
    idle_seconds: float
    timeout: int

    @property
    def reason(self) -> str:
        return (
            f"idle for {human(self.idle_seconds)} (no activity through the hub's proxy); "
            f"project {self.project}'s idle timeout is {human(self.timeout)}"
        )


def human(seconds: float) -> str:
    """``5400`` -> ``'1 h 30 min'``; under two minutes in seconds."""
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    h, m = divmod(s // 60, 60)
    return f"{h} h {m} min" if h and m else f"{h} h" if h else f"{m} min"


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)


def plan(
    users: list[dict],
    rooms: Mapping[tuple[str, str], str],
    timeouts: Mapping[str, int | None],
    default_timeout: int,
    now: datetime,
) -> list[Cull]:
    """Which servers to stop (pure). ``users``: the hub's user models with their servers;
    ``rooms``: (person, server name) -> project of the open workspaces in the registry;
    ``timeouts``: project -> its idle timeout (None: ``default_timeout``)."""
    out = []
    for user in users:
        for server_name, server in (user.get("servers") or {}).items():
            project = rooms.get((user["name"], server_name))
            if project is None or not server.get("ready") or server.get("pending"):
                continue  # not a workspace we started, or one still starting or stopping
            last = parse_time(server.get("last_activity")) or parse_time(server.get("started"))
            if last is None:
                continue
            timeout = timeouts.get(project) or default_timeout
            idle = (now - last).total_seconds()
            if idle > timeout:
                out.append(Cull(user["name"], server_name, project, idle, timeout))
    return sorted(out, key=lambda c: (c.username, c.server_name))


def active_users(hub_api_url: str, token: str) -> list[dict]:
    """The hub's users with running servers (``GET /users?state=active``)."""
    if not hub_api_url.startswith(("http://", "https://")):
        raise ValueError(f"hub API URL must be http(s): {hub_api_url!r}")
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        hub_api_url.rstrip("/") + "/users?state=active&limit=10000",
        headers={"Authorization": f"token {token}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - scheme checked
        body = json.load(resp)
    return body["items"] if isinstance(body, dict) else body


def cull(
    sessionmaker,
    hub_api_url: str,
    token: str,
    default_timeout: int,
    *,
    now: datetime | None = None,
    actor: str = "lifecycle",
) -> list[dict]:
    """Stop every workspace idle past its project's timeout; one audit event per room."""
    now = now or datetime.now(UTC)
    users = active_users(hub_api_url, token)
    with sessionmaker() as s:
        rooms = {(w.username, w.server_name): w.project_slug for w in ops.open_workspaces(s)}
        timeouts = dict(s.execute(select(Project.slug, Project.idle_timeout)).all())
    results = []
    for c in plan(users, rooms, timeouts, default_timeout, now):
        status = stop_server(
            hub_api_url, token, Closure(c.username, c.server_name, c.project, c.reason)
        )
        ok = status in (202, 204, 404)
        with sessionmaker() as s, s.begin():
            audit.append(
                s,
                "workspace.culled" if ok else "workspace.cull.failed",
                actor=actor,
                project=c.project,
                outcome="allowed" if ok else "error",
                reason=c.reason,
                details={
                    "target": c.username,
                    "server": c.server_name,
                    "idle_seconds": int(c.idle_seconds),
                    "timeout": c.timeout,
                    "status": status,
                },
            )
        log.warning("culled %s/%s: %s (%s)", c.username, c.server_name, c.reason, status)
        results.append({"user": c.username, "project": c.project, "status": status})
    return results
