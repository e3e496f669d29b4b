"""The spawner's one call for a member's extract: registry facts in, mounted version out.

Reads what the registry says about the grants' datasets (their identifier columns), the
opt-out lists in force for the project and its data policy, derives the project's pseudonym
key from the hub-side master key, builds (or reuses) the extract version, and records a new
version (:class:`ExtractVersion`) with its audit event in one transaction. Every problem comes
back as one :class:`ExtractError` whose message the spawner shows and audits.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from sqlalchemy import func, select

from sde_spawner import audit
from sde_spawner.datasets import optouts
from sde_spawner.datasets.extract import (
    BuildResult,
    ExtractError,
    GrantSpec,
    OptoutVersion,
    SafeData,
    build_extract,
)
from sde_spawner.datasets.pseudonyms import (
    PseudonymKeyError,
    key_id,
    load_or_create_master_key,
    project_key,
)
from sde_spawner.registry.models import Dataset, ExtractVersion


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def prepare_extract(
    sessionmaker,
    *,
    project: str,
    username: str,
    grants: list[GrantSpec],
    target: str | os.PathLike,
    extracts_dir: str | os.PathLike,
    key_file: str | os.PathLike,
    threads: int | None = None,
) -> BuildResult:
    """Build or reuse ``username``'s extract on ``project`` under ``target``."""
    target, key_path = Path(target), Path(key_file)
    if _inside(key_path, Path(extracts_dir)):
        raise ExtractError("the pseudonym key file must not be inside the extracts directory")
    slugs = [g.dataset for g in grants]
    with sessionmaker() as session:
        idents = dict(
            session.execute(
                select(Dataset.slug, Dataset.identifier_column).where(Dataset.slug.in_(slugs))
            ).all()
        )
        grants = [replace(g, identifier_column=idents.get(g.dataset) or "") for g in grants]
        person_level = any(g.identifier_column for g in grants)
        try:
            in_force = optouts.lists_in_force(session, project) if person_level else []
        except optouts.OptoutError as exc:
            raise ExtractError(str(exc)) from None
        write_csv = optouts.write_csv_wanted(session, project)
        last = session.scalar(
            select(func.max(ExtractVersion.version)).where(
                ExtractVersion.project_slug == project, ExtractVersion.username == username
            )
        )
    key = b""
    if person_level:
        try:
            key = project_key(load_or_create_master_key(key_path), project)
        except (PseudonymKeyError, OSError) as exc:
            raise ExtractError(f"the pseudonym key is not available: {exc}") from None
    by_version = {(o.name, o.version): o for o in in_force}

    def load_entries(ov: OptoutVersion):
        with sessionmaker() as s:
            return optouts.entries(s, by_version[(ov.name, ov.version)])

    safe = SafeData(
        project=project,
        key=key,
        key_id=key_id(key) if key else "",
        optouts=tuple(OptoutVersion(o.name, o.version, o.entries, o.sha256) for o in in_force),
        load_entries=load_entries,
        write_csv=write_csv,
    )
    try:
        result = build_extract(grants, target, safe, first_version=(last or 0) + 1, threads=threads)
    except (OSError, duckdb.Error) as exc:
        raise ExtractError(f"the extract could not be built: {exc}"[:500]) from None
    if result.built:
        record_version(sessionmaker, project, username, result)
    return result


def record_version(sessionmaker, project: str, username: str, result: BuildResult) -> None:
    """The version row and its ``extract.built`` audit event, in one transaction."""
    m = result.manifest
    summary = {
        "version": result.version,
        "optout_lists": m["optout_lists"],
        "datasets": {
            name: {
                k: d[k]
                for k in (
                    "rows_in",
                    "removed_by_optout",
                    "removed_by_optout_per_list",
                    "removed_invalid_identifier",
                    "removed_by_filter",
                    "rows_out",
                    "source_sha256",
                    "files",
                    "pseudonymised",
                )
            }
            for name, d in m["datasets"].items()
        },
    }
    with sessionmaker() as session, session.begin():
        session.add(
            ExtractVersion(
                project_slug=project,
                username=username,
                version=result.version,
                fingerprint=m["fingerprint"],
                directory=str(result.path),
                built_at=datetime.now(UTC).replace(tzinfo=None),
                details_json=json.dumps(summary),
            )
        )
        audit.append(
            session,
            "extract.built",
            actor=username,
            project=project,
            details={"target": username, **summary},
        )
