"""``sde-admin apply project.toml``: one TOML file describes a whole project.

:func:`validate` checks the whole file against the rules (and the registry's datasets) and
lists *every* problem with its field path (``members[2].role: unknown role 'owner'``);
:func:`apply_document` then makes the registry match the file through the operations of
:mod:`sde_spawner.registry.ops` (so the rules and audit events are the imperative commands'
own), removing memberships and grants the file no longer lists. :func:`apply_file` runs both
in one transaction: an invalid file changes nothing (its refusal is audited); ``dry_run``
runs the same steps and rolls them back, so the diff it prints is exactly what ``apply`` does.
The file format is documented by the worked examples in ``examples/``.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from sde_spawner import audit
from sde_spawner.registry import ops, rules
from sde_spawner.registry.models import (
    WORKSPACE_ROLES,
    Membership,
    Project,
    ProjectStatus,
)

TOP_KEYS = {
    "slug": str,
    "title": str,
    "purpose": str,
    "lay_summary": str,
    "public_benefit": str,
    "ethics_reference": str,
    "organisation": dict,
    "approval": dict,
    "agreements": list,
    "members": list,
    "datasets": list,
    "output_policy": dict,
    "limits": dict,
}
REQUIRED_TOP = ("slug", "title", "purpose", "organisation")
ORGANISATION_KEYS = {"name": str, "kind": str}
APPROVAL_KEYS = {
    "dac_reference": str,
    "dac_date": date,
    "lay_member": str,
    "lay_member_signed": date,
}
AGREEMENT_KEYS = {"reference": str, "signed": date, "start": date, "end": date, "delete_by": date}
MEMBER_KEYS = {
    "username": str,
    "name": str,
    "email": str,
    "idp_subject": str,
    "role": str,
    "training_expires": date,
}
DATASET_KEYS = {"slug": str, "title": str, "source": str, "grants": list}
GRANT_KEYS = {"member": str, "role": str, "columns": list, "filter": str}
POLICY_KEYS = {
    "required_approvals": int,
    "allowed_file_types": list,
    "cell_threshold": int,
    "dof_threshold": int,
    "zeros_are_disclosive": bool,
    "import_required_approvals": int,
    "clipboard_out": str,
    "rounding": (str, int),  # a base such as 5, or "midpoint6"
}
LIMIT_KEYS = {"cpu": (int, float), "memory": str, "idle": str}
#: Where each approval requirement lives in the file.
APPROVAL_PATHS = {
    "dac_reference": "approval.dac_reference",
    "dac_date": "approval.dac_date",
    "ethics_reference": "ethics_reference",
    "lay_summary": "lay_summary",
    "public_benefit": "public_benefit",
    "lay_member": "approval.lay_member",
    "lay_member_signed": "approval.lay_member_signed",
}
TYPE_WORDS = {
    str: "text",
    date: "a date",
    list: "a list",
    dict: "a table",
    int: "a whole number",
    bool: "true or false",
}


@dataclass
class Result:
    """What an apply did (or, dry run, would do): one line per change, in order."""

    project: str
    outcomes: list[ops.Outcome] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return any(o.changed for o in self.outcomes)

    def lines(self) -> list[str]:
        prefix = "would be " if self.dry_run else ""
        out = []
        for o in self.outcomes:
            if not o.changed and not o.status.startswith("left "):
                continue
            out.append(f"{o.label}: {prefix}{o.status}" + (f" ({o.note})" if o.note else ""))
            if o.status in ("updated", "approved"):
                out += [f"    {k}: {old!r} -> {new!r}" for k, (old, new) in o.changes.items()]
        if not out:
            return [f"project {self.project}: unchanged"]
        if self.dry_run:
            out.append("dry run: nothing was changed")
        return out


def _type_ok(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if date in kinds and hasattr(value, "hour"):  # a TOML datetime is not a date
        return False
    return isinstance(value, kinds)


def _table(value, path: str, keys: dict, problems: list[str]) -> dict:
    """Check a table's keys and value types; returns the well-typed entries."""
    if not isinstance(value, dict):
        problems.append(f"{path}: must be a table")
        return {}
    good = {}
    for key, v in value.items():
        where = f"{path}.{key}" if path else key
        if key not in keys:
            problems.append(f"{where}: unknown field")
        elif not _type_ok(v, keys[key]):
            kind = keys[key][0] if isinstance(keys[key], tuple) else keys[key]
            problems.append(f"{where}: must be {TYPE_WORDS.get(kind, 'a number')}, not {v!r}")
        else:
            good[key] = v
    return good


def _require(table: dict, path: str, keys, problems: list[str]) -> None:
    """``path.key: missing`` for each required key absent (and not already reported)."""
    for key in keys:
        where = f"{path}.{key}" if path else key
        if key not in table and not any(p.startswith(f"{where}:") for p in problems):
            problems.append(f"{where}: missing")


def _at(path: str, problems: list[rules.Problem], to: list[str], names: dict | None = None) -> None:
    for name, message in problems:
        sub = (names or {}).get(name, name)
        to.append(f"{path}.{sub}: {message}" if path else f"{sub}: {message}")


def _array(doc: dict, key: str, keys: dict, problems: list[str]) -> list[tuple[str, dict]]:
    items = doc.get(key, [])
    out = []
    for i, item in enumerate(items):
        path = f"{key}[{i}]"
        out.append((path, _table(item, path, keys, problems)))
    return out


def validate(session: Session, doc: dict, base_dir: Path, today: date | None = None) -> list[str]:
    """Every problem of the file, each with its field path; an empty list means valid."""
    today = today or date.today()
    problems: list[str] = []
    doc = _table(doc, "", TOP_KEYS, problems)
    _require(doc, "", REQUIRED_TOP, problems)
    slug = doc.get("slug")
    if slug is not None:
        _at("", rules.slug_problems(slug, "project"), problems)
    pp: list[rules.Problem] = []
    if "purpose" in doc:
        rules.parse_purpose(doc["purpose"], pp)
    _at("", pp, problems)

    org = _table(doc.get("organisation", {}), "organisation", ORGANISATION_KEYS, problems)
    if "organisation" in doc:
        _require(org, "organisation", ("name", "kind"), problems)
    kp: list[rules.Problem] = []
    rules.parse_organisation_kind(org.get("kind"), kp)
    _at("organisation", kp, problems)

    policy = _table(doc.get("output_policy", {}), "output_policy", POLICY_KEYS, problems)
    ra = policy.get("required_approvals")
    if ra is not None and not 1 <= ra <= 5:
        problems.append("output_policy.required_approvals: must be 1 to 5")
    _at(
        "output_policy",
        rules.output_policy_problems(
            {k: v for k, v in policy.items() if k != "required_approvals"}
        ),
        problems,
    )
    limits = _table(doc.get("limits", {}), "limits", LIMIT_KEYS, problems)
    _at("limits", rules.limits_problems(limits.get("cpu"), limits.get("memory")), problems)
    if "idle" in limits and rules.parse_duration(limits["idle"]) is None:
        problems.append(f"limits.idle: must look like '30m', '8h' or '90s', not {limits['idle']!r}")
    else:
        _at("limits", rules.idle_problems(rules.parse_duration(limits.get("idle"))), problems)

    _validate_approval(session, doc, slug, today, problems)
    _validate_agreements(doc, problems)
    workspace_roles = _validate_members(doc, problems)
    _validate_datasets(session, doc, base_dir, workspace_roles, problems)
    return problems


def _validate_approval(session, doc, slug, today, problems) -> None:
    existing = (
        session.scalar(select(Project).where(Project.slug == slug))
        if isinstance(slug, str)
        else None
    )
    if "approval" not in doc:
        if existing is not None and existing.status == ProjectStatus.approved:
            problems.append(
                "approval: missing, but the project is approved in the registry (to stop "
                "work on it, use `sde-admin project suspend`)"
            )
        return
    approval = _table(doc["approval"], "approval", APPROVAL_KEYS, problems)
    draft = Project(
        dac_reference=approval.get("dac_reference"),
        dac_approved_on=approval.get("dac_date"),
        ethics_reference=doc.get("ethics_reference"),
        lay_summary=doc.get("lay_summary", ""),
        public_benefit=doc.get("public_benefit", ""),
        lay_member_name=approval.get("lay_member"),
        lay_member_signed_on=approval.get("lay_member_signed"),
    )
    for name, message in rules.approval_problems(draft, today):
        path = APPROVAL_PATHS[name]
        if not any(p.startswith(f"{path}:") for p in problems):
            problems.append(f"{path}: {message} (needed for approval)")


def _validate_agreements(doc, problems) -> None:
    refs = set()
    for path, a in _array(doc, "agreements", AGREEMENT_KEYS, problems):
        _require(a, path, AGREEMENT_KEYS, problems)
        if a.get("reference") in refs:
            problems.append(f"{path}.reference: {a['reference']!r} is listed twice")
        refs.add(a.get("reference"))
        _at(
            path,
            rules.agreement_problems(
                a.get("signed"), a.get("start"), a.get("end"), a.get("delete_by")
            ),
            problems,
        )


def _validate_members(doc, problems) -> dict[str, list[str]]:
    """Returns username -> the workspace roles the file gives them."""
    seen: set[tuple] = set()
    details: dict[str, tuple] = {}
    roles: dict[str, list[str]] = {}
    subjects: dict[str, str] = {}
    for path, m in _array(doc, "members", MEMBER_KEYS, problems):
        _require(m, path, ("username", "role"), problems)
        user = m.get("username")
        if user is not None:
            _at(path, rules.username_problems(user), problems)
        rp: list[rules.Problem] = []
        role = rules.parse_role(m["role"], rp) if "role" in m else None
        _at(path, rp, problems)
        if (user, role) in seen:
            problems.append(f"{path}: {user} is listed twice as {role}")
        seen.add((user, role))
        if "idp_subject" in m:
            _at(path, rules.idp_subject_problems(m["idp_subject"]), problems)
            holder = subjects.setdefault(m["idp_subject"], user)
            if holder != user:
                problems.append(f"{path}.idp_subject: already given to {holder} in this file")
        facts = (m.get("name"), m.get("email"), m.get("training_expires"), m.get("idp_subject"))
        if user in details and details[user] != facts:
            problems.append(
                f"{path}: {user}'s name, email, training or idp_subject differ from an earlier "
                "entry"
            )
        details.setdefault(user, facts)
        if role in WORKSPACE_ROLES:
            roles.setdefault(user, []).append(role.value)
    return roles


def _validate_datasets(session, doc, base_dir, workspace_roles, problems) -> None:
    seen_ds = set()
    for path, d in _array(doc, "datasets", DATASET_KEYS, problems):
        dslug = d.get("slug")
        if dslug is None:
            _require(d, path, ("slug",), problems)
            continue
        _at(path, rules.slug_problems(dslug, "dataset"), problems)
        if dslug in seen_ds:
            problems.append(f"{path}.slug: {dslug!r} is listed twice")
        seen_ds.add(dslug)
        known = None
        if "source" in d:
            source = (base_dir / d["source"]).resolve()
            if source.suffix.lower() not in (".csv", ".parquet"):
                problems.append(f"{path}.source: must be a .csv or .parquet file")
            else:
                try:
                    known = rules.dataset_columns(str(source))
                except (OSError, UnicodeDecodeError) as exc:
                    problems.append(f"{path}.source: cannot read {source}: {exc}")
        else:
            ds = ops.get_dataset(session, dslug)
            if ds is None:
                problems.append(
                    f"{path}.slug: no such dataset: {dslug} "
                    "(register it with `sde-admin dataset add` or give its source)"
                )
            else:
                kp: list[rules.Problem] = []
                known = ops.known_columns(ds, kp)
                _at(path, kp, problems)
        seen_grants = set()
        for i, g in enumerate(d.get("grants", [])):
            gpath = f"{path}.grants[{i}]"
            g = _table(g, gpath, GRANT_KEYS, problems)
            _require(g, gpath, ("member", "columns"), problems)
            user = g.get("member")
            roles = workspace_roles.get(user, [])
            role = g.get("role")
            if user is not None and not roles:
                problems.append(
                    f"{gpath}.member: {user} is not listed in members "
                    "as a researcher or project_lead"
                )
            elif role is None and len(roles) > 1:
                problems.append(f"{gpath}.role: {user} has several workspace roles; say which")
            elif role is not None and role not in roles:
                problems.append(f"{gpath}.role: {user} is not a {role} in members")
            key = (user, role or (roles[0] if roles else None))
            if key in seen_grants:
                problems.append(f"{gpath}: {user} is granted {dslug} twice")
            seen_grants.add(key)
            if "columns" in g:
                _at(gpath, rules.grant_problems(g["columns"], g.get("filter", ""), known), problems)


def apply_document(
    session: Session, actor: str, doc: dict, base_dir: Path, today=None
) -> list[ops.Outcome]:
    """Make the registry match a *valid* document; returns every outcome, in order."""
    slug = doc["slug"]
    out: list[ops.Outcome] = []
    for d in doc.get("datasets", []):
        if "source" in d:
            source = str((base_dir / d["source"]).resolve())
            out.append(ops.add_dataset(session, actor, d["slug"], source, title=d.get("title")))
    policy = dict(doc.get("output_policy", {}))
    required = policy.pop("required_approvals", 2)  # the file is the whole project
    limits = doc.get("limits", {})
    out.append(
        ops.add_project(
            session,
            actor,
            slug,
            title=doc["title"],
            purpose=doc["purpose"],
            ethics_reference=doc.get("ethics_reference"),
            lay_summary=doc.get("lay_summary", ""),
            public_benefit=doc.get("public_benefit", ""),
            organisation=doc["organisation"]["name"],
            organisation_kind=doc["organisation"]["kind"],
            required_approvals=required,
            output_policy=policy,
            cpu_limit=limits.get("cpu", ops.CLEAR),
            mem_limit=limits.get("memory", ops.CLEAR),
            idle_timeout=rules.parse_duration(limits["idle"]) if "idle" in limits else ops.CLEAR,
            today=today,
        )
    )
    project = out[-1].obj
    for a in doc.get("agreements", []):
        out.append(
            ops.add_agreement(
                session,
                actor,
                slug,
                a["reference"],
                signed=a["signed"],
                start=a["start"],
                end=a["end"],
                delete_by=a["delete_by"],
            )
        )
    if "approval" in doc:
        if project.status in (ProjectStatus.suspended, ProjectStatus.closed):
            out.append(
                ops.Outcome(
                    f"project {slug}",
                    f"left {project.status.value}",
                    note="apply does not lift a suspension; `sde-admin project approve` does",
                )
            )
        else:
            ap = doc["approval"]
            out.append(
                ops.approve_project(
                    session,
                    actor,
                    slug,
                    dac_reference=ap["dac_reference"],
                    dac_date=ap["dac_date"],
                    lay_member=ap["lay_member"],
                    lay_member_signed=ap["lay_member_signed"],
                    today=today,
                )
            )
    out += _apply_members(session, actor, slug, project, doc.get("members", []))
    out += _apply_grants(session, actor, slug, project, doc)
    return out


def _apply_members(session, actor, slug, project, members) -> list[ops.Outcome]:
    out = []
    done = set()
    for m in members:
        if m["username"] not in done:
            done.add(m["username"])
            out.append(
                ops.add_person(
                    session,
                    actor,
                    m["username"],
                    display_name=m.get("name"),
                    email=m.get("email"),
                    training_expires=m.get("training_expires"),
                    idp_subject=m.get("idp_subject"),
                )
            )
    wanted = list(dict.fromkeys((m["username"], m["role"]) for m in members))
    for user, role in wanted:
        out.append(ops.add_member(session, actor, slug, user, role))
    session.flush()
    for m in list(session.scalars(select(Membership).filter_by(project_id=project.id))):
        if (m.person.username, m.role.value) not in wanted:
            out.append(ops.remove_member(session, actor, slug, m.person.username, m.role.value))
    return out


def _apply_grants(session, actor, slug, project, doc) -> list[ops.Outcome]:
    roles: dict[str, list[str]] = {}
    for m in doc.get("members", []):
        if m["role"] in {r.value for r in WORKSPACE_ROLES}:
            roles.setdefault(m["username"], []).append(m["role"])
    out = []
    wanted = set()
    for d in doc.get("datasets", []):
        for g in d.get("grants", []):
            role = g.get("role") or roles[g["member"]][0]
            wanted.add((g["member"], role, d["slug"]))
            out.append(
                ops.add_grant(
                    session,
                    actor,
                    slug,
                    g["member"],
                    d["slug"],
                    columns=g["columns"],
                    row_filter=g.get("filter", ""),
                    role=role,
                )
            )
    session.flush()
    for m in list(session.scalars(select(Membership).filter_by(project_id=project.id))):
        for g in list(m.grants):
            if (m.person.username, m.role.value, g.dataset.slug) not in wanted:
                out.append(
                    ops.remove_grant(
                        session, actor, slug, m.person.username, g.dataset.slug, role=m.role.value
                    )
                )
    return out


def load(path: Path) -> tuple[dict, bytes]:
    """The parsed file and its bytes; :class:`ops.RegistryError` when it is not TOML."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ops.RegistryError("project.apply", [f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8")), raw
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ops.RegistryError("project.apply", [f"{path}: not valid TOML: {exc}"]) from None


def _run(session, actor, path: Path, doc: dict, raw: bytes, today) -> Result:
    problems = validate(session, doc, path.parent, today)
    slug = doc.get("slug") if isinstance(doc.get("slug"), str) else None
    if problems:
        raise ops.RegistryError(
            "project.apply", problems, actor=actor, project=slug, target=path.name
        )
    result = Result(slug, apply_document(session, actor, doc, path.parent, today))
    if result.changed:
        audit.append(
            session,
            "project.applied",
            actor=actor,
            project=slug,
            details={
                "file": path.name,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "changes": [o.line() for o in result.outcomes if o.changed][:200],
            },
        )
    return result


def apply_file(sessionmaker, actor: str, path: str | Path, *, dry_run=False, today=None) -> Result:
    """Validate and apply one project file in one transaction (rolled back when ``dry_run``)."""
    path = Path(path)
    try:
        doc, raw = load(path)
    except ops.RegistryError as exc:
        exc.actor, exc.target = actor, path.name
        with sessionmaker() as s, s.begin():
            ops.record_denial(s, exc)
        raise
    if not dry_run:
        return ops.perform(sessionmaker, _run, actor, path, doc, raw, today)
    with sessionmaker() as session:
        try:
            result = _run(session, actor, path, doc, raw, today)
        finally:
            session.rollback()
    result.dry_run = True
    return result
