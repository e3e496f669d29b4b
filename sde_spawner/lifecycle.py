"""Lifecycle sweep: running workspaces whose person, project or agreement is no longer in
order are closed, without anyone having to remember to do it.

``plan`` is pure: open workspaces and an eligibility lookup in, (workspace, reason) pairs out.
``enforce`` carries a plan out through the hub's REST API (so the hub's own state stays
right), writing a ``workspace.closed`` audit event per room. The ``sde`` service runs it as
soon as the registry changes (:func:`registry_changed`, polled every
``SDE_REGISTRY_WATCH_SECONDS``, default 1: a suspension, a removed member or grant, a
suspended project closes the room within seconds) and every ``SDE_ENFORCE_SECONDS`` (default
60) as the safety net for what no change announces (an agreement or training that ends with
the date); ``sde-admin enforce`` runs it once.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from sde_spawner import audit
from sde_spawner.audit.models import AuditEvent, AuditHead
from sde_spawner.policy import Decision
from sde_spawner.registry import ops
from sde_spawner.registry.models import Workspace
from sde_spawner.registry.store import eligibility

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Closure:
    username: str
    server_name: str
    project: str
    reason: str


def plan(workspaces: list[Workspace], decide: Callable[[str, str], Decision]) -> list[Closure]:
    """Which open workspaces must close, and why (pure)."""
    out = []
    for ws in workspaces:
        decision = decide(ws.username, ws.project_slug)
        if not decision.allowed:
            out.append(Closure(ws.username, ws.server_name, ws.project_slug, decision.reason))
    return out


def plan_from_db(session: Session, now: datetime | None = None) -> list[Closure]:
    now = now or datetime.now(UTC).replace(tzinfo=None)
    open_rooms = sorted(ops.open_workspaces(session), key=lambda ws: ws.id)
    return plan(open_rooms, lambda u, p: eligibility(session, u, p, now).decision)


#: Audit actions of registry changes that can end someone's right to a workspace.
REGISTRY_ACTIONS = ("person.", "project.", "agreement.", "membership.", "grant.", "dataset.",
                    "breach.", "optout.")  # fmt: skip


def audit_head(session: Session) -> int:
    """The sequence number of the newest audit event (0 for an empty trail)."""
    seq = session.scalar(select(AuditHead.seq))
    return int(seq or 0)


def registry_changed(session: Session, after: int) -> tuple[int, bool]:
    """``(newest seq, whether a registry change was recorded after seq after)``: one read of
    the audit head, and a look at the new events only when there are any."""
    head = audit_head(session)
    if head <= after:
        return head, False
    changed = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.seq > after,
            AuditEvent.seq <= head,
            AuditEvent.outcome == "allowed",
            or_(*(AuditEvent.action.startswith(prefix) for prefix in REGISTRY_ACTIONS)),
        )
    )
    return head, bool(changed)


def stop_server(hub_api_url: str, token: str, closure: Closure) -> int:
    """Ask the hub to stop one server; returns the HTTP status (404: already gone)."""
    user = urllib.parse.quote(closure.username, safe="")
    path = (
        f"/users/{user}/servers/{urllib.parse.quote(closure.server_name, safe='')}"
        if closure.server_name
        else f"/users/{user}/server"
    )
    if not hub_api_url.startswith(("http://", "https://")):
        raise ValueError(f"hub API URL must be http(s): {hub_api_url!r}")
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        hub_api_url.rstrip("/") + path,
        method="DELETE",
        headers={"Authorization": f"token {token}"},
        data=json.dumps({}).encode(),
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - scheme checked
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def enforce(sessionmaker, hub_api_url: str, token: str, actor: str = "lifecycle") -> list[dict]:
    """Close every workspace that is no longer allowed; one audit event per room."""
    with sessionmaker() as s:
        closures = plan_from_db(s)
    results = []
    for c in closures:
        status = stop_server(hub_api_url, token, c)
        ok = status in (202, 204, 404)
        with sessionmaker() as s, s.begin():
            audit.append(
                s,
                "workspace.closed" if ok else "workspace.close.failed",
                actor=actor,
                project=c.project,
                outcome="allowed" if ok else "error",
                reason=c.reason,
                details={"target": c.username, "server": c.server_name, "status": status},
            )
            if status == 404:
                for ws in ops.open_workspaces(s, username=c.username, server_name=c.server_name):
                    ws.stopped_at = datetime.now(UTC).replace(tzinfo=None)
        results.append(
            {"user": c.username, "project": c.project, "reason": c.reason, "status": status}
        )
    return results
