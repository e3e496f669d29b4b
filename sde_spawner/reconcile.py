"""Reconciliation at hub start: nothing of ours runs that the hub's saved state does not know.

A hub killed between "container started" and "state saved" (JupyterHub stores a spawner's
state only once ``start()`` has returned) leaves a running workspace container, its network
and an open registry row that no spawner refers to: nobody can reach or stop it through the
hub, yet it holds its person's extract. Before the hub starts, :func:`reconcile` compares the
Docker objects labelled with this hub's prefix and the registry's open workspaces with the
spawner states in JupyterHub's database and removes what nothing refers to, one
``hub.reconciled`` audit event per object. Home volumes are never removed: they hold the
researcher's work and the next start of the same workspace reuses them.

``plan`` is pure (objects and states in, what to remove out); ``reconcile`` carries it out.
The host firewall chain is host-wide, not per workspace: the hub's start re-installs it
(``firewall.apply``) before anything is reachable, so there is no per-workspace rule to sweep.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sde_spawner import audit
from sde_spawner.containers import LABEL_PREFIX
from sde_spawner.registry import ops

log = logging.getLogger(__name__)

ACTOR = "hub"


@dataclass(frozen=True)
class Plan:
    containers: list[dict] = field(default_factory=list)  # {"id", "name", "user", "project"}
    networks: list[dict] = field(default_factory=list)  # {"id", "name", "user", "project"}
    rows: list[dict] = field(default_factory=list)  # {"username", "server", "project", ...}


def saved_states(hub_db: str | Path) -> list[dict]:
    """Every spawner state JupyterHub saved in its database (``hub_db``: a SQLAlchemy URL, or
    the path of a SQLite file); none when the database or its table does not exist yet. A
    database that cannot be read raises: reconciling against nothing would remove every
    running workspace."""
    import sqlalchemy as sa

    if isinstance(hub_db, Path) or "://" not in str(hub_db):
        if not Path(hub_db).exists():
            return []
        hub_db = f"sqlite:///{Path(hub_db)}"
    elif str(hub_db).startswith("sqlite:///") and not Path(str(hub_db)[10:]).exists():
        return []
    engine = sa.create_engine(str(hub_db))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("spawners"):  # JupyterHub has not set it up yet
                return []
            rows = conn.execute(sa.text("SELECT state FROM spawners")).fetchall()
    finally:
        engine.dispose()
    out = []
    for (raw,) in rows:
        state = json.loads(raw) if isinstance(raw, str) and raw else raw
        if isinstance(state, dict) and state:
            out.append(state)
    return out


def plan(
    prefix: str, containers: list[dict], networks: list[dict], rows: list[dict], states: list[dict]
) -> Plan:
    """What to remove: this prefix's containers and networks, and open registry rows of this
    prefix's containers, that no saved spawner state refers to (pure)."""
    kept_ids = {s.get("object_id") for s in states} - {None, ""}
    kept_names = {s.get("object_name") for s in states} - {None, ""}
    kept_nets = {s.get("network_id") for s in states} - {None, ""}

    def kept(c: dict) -> bool:
        return c["id"] in kept_ids or c["name"] in kept_names

    live_names = {c["name"] for c in containers if kept(c)} | kept_names
    return Plan(
        containers=[c for c in containers if not kept(c)],
        networks=[
            n
            for n in networks
            if n["id"] not in kept_nets and n["name"].removesuffix("-net") not in live_names
        ],
        rows=[
            r
            for r in rows
            if r["container"].startswith(f"{prefix}-") and r["container"] not in live_names
        ],
    )


def _described(obj, kind: str) -> dict:
    lab = (obj.attrs.get("Config", {}).get("Labels") if kind == "container" else None) or (
        obj.attrs.get("Labels") or {}
    )
    return {
        "id": obj.id,
        "name": obj.name,
        "user": lab.get(f"{LABEL_PREFIX}.user", ""),
        "project": lab.get(f"{LABEL_PREFIX}.project", ""),
    }


def reconcile(client, sessionmaker, prefix: str, hub_db: str | Path) -> Plan:
    """Remove what no saved state refers to; one ``hub.reconciled`` audit event each."""
    flt = {"label": f"{LABEL_PREFIX}.managed-by={prefix}"}
    containers = {c.id: c for c in client.containers.list(all=True, filters=flt)}
    networks = {n.id: n for n in client.networks.list(filters=flt)}
    with sessionmaker() as s:
        rows = [
            {
                "username": w.username,
                "server": w.server_name,
                "project": w.project_slug,
                "container": w.container or "",
            }
            for w in ops.open_workspaces(s)
        ]
    todo = plan(
        prefix,
        [_described(c, "container") for c in containers.values()],
        [_described(n, "network") for n in networks.values()],
        rows,
        saved_states(hub_db),
    )
    reason = "not in the hub's saved state (a start the hub did not finish)"
    for c in todo.containers:
        containers[c["id"]].remove(force=True)
        record_removed(sessionmaker, c, "container", reason)
    for n in todo.networks:
        networks[n["id"]].remove()
        record_removed(sessionmaker, n, "network", reason)
    now = datetime.now(UTC).replace(tzinfo=None)
    for r in todo.rows:
        with sessionmaker() as s, s.begin():
            ops.close_workspace(
                s, ACTOR, username=r["username"], server_name=r["server"],
                project=r["project"], now=now,
            )  # fmt: skip
        record_removed(
            sessionmaker, {"name": r["container"], "user": r["username"], **r}, "row", reason
        )
    return todo


def record_removed(sessionmaker, obj: dict, kind: str, reason: str) -> None:
    """One ``hub.reconciled`` event: the ``kind`` (container, network, row) named
    ``obj["name"]`` of ``obj["user"]`` was removed, and why."""
    log.warning("reconcile: removed %s %s (%s)", kind, obj["name"], reason)
    audit.append_committed(
        sessionmaker,
        "hub.reconciled",
        actor=ACTOR,
        project=obj.get("project") or None,
        reason=reason,
        details={"removed": kind, "name": obj["name"], "target": obj.get("user", "")},
    )


def at_hub_start(
    prefix: str,
    registry_url: str,
    hub_db: str | Path,
    ports: list[int],
    watch_seconds: float = 1.0,
) -> None:
    """What a Docker hub does before it starts: the host firewall chain first (so nothing of
    ours is reachable without it) and a thread that puts it back whenever it is found flushed
    or unhooked (every ``watch_seconds``; ``firewall.watch``), then :func:`reconcile`.
    Failures are logged, not fatal:
    spawns fail closed on the firewall by themselves, and a hub that cannot reach the engine
    cannot start anything either."""
    import docker

    from sde_spawner import firewall
    from sde_spawner.rooms import _sessionmaker

    sessionmaker = _sessionmaker(registry_url)
    installed = True
    try:
        firewall.apply(ports)
    except firewall.FirewallError as exc:
        installed = False
        log.error("reconcile: the host firewall could not be installed: %s", exc)
    if installed and watch_seconds > 0:
        threading.Thread(
            target=firewall.watch,
            args=(ports, watch_seconds, lambda gone: _restored(sessionmaker, gone)),
            name="sde-firewall-watch",
            daemon=True,
        ).start()
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        log.error("reconcile: no Docker engine answers: %s", exc)
        return
    try:
        reconcile(client, sessionmaker, prefix, hub_db)
    except Exception as exc:  # the hub still starts; nothing is removed on a guess
        log.error("reconcile: skipped, JupyterHub's saved state cannot be read: %s", exc)
    finally:
        client.close()


def _restored(sessionmaker, gone: list[str]) -> None:
    """The watcher found part of the host firewall missing and put it back: audit it."""
    failed = any(g.startswith("error:") for g in gone)
    log.warning("host firewall: %s %s", "could not restore" if failed else "restored", gone)
    audit.append_committed(
        sessionmaker,
        "firewall.restored",
        actor=ACTOR,
        outcome="error" if failed else "allowed",
        reason="; ".join(gone)[:500],
        details={"missing": gone},
    )
