"""Housekeeping of output checking, against the database and the blob store.

* :func:`usage` — what a person and their project hold now (the facts the quotas of
  :mod:`sde_spawner.checking.limits` are checked against);
* :func:`sweep` — expire abandoned drafts and collect unreferenced blobs and stale upload
  files, planned by the pure :func:`~sde_spawner.checking.limits.plan_sweep` (``dry_run``
  returns the plan and changes nothing); run by the service's periodic loop;
* :func:`write_aggregates` — the ``rate.limited`` audit rows of the refusals that
  :class:`~sde_spawner.checking.limits.Limits` counted instead of auditing one by one.

An expired draft was never submitted (no checker saw it): its rows are deleted and an
``export.draft.expired`` audit row says which request it was and what it declared.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from sde_spawner import audit
from sde_spawner.checking.limits import (
    Draft,
    Limits,
    LimitSettings,
    StoredFile,
    SweepPlan,
    Usage,
    plan_sweep,
)
from sde_spawner.checking.models import ExportFile, ExportRequest, ExportVersion, utcnow
from sde_spawner.checking.states import State
from sde_spawner.checking.storage import BlobStore, is_sha256

#: Requests whose declared and stored bytes count against the quotas.
HOLDING = (State.draft, State.submitted, State.in_review, State.returned, State.approved)


def usage(
    session: Session, username: str, project: str, *, exclude_request: int | None = None
) -> Usage:
    """Open drafts and held bytes of ``username`` (all projects) and of ``project``."""
    holding = [str(s) for s in HOLDING]

    def drafts(*where) -> int:
        return session.scalar(
            select(func.count(ExportRequest.id)).where(
                ExportRequest.state == str(State.draft), *where
            )
        )

    def declared(*where) -> int:
        stmt = (
            select(func.coalesce(func.sum(ExportFile.size), 0))
            .join(ExportVersion, ExportFile.version_id == ExportVersion.id)
            .join(ExportRequest, ExportVersion.request_id == ExportRequest.id)
            .where(
                ExportVersion.number == ExportRequest.current_version,
                ExportRequest.state.in_(holding),
                *where,
            )
        )
        if exclude_request is not None:
            stmt = stmt.where(ExportRequest.id != exclude_request)
        return int(session.scalar(stmt))

    stored = (
        select(func.coalesce(func.sum(ExportFile.size), 0))
        .join(ExportVersion, ExportFile.version_id == ExportVersion.id)
        .join(ExportRequest, ExportVersion.request_id == ExportRequest.id)
        .where(
            ExportFile.blob_key.is_not(None),
            ExportRequest.state.in_(holding),
            ExportRequest.project_slug == project,
        )
    )
    return Usage(
        person_open_drafts=drafts(ExportRequest.requester == username),
        project_open_drafts=drafts(ExportRequest.project_slug == project),
        person_declared_bytes=declared(ExportRequest.requester == username),
        project_declared_bytes=declared(ExportRequest.project_slug == project),
        project_stored_bytes=int(session.scalar(stored)),
    )


# --- the sweep --------------------------------------------------------------------------------


def _drafts(session: Session) -> list[Draft]:
    """Drafts with the time anything last happened to them (a change or an upload)."""
    last_upload = (
        select(ExportVersion.request_id, func.max(ExportFile.uploaded_at).label("at"))
        .join(ExportFile, ExportFile.version_id == ExportVersion.id)
        .group_by(ExportVersion.request_id)
        .subquery()
    )
    rows = session.execute(
        select(ExportRequest, last_upload.c.at)
        .outerjoin(last_upload, last_upload.c.request_id == ExportRequest.id)
        .where(ExportRequest.state == str(State.draft))
    )
    out = []
    for req, uploaded in rows:
        last = req.updated_at
        if uploaded is not None:
            uploaded = uploaded if uploaded.tzinfo else uploaded.replace(tzinfo=last.tzinfo)
            last = max(last, uploaded)
        out.append(Draft(req.id, req.project_slug, req.requester, last))
    return out


def _references(session: Session) -> dict[str, set[int]]:
    refs: dict[str, set[int]] = defaultdict(set)
    rows = session.execute(
        select(ExportFile.blob_key, ExportVersion.request_id)
        .join(ExportVersion, ExportFile.version_id == ExportVersion.id)
        .where(ExportFile.blob_key.is_not(None))
    )
    for key, request_id in rows:
        refs[key].add(request_id)
    return refs


def _temporary(entry: os.DirEntry) -> StoredFile | None:
    """An upload temporary (``.upload-*`` at the store's top level), or None."""
    if entry.is_file(follow_symlinks=False) and entry.name.startswith(".upload-"):
        st = entry.stat(follow_symlinks=False)
        return StoredFile(entry.name, st.st_mtime, st.st_size)
    return None


def scan_store(store: BlobStore) -> tuple[list[StoredFile], list[StoredFile]]:
    """``(blobs, upload temporaries)`` in the store; anything else is left alone."""
    blobs, temps = [], []
    if not store.root.is_dir():
        return blobs, temps
    for entry in os.scandir(store.root):
        if (temp := _temporary(entry)) is not None:
            temps.append(temp)
        elif entry.is_dir(follow_symlinks=False) and len(entry.name) == 2:
            for blob in os.scandir(entry.path):
                if blob.is_file(follow_symlinks=False) and is_sha256(blob.name):
                    if blob.name[:2] != entry.name:
                        continue
                    st = blob.stat(follow_symlinks=False)
                    blobs.append(StoredFile(blob.name, st.st_mtime, st.st_size))
    return blobs, temps


def plan(
    sessionmaker, store: BlobStore, settings: LimitSettings, *, now: datetime | None = None
) -> SweepPlan:
    """What :func:`sweep` would do now (nothing is changed)."""
    with sessionmaker() as s:
        drafts, refs = _drafts(s), _references(s)
    blobs, temps = scan_store(store)
    return plan_sweep(
        drafts,
        blobs,
        temps,
        refs,
        now=now or utcnow(),
        now_epoch=time.time(),
        settings=settings,
    )


def sweep(
    sessionmaker,
    store: BlobStore,
    settings: LimitSettings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> SweepPlan:
    """Expire abandoned drafts, then remove unreferenced blobs and stale upload files.

    Each draft is deleted only if it is still a draft untouched since the plan was made; a
    blob only if, just before it is unlinked, nothing references it and its modification
    time is unchanged (an upload that reuses it touches it). Returns what was done.
    """
    p = plan(sessionmaker, store, settings, now=now)
    if dry_run or not (p.expire_drafts or p.delete_blobs or p.delete_temps):
        return p
    expired = []
    with sessionmaker() as s, s.begin():
        fresh = {d.id: d for d in _drafts(s)}
        for d in p.expire_drafts:
            if d.id not in fresh or fresh[d.id].updated_at != d.updated_at:
                continue  # touched or submitted meanwhile: it lives on
            req = s.get(ExportRequest, d.id)
            files = [
                {"path": f.path, "size": f.size, "sha256": f.sha256} for f in req.version.files
            ]
            version_ids = [v.id for v in req.versions]
            s.execute(delete(ExportFile).where(ExportFile.version_id.in_(version_ids)))
            s.execute(delete(ExportVersion).where(ExportVersion.id.in_(version_ids)))
            s.execute(delete(ExportRequest).where(ExportRequest.id == d.id))
            audit.append(
                s,
                "export.draft.expired",
                actor="system",
                project=d.project,
                reason=f"draft untouched since {d.updated_at:%Y-%m-%d %H:%M} UTC: expired",
                details={"request": d.id, "requester": d.requester, "files": files[:100]},
            )
            expired.append(d)
    deleted = []
    with sessionmaker() as s:
        refs = _references(s)
    for blob in p.delete_blobs:
        path = store.path(blob.key)
        with contextlib.suppress(FileNotFoundError):
            if blob.key in refs or path.stat().st_mtime != blob.mtime:
                continue
            path.unlink()
            deleted.append(blob)
    temps = []
    for t in p.delete_temps:
        with contextlib.suppress(FileNotFoundError):
            (store.root / t.key).unlink()
            temps.append(t)
    done = SweepPlan(tuple(expired), tuple(deleted), tuple(temps))
    if deleted or temps:
        audit.append_committed(
            sessionmaker,
            "export.store.swept",
            actor="system",
            details=done.summary(),
        )
    return done


def clear_interrupted_uploads(sessionmaker, store: BlobStore) -> SweepPlan:
    """Remove every upload temporary at service start: a fresh process has no upload in
    flight, so each one is what a killed process left half-written. Never a blob (those are
    only renamed into place whole); audited like a sweep."""
    temps = []
    if store.root.is_dir():  # temporaries sit at the top level: the blobs are not walked
        temps = [t for e in os.scandir(store.root) if (t := _temporary(e)) is not None]
    removed = []
    for t in temps:
        with contextlib.suppress(FileNotFoundError):
            (store.root / t.key).unlink()
            removed.append(t)
    done = SweepPlan(delete_temps=tuple(removed))
    if removed:
        audit.append_committed(
            sessionmaker,
            "export.store.swept",
            actor="system",
            reason=f"{len(removed)} upload(s) interrupted when the service last stopped: removed",
            details=done.summary(),
        )
    return done


def write_aggregates(sessionmaker, limits: Limits, *, everything: bool = False) -> int:
    """One ``rate.limited`` row per key and closed window; returns how many were written."""
    closed = limits.closed(everything=everything)
    if not closed:
        return 0
    window = limits.settings.window_seconds
    with sessionmaker() as s, s.begin():
        for agg in closed:
            kind, *rest = agg.key
            audit.append(
                s,
                "rate.limited",
                actor=str(rest[0])[:64] if kind == "user" and rest else None,
                outcome="denied",
                reason=(
                    f"{agg.count} refused request(s) from {'='.join(map(str, agg.key))} "
                    f"within {window:g} s were counted here, not audited one by one"
                ),
                details=agg.as_details(window),
            )
    return len(closed)
