"""Signed release manifests: what was released, to whom, approved by whom (Ed25519), and the
checks applied to each file (:func:`build_manifest`: the rule set and its thresholds, the
automated findings, every override with the checker who made it and their comment).

A manifest is a JSON object serialised canonically (sorted keys, compact, ASCII; see
:func:`sde_spawner.audit.canonical_json`), so its bytes are a function of its content and a
detached signature over those bytes can be checked by anyone with the service's public key::

    text = canonical(manifest)                 # str, the bytes served as manifest.json
    sig = sign(key, text)                      # base64 Ed25519 signature, manifest.sig
    verify(public_key_pem, text, sig) -> bool

The signing key is kept in ``{SDE_STATE_DIR}/release-signing.key`` (PKCS#8 PEM, mode 0600),
created on first use; the public key is served at ``{prefix}api/release-key``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sde_spawner.audit.canonical import canonical_json, format_timestamp

if TYPE_CHECKING:
    from sde_spawner.checking.models import ExportRequest
    from sde_spawner.checking.policies import AutomatedChecks

#: /2: each file carries the record of its checks (rule set, findings, overrides).
FORMAT = "sde-release-manifest/2"
KEY_FILE = "release-signing.key"


def canonical(manifest: dict) -> str:
    """The canonical text of a manifest (what is signed and served)."""
    return canonical_json(manifest)


def build_manifest(
    req: ExportRequest,
    required: int,
    checks: AutomatedChecks | None = None,
    overrides: Mapping[tuple[str, str], list[str]] | None = None,
) -> dict:
    """The release manifest of an approved request (pure: built from its rows).

    Beside what was released and who approved it, a machine-readable record of the checks
    applied: the rule set and its settings (``checks``: thresholds, zeros, rounding), and for
    each file the automated findings, the status they add up to, and every override — a
    checker who approved the file although rules failed, the rules (``overrides`` maps
    (checker, sha256) to them, as each checker's audited review recorded them) and the comment
    they gave. Without ``checks`` (no automated checks were run) the status is ``not_run``.
    """
    overrides = overrides or {}
    version = req.version
    reviews = sorted(
        (r for r in version.reviews if r.submitted_at is not None), key=lambda r: r.checker
    )
    by_id = {f.id: f for f in version.files}
    return {
        "format": FORMAT,
        "request": req.number,  # the requester's number, not the global id (a channel)
        "project": req.project_slug,
        "requester": req.requester,
        "version": version.number,
        "justification": version.justification,
        "submitted_at": format_timestamp(version.submitted_at) if version.submitted_at else None,
        "approved_at": format_timestamp(req.decided_at) if req.decided_at else None,
        "required_approvals": required,
        "checks": {
            "rule_set": checks.rule_set if checks else None,
            "rules": dict(checks.rules) if checks else None,
        },
        "files": [
            {
                "path": f.path,
                "description": f.description,
                "size": f.size,
                "sha256": f.sha256,
                "checks": _file_checks(f, checks, reviews, overrides),
            }
            for f in version.files
        ],
        "reviews": [
            {
                "checker": r.checker,
                "submitted_at": format_timestamp(r.submitted_at),
                "decisions": [
                    {
                        "path": by_id[d.file_id].path,
                        "sha256": by_id[d.file_id].sha256,
                        "decision": d.decision,
                        "reason_code": d.reason_code,
                        "comment": d.comment,
                    }
                    for d in sorted(r.decisions, key=lambda d: by_id[d.file_id].position)
                ],
            }
            for r in reviews
        ],
    }


def _file_checks(f, checks, reviews, overrides) -> dict:
    record = (checks.files.get(f.sha256) if checks else None) or {}
    return {
        "status": record.get("status", "not_run"),
        "findings": [dict(x) for x in record.get("findings", [])],
        "overrides": [
            {
                "checker": r.checker,
                "rules": list(overrides[(r.checker, f.sha256)]),
                "comment": d.comment,
                "at": format_timestamp(r.submitted_at),
            }
            for r in reviews
            for d in r.decisions
            if d.file_id == f.id and (r.checker, f.sha256) in overrides
        ],
    }


def load_or_create_key(state_dir: str | os.PathLike) -> Ed25519PrivateKey:
    """The service's signing key; created 0600 (atomically, once) if there is none."""
    path = Path(state_dir) / KEY_FILE
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key first: use theirs
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return _load(path)


def _load(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def sign(key: Ed25519PrivateKey, text: str | bytes) -> str:
    """Base64 detached Ed25519 signature of the manifest text."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify(public_key: str | bytes | Ed25519PublicKey, text: str | bytes, signature: str) -> bool:
    """True if ``signature`` is the service's signature of exactly ``text``.

    ``public_key`` is the PEM served at ``api/release-key`` (or a key object). The text must
    also be canonical: a re-serialised (even equivalent) manifest does not verify.
    """
    if isinstance(public_key, Ed25519PublicKey):
        pub = public_key
    else:
        pem = public_key.encode("ascii") if isinstance(public_key, str) else public_key
        loaded = serialization.load_pem_public_key(pem)
        if not isinstance(loaded, Ed25519PublicKey):
            return False
        pub = loaded
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        if canonical(json.loads(data)) != data.decode("utf-8"):
            return False
        pub.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
