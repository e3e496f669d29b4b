"""Live facts of a deployment for the evidence report, read only.

Each fact is a dict with ``ok`` (True, False, or None when it could not be determined) and
what was seen, so the report can show a fact that could not be read instead of failing:
the host firewall chain, the audit chain's verification and latest signed checkpoint,
agreements in force and ending soon, and the opt-out list versions in use.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from sde_spawner import firewall
from sde_spawner.audit import store
from sde_spawner.audit.models import AuditCheckpoint
from sde_spawner.audit.paths import audit_paths
from sde_spawner.datasets import optouts
from sde_spawner.registry.models import Agreement, Project

ENDING_SOON_DAYS = 90


def chain_state(rules: list[str], jumped: bool) -> dict:
    """The firewall fact from ``iptables -S CHAIN`` lines and whether INPUT jumps to it: OK
    when the chain is reached and its last rule refuses whatever the rules before it did not
    accept."""
    appended = [r for r in rules if r.startswith("-A ")]
    if not appended:
        return {"ok": False, "detail": f"chain {firewall.CHAIN} is not installed", "rules": 0}
    closing = "-j REJECT" in appended[-1] and "--dport" not in appended[-1]
    ports = sorted(int(r.split("--dport ")[1].split()[0]) for r in appended if "--dport " in r)
    return {
        "ok": closing and jumped,
        "detail": f"chain {firewall.CHAIN}: {len(appended)} rule(s); host ports open to "
        f"workspaces: {', '.join(map(str, ports)) or 'none'}; "
        + ("closes with a reject-all rule" if closing else "has NO closing reject rule")
        + ("" if jumped else "; INPUT does NOT jump to it"),
        "rules": len(appended),
        "open_ports": ports,
    }


def firewall_fact() -> dict:
    """:func:`chain_state` of the host's installed chain."""
    try:
        return chain_state(firewall.installed_rules(), firewall.jumped_to())
    except OSError as exc:
        return {"ok": None, "detail": f"cannot read the firewall: {exc}"}


def audit_fact(engine, key_file: Path | None, checkpoint_file: Path | None) -> dict:
    """``sde-admin audit verify`` and the latest signed checkpoint."""
    key = store.load_key_file(key_file) if key_file and key_file.exists() else None
    cp_file = checkpoint_file if checkpoint_file and checkpoint_file.exists() else None
    result = store.verify(engine, checkpoint_key=key, checkpoint_file=cp_file)
    with engine.connect() as conn:
        latest = conn.execute(
            select(AuditCheckpoint.seq, AuditCheckpoint.hash, AuditCheckpoint.at)
            .order_by(AuditCheckpoint.seq.desc())
            .limit(1)
        ).first()
    return {
        "ok": result.ok,
        "detail": f"OK: {result.checked} events verified"
        if result.ok
        else f"BROKEN at seq {result.first_bad_seq}: {result.reason}",
        "events": result.checked,
        "checkpoints_checked": result.checkpoints_checked,
        "signatures_checked": result.signatures_checked,
        "latest_checkpoint": None
        if latest is None
        else {"seq": latest.seq, "hash": latest.hash, "at": latest.at.isoformat()},
    }


def agreements_fact(session, today: date) -> dict:
    """Agreements in force today, and those ending within :data:`ENDING_SOON_DAYS`."""
    rows = session.execute(
        select(Project.slug, Agreement.reference, Agreement.starts_on, Agreement.ends_on)
        .join(Agreement, Agreement.project_id == Project.id)
        .order_by(Agreement.ends_on)
    ).all()
    soon = today + timedelta(days=ENDING_SOON_DAYS)
    in_force = [
        {"project": r.slug, "reference": r.reference, "ends_on": r.ends_on.isoformat()}
        for r in rows
        if r.starts_on <= today <= r.ends_on
    ]
    return {
        "ok": True,
        "detail": f"{len(in_force)} agreement(s) in force",
        "in_force": in_force,
        "ending_soon": [a for a in in_force if date.fromisoformat(a["ends_on"]) <= soon],
    }


def optouts_fact(session) -> dict:
    lists = {}
    for row in optouts.all_lists(session):  # newest version of each name first
        lists.setdefault(
            row.name,
            {
                "name": row.name,
                "version": row.version,
                "entries": row.entries,
                "loaded_at": row.loaded_at.isoformat(),
            },
        )
    return {
        "ok": bool(lists),
        "detail": f"{len(lists)} opt-out list(s) loaded" if lists else "no opt-out list loaded",
        "lists": list(lists.values()),
    }


def collect(sessionmaker, *, now: datetime | None = None, state_dir: str | None = None) -> dict:
    """Every fact; one that cannot be read is reported with ``ok: None`` and the reason."""
    now = now or datetime.now(UTC)
    key_file, checkpoint_file = audit_paths(state_dir)
    engine = sessionmaker.kw["bind"]
    facts: dict[str, dict] = {"firewall": firewall_fact()}
    readers = {
        "audit": lambda session: audit_fact(engine, key_file, checkpoint_file),
        "agreements": lambda session: agreements_fact(session, now.date()),
        "optouts": optouts_fact,
    }
    for name, reader in readers.items():
        try:
            with sessionmaker() as session:
                facts[name] = reader(session)
        except (SQLAlchemyError, OSError, store.AuditError) as exc:
            facts[name] = {"ok": None, "detail": f"cannot read: {exc}".splitlines()[0]}
    return facts
