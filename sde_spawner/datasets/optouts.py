"""Opt-out lists and which of them a project's extracts must honour.

The national data opt-out and any local lists (``local:NAME``) are loaded from files of NHS
numbers. A load is all or nothing: every line is checked (10 digits, Modulus 11) and when any
line is bad, every bad line is reported with its number and nothing is stored. Each good
load is a new, never-changed version; the list in force is its latest version. Loads, refused
loads and policy changes are audited in the same transaction as the change.

Project policy (:class:`ProjectDataPolicy`) names the local lists that apply to a project; the
national list ALWAYS applies, and an extract of person-level data is refused while it has
never been loaded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from sde_spawner import audit
from sde_spawner.datasets.nhs_number import validate_lines
from sde_spawner.registry.models import OptoutEntry, OptoutList, Project, ProjectDataPolicy

NATIONAL = "national"
_LOCAL_RE = re.compile(r"^local:[a-z][a-z0-9-]{1,38}$")
MAX_REPORTED_ERRORS = 1000  # a file of garbage: report the first thousand, count the rest


class OptoutError(ValueError):
    """An opt-out file or list name cannot be accepted; the message says why."""


def check_name(name: str) -> str:
    if name == NATIONAL or _LOCAL_RE.match(name or ""):
        return name
    raise OptoutError(
        f"opt-out list {name!r} must be 'national' or 'local:NAME' (NAME: 2-39 lower-case "
        "letters, digits or '-', starting with a letter)"
    )


@dataclass(frozen=True)
class ListInForce:
    name: str
    version: int
    list_id: int
    entries: int
    sha256: str

    def as_dict(self) -> dict:
        return {"list": self.name, "version": self.version, "entries": self.entries}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def digest(numbers) -> str:
    return hashlib.sha256("\n".join(sorted(numbers)).encode()).hexdigest()


def load(session: Session, name: str, path: str | Path, actor: str) -> tuple[OptoutList, str]:
    """Validate and store a new version of list ``name`` from ``path``; the caller commits.

    Returns (version row, status) where status is ``loaded`` or ``unchanged`` (same numbers
    as the version in force: no new version). Raises :class:`OptoutError` listing every bad
    line; the refusal is audited by :func:`record_refusal`.
    """
    check_name(name)
    p = Path(path)
    try:
        with p.open(encoding="utf-8", newline="") as fh:
            checked = validate_lines(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise OptoutError(f"opt-out file {p} cannot be read: {exc}") from None
    if checked.errors:
        shown = list(checked.errors[:MAX_REPORTED_ERRORS])
        more = len(checked.errors) - len(shown)
        if more:
            shown.append(f"... and {more} more bad line(s)")
        raise OptoutError(
            f"opt-out file {p.name}: {len(checked.errors)} bad line(s), nothing loaded:\n"
            + "\n".join(shown)
        )
    sha = digest(checked.numbers)
    current = latest(session, name)
    if current is not None and current.sha256 == sha:
        return current, "unchanged"
    version = (current.version if current else 0) + 1
    row = OptoutList(
        name=name,
        version=version,
        entries=len(checked.numbers),
        sha256=sha,
        source_name=p.name[:300],
        loaded_by=actor[:100],
        loaded_at=_now(),
    )
    session.add(row)
    session.flush()
    if checked.numbers:
        session.execute(
            insert(OptoutEntry), [{"list_id": row.id, "nhs_number": n} for n in checked.numbers]
        )
    audit.append(
        session,
        "optout.loaded",
        actor=actor,
        details={
            "list": name,
            "version": version,
            "entries": row.entries,
            "duplicates_ignored": checked.duplicates,
            "sha256": sha,
            "file": row.source_name,
        },
    )
    return row, "loaded"


def record_refusal(sessionmaker, name: str, path, actor: str, error: OptoutError) -> None:
    """Audit a refused load (its own transaction: nothing else was written)."""
    first = str(error).splitlines()[0]
    audit.append_committed(
        sessionmaker,
        "optout.load_refused",
        actor=actor,
        outcome="denied",
        reason=first[:500],
        details={"list": name, "file": Path(path).name[:300]},
    )


def latest(session: Session, name: str) -> OptoutList | None:
    return session.scalar(
        select(OptoutList).where(OptoutList.name == name).order_by(OptoutList.version.desc())
    )


def all_lists(session: Session) -> list[OptoutList]:
    """Every version of every list, newest version of each name first."""
    return list(
        session.scalars(select(OptoutList).order_by(OptoutList.name, OptoutList.version.desc()))
    )


def policy(session: Session, project: Project) -> ProjectDataPolicy | None:
    return session.scalar(
        select(ProjectDataPolicy).where(ProjectDataPolicy.project_id == project.id)
    )


def _policy_for_update(session: Session, project: Project) -> ProjectDataPolicy:
    pol = policy(session, project)
    if pol is None:
        pol = ProjectDataPolicy(project_id=project.id, local_optouts_json="[]", write_csv=False)
        session.add(pol)
    return pol


def set_applied(session: Session, project: Project, name: str, applied: bool, actor: str) -> str:
    """Apply (or stop applying) a local list to a project; returns a status word."""
    check_name(name)
    if name == NATIONAL:
        raise OptoutError("the national data opt-out always applies; it cannot be changed")
    if applied and latest(session, name) is None:
        raise OptoutError(f"opt-out list {name} has never been loaded (sde-admin optout load)")
    pol = _policy_for_update(session, project)
    lists = set(pol.local_optouts)
    if (name in lists) == applied:
        return "unchanged"
    lists = lists | {name} if applied else lists - {name}
    pol.local_optouts = sorted(lists)
    session.flush()
    audit.append(
        session,
        "optout.applied" if applied else "optout.unapplied",
        actor=actor,
        project=project.slug,
        details={"list": name, "local_lists": pol.local_optouts},
    )
    return "applied" if applied else "no longer applied"


def set_csv(session: Session, project: Project, write_csv: bool, actor: str) -> str:
    pol = _policy_for_update(session, project)
    if bool(pol.write_csv) == write_csv:
        return "unchanged"
    pol.write_csv = write_csv
    session.flush()
    audit.append(
        session,
        "project.data_policy",
        actor=actor,
        project=project.slug,
        details={"write_csv": write_csv},
    )
    return "updated"


def lists_in_force(session: Session, project_slug: str) -> list[ListInForce]:
    """The latest version of the national list and of each local list the project applies.

    Raises :class:`OptoutError` when the national list, or an applied local list, has never
    been loaded (an extract must not be built without them).
    """
    project = session.scalar(select(Project).where(Project.slug == project_slug))
    pol = policy(session, project) if project is not None else None
    names = [NATIONAL, *(pol.local_optouts if pol else [])]
    out = []
    for name in names:
        row = latest(session, name)
        if row is None:
            raise OptoutError(
                f"the {'national data opt-out' if name == NATIONAL else name} list has never "
                "been loaded, so no extract of person-level data can be built "
                f"(an administrator must run: sde-admin optout load {name} FILE)"
            )
        out.append(ListInForce(row.name, row.version, row.id, row.entries, row.sha256))
    return out


def entries(session: Session, lst: ListInForce) -> pa.Table:
    """The NHS numbers of one list version, as a one-column Arrow table."""
    numbers = session.scalars(
        select(OptoutEntry.nhs_number).where(OptoutEntry.list_id == lst.list_id)
    ).all()
    return pa.table({"nhs_number": pa.array(numbers, pa.string())})


def entry_count(session: Session, list_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(OptoutEntry).where(OptoutEntry.list_id == list_id)
    )


def write_csv_wanted(session: Session, project_slug: str) -> bool:
    project = session.scalar(select(Project).where(Project.slug == project_slug))
    pol = policy(session, project) if project is not None else None
    return bool(pol and pol.write_csv)
