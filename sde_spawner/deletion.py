"""Deletion at a project's data-deletion date, and the signed certificate that records it.

A project is *due* when the latest data-deletion date of its agreements has come (a later
agreement extends it). What a deletion removes:

* the project's home volumes: the Docker volumes the spawner labelled with the project
  (``org.sde-tre.project``) under this hub's object prefix;
* every extract version: each directory under ``{extracts_dir}/{project}/`` (per person, and
  any ``.old-``/``.building-`` leftover);
* unreleased export blobs: blobs referenced only by export requests of the project that were
  never approved or released. Approved and released outputs stay.

:func:`plan` is pure (facts in, a :class:`Deletion` out) and so is :func:`blobs_to_delete`;
:func:`gather` reads the facts (database, Docker, disk) and :func:`execute` measures, deletes,
then signs and stores the certificate and audits ``deletion.completed``. A project that has a
certificate for its agreement and nothing left to delete is not planned again, so a second
run finds nothing.

Hashes are taken before deletion, per file (SHA-256 of each regular file; a volume is read as
the tar stream the Docker API serves for a created, never started, throwaway container that
mounts it read-only). An item's ``sha256`` is the SHA-256 of its sorted ``sha256 size path``
lines (:func:`tree_digest`); a blob's is the SHA-256 of its bytes (its key). The certificate is
canonical JSON signed with the service's Ed25519 release signing key
(``{SDE_STATE_DIR}/release-signing.key``, :mod:`sde_spawner.checking.manifest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import select

from sde_spawner import audit
from sde_spawner.checking import manifest as signing
from sde_spawner.checking.models import ExportFile, ExportRequest, ExportVersion
from sde_spawner.checking.storage import BlobStore
from sde_spawner.containers import LABEL_PREFIX
from sde_spawner.registry.models import DeletionCertificate, Project

FORMAT = "sde-deletion-certificate/1"
HASH_METHOD = (
    "sha256 of each regular file; item sha256 = sha256 of its sorted 'sha256 size path' lines; "
    "volumes read as the Docker API's tar stream of a throwaway container mounting them; "
    "blobs: sha256 of the bytes"
)
#: Export request states whose files stay: the checkers approved them.
KEPT_STATES = frozenset({"approved", "released"})
CHUNK = 1024 * 1024


# ---- facts and the pure planner ----------------------------------------------------------
@dataclass(frozen=True)
class ProjectFacts:
    slug: str
    agreement: str  # reference of the agreement whose deletion date governs
    delete_by: date
    certified: bool = False  # a certificate for this agreement exists already


@dataclass(frozen=True)
class Item:
    kind: str  # volume | extract | blob
    name: str


@dataclass(frozen=True)
class Deletion:
    project: str
    agreement: str
    delete_by: date
    items: tuple[Item, ...] = ()


@dataclass(frozen=True)
class BlobRef:
    blob_key: str
    project: str
    state: str


def governing(agreements: list[tuple[str, date]]) -> tuple[str, date] | None:
    """The (reference, date) with the latest data-deletion date, or None."""
    return max(agreements, key=lambda a: (a[1], a[0]), default=None)


def blobs_to_delete(refs: list[BlobRef], project: str) -> list[str]:
    """Keys referenced by the project's never-approved requests and by nothing else."""
    mine = {r.blob_key for r in refs if r.project == project and r.state not in KEPT_STATES}
    kept = {r.blob_key for r in refs if r.project != project or r.state in KEPT_STATES}
    return sorted(mine - kept)


def plan(facts: ProjectFacts, today: date, *, volumes, extracts, blobs) -> Deletion | None:
    """What deleting the project's data would remove, or None when it is not due (or was
    deleted and certified already and nothing came back)."""
    if facts.delete_by > today:
        return None
    items = tuple(
        [Item("volume", v) for v in sorted(volumes)]
        + [Item("extract", e) for e in sorted(extracts)]
        + [Item("blob", b) for b in sorted(blobs)]
    )
    if not items and facts.certified:
        return None
    return Deletion(facts.slug, facts.agreement, facts.delete_by, items)


# ---- hashing ------------------------------------------------------------------------------
def tree_digest(files: list[dict]) -> str:
    lines = sorted(f"{f['sha256']} {f['size']} {f['path']}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _hash_stream(fh) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while chunk := fh.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def hash_directory(root: Path) -> list[dict]:
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            with p.open("rb") as fh:
                digest, size = _hash_stream(fh)
            files.append({"path": str(p.relative_to(root)), "size": size, "sha256": digest})
    return sorted(files, key=lambda f: f["path"])


def hash_tar(fileobj) -> list[dict]:
    """Per-file hashes of a tar stream, paths without their first component (the mount)."""
    files = []
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            digest, size = _hash_stream(tar.extractfile(member))
            path = member.name.split("/", 1)[1] if "/" in member.name else member.name
            files.append({"path": path, "size": size, "sha256": digest})
    return sorted(files, key=lambda f: f["path"])


def hash_volume(docker, volume: str, image: str) -> list[dict]:
    """Per-file hashes of a volume, read through a created (never started) container."""
    container = docker.containers.create(
        image,
        command=["true"],
        network_mode="none",
        labels={f"{LABEL_PREFIX}.purpose": "deletion-hash"},
        volumes={volume: {"bind": "/v", "mode": "ro"}},
    )
    try:
        stream, _stat = container.get_archive("/v/")
        with tempfile.TemporaryFile() as tmp:
            for chunk in stream:
                tmp.write(chunk)
            tmp.seek(0)
            return hash_tar(tmp)
    finally:
        container.remove(force=True)


# ---- gathering facts ----------------------------------------------------------------------
@dataclass
class Site:
    """Where this hub keeps a project's data."""

    state_dir: str
    extracts_dir: str
    prefix: str = "sde"
    image: str = "sde-notebook:latest"
    docker: object = None  # a docker.DockerClient, needed for volumes

    @classmethod
    def from_env(cls) -> Site:
        """This hub's places, from the variables jupyterhub_config.py reads too."""
        state = os.environ.get("SDE_STATE_DIR", "var")
        return cls(
            state_dir=state,
            extracts_dir=os.environ.get("SDE_EXTRACTS_DIR") or os.path.join(state, "extracts"),
            prefix=os.environ.get("SDE_OBJECT_PREFIX", "sde"),
            image=os.environ.get("SDE_WORKSPACE_IMAGE", "sde-notebook:latest"),
        )

    @property
    def store(self) -> BlobStore:
        return BlobStore.for_state_dir(self.state_dir)


def project_facts(session) -> list[ProjectFacts]:
    out = []
    for p in session.scalars(select(Project).order_by(Project.slug)):
        gov = governing([(a.reference, a.data_deletion_on) for a in p.agreements])
        if gov is None:
            continue
        certified = session.scalar(
            select(DeletionCertificate.id).filter_by(
                project_slug=p.slug, agreement_reference=gov[0]
            )
        )
        out.append(ProjectFacts(p.slug, gov[0], gov[1], certified is not None))
    return out


def blob_refs(session) -> list[BlobRef]:
    rows = session.execute(
        select(ExportFile.blob_key, ExportRequest.project_slug, ExportRequest.state)
        .join(ExportVersion, ExportFile.version_id == ExportVersion.id)
        .join(ExportRequest, ExportVersion.request_id == ExportRequest.id)
        .where(ExportFile.blob_key.is_not(None))
    )
    return [BlobRef(k, p, s) for k, p, s in rows]


def project_volumes(site: Site, slug: str) -> list[str]:
    if site.docker is None:
        return []
    flt = {"label": [f"{LABEL_PREFIX}.managed-by={site.prefix}", f"{LABEL_PREFIX}.project={slug}"]}
    return sorted(v.name for v in site.docker.volumes.list(filters=flt))


def project_extracts(site: Site, slug: str) -> list[str]:
    root = Path(site.extracts_dir) / slug
    if not root.is_dir():
        return []
    return sorted(f"{slug}/{d.name}" for d in root.iterdir() if d.is_dir())


def gather(session, site: Site, today: date) -> list[Deletion]:
    """Every due deletion, as the planner sees it."""
    refs = blob_refs(session)
    out = []
    for facts in project_facts(session):
        if facts.delete_by > today:
            continue
        blobs = [k for k in blobs_to_delete(refs, facts.slug) if site.store.exists(k)]
        d = plan(
            facts,
            today,
            volumes=project_volumes(site, facts.slug),
            extracts=project_extracts(site, facts.slug),
            blobs=blobs,
        )
        if d is not None:
            out.append(d)
    return out


# ---- executing ----------------------------------------------------------------------------
@dataclass
class Result:
    certificate_id: int
    deleted: list[dict] = field(default_factory=list)
    not_deleted: list[dict] = field(default_factory=list)


def _make_writable(root: Path) -> None:
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o700)
        for name in dirs:
            os.chmod(Path(dirpath) / name, 0o700)
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, 0o600)


def _delete_volume(site: Site, name: str) -> dict:
    for c in site.docker.containers.list(all=True, filters={"volume": name}):
        if c.status == "running":
            raise RuntimeError(f"workspace container {c.name} is still running")
        c.remove(force=True)
    files = hash_volume(site.docker, name, site.image)
    site.docker.volumes.get(name).remove(force=True)
    return {"files": files}


def _delete_extract(site: Site, name: str) -> dict:
    path = Path(site.extracts_dir) / name
    files = hash_directory(path)
    _make_writable(path)
    shutil.rmtree(path)
    parent = path.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
    return {"files": files}


def _delete_blob(site: Site, key: str) -> dict:
    path = site.store.path(key)
    with path.open("rb") as fh:
        digest, size = _hash_stream(fh)
    path.unlink()
    return {"files": [{"path": key, "size": size, "sha256": digest}], "sha256": digest}


_DELETERS = {"volume": _delete_volume, "extract": _delete_extract, "blob": _delete_blob}


def execute(sessionmaker, deletion: Deletion, site: Site, *, actor: str, run_id: str) -> Result:
    """Hash and delete every item, then sign, store and audit the certificate."""
    started = datetime.now(UTC)
    deleted, not_deleted = [], []
    for item in deletion.items:
        try:
            info = _DELETERS[item.kind](site, item.name)
        except Exception as exc:  # one stubborn item does not stop the others; it is listed
            not_deleted.append({"kind": item.kind, "name": item.name, "reason": str(exc)[:500]})
            continue
        files = info["files"]
        deleted.append(
            {
                "kind": item.kind,
                "name": item.name,
                "size": sum(f["size"] for f in files),
                "sha256": info.get("sha256") or tree_digest(files),
                "files": files,
            }
        )
    finished = datetime.now(UTC)
    body = {
        "format": FORMAT,
        "project": deletion.project,
        "agreement": {
            "reference": deletion.agreement,
            "data_deletion_on": deletion.delete_by.isoformat(),
        },
        "run": {
            "id": run_id,
            "actor": actor,
            "host": socket.gethostname(),
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
        },
        "hash_method": HASH_METHOD,
        "deleted": deleted,
        "not_deleted": not_deleted,
        "kept": "outputs of approved and released export requests",
    }
    key = signing.load_or_create_key(site.state_dir)
    text = signing.canonical(body)
    with sessionmaker() as session, session.begin():
        cert = DeletionCertificate(
            project_slug=deletion.project,
            agreement_reference=deletion.agreement,
            run_id=run_id,
            created_at=finished.replace(tzinfo=None),
            body=text,
            signature=signing.sign(key, text),
            public_key=signing.public_key_pem(key),
        )
        session.add(cert)
        session.flush()
        audit.append(
            session,
            "deletion.completed",
            actor=actor,
            project=deletion.project,
            outcome="allowed" if not not_deleted else "error",
            details={
                "certificate": cert.id,
                "run": run_id,
                "agreement": deletion.agreement,
                "deleted": [f"{d['kind']}:{d['name']}" for d in deleted],
                "not_deleted": [f"{d['kind']}:{d['name']}" for d in not_deleted],
            },
        )
        cert_id = cert.id
    return Result(cert_id, deleted, not_deleted)


def new_run_id() -> str:
    return uuid.uuid4().hex


# ---- verification -------------------------------------------------------------------------
def signing_public_key(state_dir: str) -> str:
    """The PEM public key of the service's signing key (never creates one)."""
    path = Path(state_dir) / signing.KEY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no signing key at {path}")
    return signing.public_key_pem(signing.load_or_create_key(state_dir))


def certificate_problems(cert: DeletionCertificate, public_key_pem: str) -> list[str]:
    """Why a stored certificate is not genuine (empty: it verifies)."""
    problems = []
    if not signing.verify(public_key_pem, cert.body, cert.signature):
        problems.append("the signature does not match the certificate's content")
    if cert.public_key.strip() != public_key_pem.strip():
        problems.append("the certificate names a key that is not the service's signing key")
    try:
        body = json.loads(cert.body)
    except ValueError:
        return [*problems, "the certificate body is not JSON"]
    if body.get("project") != cert.project_slug:
        problems.append("the project column does not match the signed content")
    if (body.get("agreement") or {}).get("reference") != cert.agreement_reference:
        problems.append("the agreement column does not match the signed content")
    if (body.get("run") or {}).get("id") != cert.run_id:
        problems.append("the run column does not match the signed content")
    return problems


def due_today() -> date:
    return datetime.now(UTC).date()
