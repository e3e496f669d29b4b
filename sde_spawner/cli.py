"""``sde-admin``: administer the registry (people, projects, agreements, members, datasets,
grants), the host firewall and the demo; ``sde-admin audit ...`` reads the audit trail.

Every command is idempotent (``add`` creates or updates, and says which), validates its input
with one clear error line, and writes its audit event in the same transaction as the change.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from datetime import date

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from sde_spawner import audit
from sde_spawner.containers import SLUG_RE
from sde_spawner.datasets.cli import attach as attach_data_commands
from sde_spawner.datasets.extract import ExtractError, check_identifier, parse_row_filter
from sde_spawner.db import DEFAULT_DB_URL, open_db
from sde_spawner.registry.models import (
    FORBIDDEN_PURPOSES,
    Agreement,
    Dataset,
    Grant,
    Membership,
    Person,
    PersonStatus,
    Project,
    ProjectStatus,
    Purpose,
    Role,
)

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,62}$")


class Ctx:
    def __init__(self, db_url: str):
        self.db_url = db_url
        self._sm = None

    @property
    def sessionmaker(self):
        if self._sm is None:
            try:
                self._sm = open_db(self.db_url)
            except SQLAlchemyError as exc:
                raise click.ClickException(f"cannot open database {self.db_url}: {exc}") from None
        return self._sm


def actor() -> str:
    return os.environ.get("SDE_ADMIN") or f"admin:{getpass.getuser()}"


def _date(value: str | None, what: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{what} must be a date like 2026-12-31, not {value!r}") from None


def _slug(value: str, what: str = "slug") -> str:
    if not SLUG_RE.match(value or ""):
        raise click.BadParameter(
            f"{what} {value!r} must be 3-40 characters: lower-case letters, digits and '-', "
            "starting with a letter"
        )
    return value


def _username(value: str) -> str:
    if not USERNAME_RE.match(value or ""):
        raise click.BadParameter(
            f"username {value!r} must be 1-63 characters: lower-case letters, digits, '.', '_', "
            "'@' or '-'"
        )
    return value


def _changes(obj, values: dict) -> dict:
    """Set the given (non-None) values on obj; return {field: [old, new]} for those changed."""
    changed = {}
    for key, new in values.items():
        if new is None:
            continue
        old = getattr(obj, key)
        if old != new:
            changed[key] = [_plain(old), _plain(new)]
            setattr(obj, key, new)
    return changed


def _plain(v):
    if isinstance(v, date):
        return v.isoformat()
    if hasattr(v, "value"):
        return v.value
    return v


def _upsert(session, model, lookup: dict, values: dict, action: str, project=None, label=""):
    """Create or update one row and audit it in the same transaction; returns a status word."""
    obj = session.scalar(select(model).filter_by(**lookup))
    if obj is None:
        obj = model(**lookup, **{k: v for k, v in values.items() if v is not None})
        session.add(obj)
        session.flush()
        audit.append(
            session,
            f"{action}.created",
            actor=actor(),
            project=project,
            details={"target": label, **{k: _plain(v) for k, v in values.items() if v is not None}},
        )
        return obj, "created"
    changed = _changes(obj, values)
    if changed:
        session.flush()
        audit.append(
            session,
            f"{action}.updated",
            actor=actor(),
            project=project,
            details={"target": label, "changes": changed},
        )
        return obj, "updated"
    return obj, "unchanged"


def _need(session, model, what: str, **lookup):
    obj = session.scalar(select(model).filter_by(**lookup))
    if obj is None:
        raise click.ClickException(f"no such {what}: {next(iter(lookup.values()))}")
    return obj


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_url",
    envvar="SDE_DB_URL",
    default=DEFAULT_DB_URL,
    show_default=True,
    help="Registry database URL (env SDE_DB_URL).",
)
@click.pass_context
def main(ctx, db_url):
    """Administer the Trusted Research Environment registry."""
    ctx.obj = Ctx(db_url)


@main.command()
@click.pass_obj
def init(obj: Ctx):
    """Create or upgrade the database schema (idempotent)."""
    obj.sessionmaker  # noqa: B018 - opening migrates
    click.echo(f"database ready: {obj.db_url}")


# ---- people --------------------------------------------------------------------------
@main.group()
def person():
    """Researchers, checkers and leads: accounts, training, suspension."""


@person.command("add")
@click.argument("username")
@click.option("--name", "display_name", help="Display name.")
@click.option("--email")
@click.option("--training-expires", help="Date the data protection training expires (ISO).")
@click.pass_obj
def person_add(obj: Ctx, username, display_name, email, training_expires):
    """Create a person, or update the given fields."""
    _username(username)
    values = {
        "display_name": display_name,
        "email": email,
        "training_expires": _date(training_expires, "--training-expires"),
    }
    with obj.sessionmaker.begin() as s:
        _, status = _upsert(s, Person, {"username": username}, values, "person", label=username)
    click.echo(f"person {username}: {status}")


def _set_person_status(obj: Ctx, username: str, status: PersonStatus, reason: str):
    with obj.sessionmaker.begin() as s:
        p = _need(s, Person, "person", username=username)
        if p.status == status:
            click.echo(f"person {username}: already {status.value}")
            return
        p.status = status
        audit.append(
            s,
            f"person.{status.value}",
            actor=actor(),
            reason=reason,
            details={"target": username},
        )
    click.echo(f"person {username}: {status.value}")


@person.command("suspend")
@click.argument("username")
@click.option("--reason", required=True, help="Why (recorded in the audit trail).")
@click.pass_obj
def person_suspend(obj: Ctx, username, reason):
    """Suspend a person: no new workspace starts (running ones are stopped by `enforce`)."""
    _set_person_status(obj, username, PersonStatus.suspended, reason)


@person.command("reactivate")
@click.argument("username")
@click.option("--reason", required=True)
@click.pass_obj
def person_reactivate(obj: Ctx, username, reason):
    """Lift a suspension."""
    _set_person_status(obj, username, PersonStatus.active, reason)


@person.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def person_list(obj: Ctx, as_json):
    """List people."""
    with obj.sessionmaker() as s:
        rows = [
            {
                "username": p.username,
                "name": p.display_name,
                "status": p.status.value,
                "training_expires": _plain(p.training_expires),
            }
            for p in s.scalars(select(Person).order_by(Person.username))
        ]
    _print_rows(rows, as_json)


# ---- projects --------------------------------------------------------------------------
def _purpose(value: str | None) -> Purpose | None:
    if value is None:
        return None
    if value.lower() in FORBIDDEN_PURPOSES:
        raise click.BadParameter(f"purpose {value!r} is never permitted in this environment")
    try:
        return Purpose(value)
    except ValueError:
        allowed = ", ".join(p.value for p in Purpose)
        raise click.BadParameter(f"purpose {value!r} is not one of: {allowed}") from None


@main.group()
def project():
    """Projects: Data Access Committee approval, ethics reference, purpose, status."""


@project.command("add")
@click.argument("slug")
@click.option("--title")
@click.option(
    "--purpose", help="research, public_health, service_evaluation, clinical_audit, planning"
)
@click.option("--ethics-ref", help="Ethics / HRA reference.")
@click.option("--lay-summary")
@click.option("--required-approvals", type=click.IntRange(1, 5), help="Output checkers needed.")
@click.pass_obj
def project_add(obj: Ctx, slug, title, purpose, ethics_ref, lay_summary, required_approvals):
    """Create a project (as draft), or update the given fields."""
    _slug(slug, "project")
    values = {
        "title": title,
        "purpose": _purpose(purpose),
        "ethics_reference": ethics_ref,
        "lay_summary": lay_summary,
        "required_approvals": required_approvals,
    }
    with obj.sessionmaker.begin() as s:
        exists = s.scalar(select(Project).filter_by(slug=slug))
        if exists is None and not title:
            raise click.BadParameter("a new project needs --title")
        _, status = _upsert(s, Project, {"slug": slug}, values, "project", project=slug, label=slug)
    click.echo(f"project {slug}: {status}")


@project.command("approve")
@click.argument("slug")
@click.option("--dac-ref", required=True, help="Data Access Committee reference.")
@click.option("--dac-date", required=True, help="Date the committee approved (ISO).")
@click.pass_obj
def project_approve(obj: Ctx, slug, dac_ref, dac_date):
    """Record the Data Access Committee's approval and mark the project approved."""
    approved_on = _date(dac_date, "--dac-date")
    with obj.sessionmaker.begin() as s:
        p = _need(s, Project, "project", slug=slug)
        if not p.ethics_reference:
            raise click.ClickException(f"project {slug} has no ethics/HRA reference (--ethics-ref)")
        changed = _changes(
            p,
            {
                "dac_reference": dac_ref,
                "dac_approved_on": approved_on,
                "status": ProjectStatus.approved,
            },
        )
        if changed:
            audit.append(
                s, "project.approved", actor=actor(), project=slug, details={"changes": changed}
            )
    click.echo(f"project {slug}: {'approved' if changed else 'unchanged'}")


@project.command("suspend")
@click.argument("slug")
@click.option("--reason", required=True)
@click.pass_obj
def project_suspend(obj: Ctx, slug, reason):
    """Suspend a project: no workspace starts on it."""
    with obj.sessionmaker.begin() as s:
        p = _need(s, Project, "project", slug=slug)
        if p.status != ProjectStatus.suspended:
            p.status = ProjectStatus.suspended
            audit.append(s, "project.suspended", actor=actor(), project=slug, reason=reason)
    click.echo(f"project {slug}: suspended")


@project.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def project_list(obj: Ctx, as_json):
    """List projects."""
    with obj.sessionmaker() as s:
        rows = [
            {
                "slug": p.slug,
                "title": p.title,
                "status": p.status.value,
                "purpose": p.purpose.value,
                "dac": p.dac_reference,
                "ethics": p.ethics_reference,
            }
            for p in s.scalars(select(Project).order_by(Project.slug))
        ]
    _print_rows(rows, as_json)


# ---- agreements --------------------------------------------------------------------------
@main.group()
def agreement():
    """Signed data access agreements: start, end and data-deletion dates."""


@agreement.command("add")
@click.argument("project_slug")
@click.argument("reference")
@click.option("--signed", help="Date signed (ISO).")
@click.option("--start", required=True, help="First day of access (ISO).")
@click.option("--end", required=True, help="Last day of access (ISO).")
@click.option("--delete-by", required=True, help="Date by which data must be deleted (ISO).")
@click.pass_obj
def agreement_add(obj: Ctx, project_slug, reference, signed, start, end, delete_by):
    """Record an agreement for a project (create or update by reference)."""
    values = {
        "signed_on": _date(signed, "--signed"),
        "starts_on": _date(start, "--start"),
        "ends_on": _date(end, "--end"),
        "data_deletion_on": _date(delete_by, "--delete-by"),
    }
    if values["ends_on"] < values["starts_on"]:
        raise click.BadParameter("--end is before --start")
    if values["data_deletion_on"] < values["ends_on"]:
        raise click.BadParameter("--delete-by is before --end")
    with obj.sessionmaker.begin() as s:
        p = _need(s, Project, "project", slug=project_slug)
        _, status = _upsert(
            s,
            Agreement,
            {"project_id": p.id, "reference": reference},
            values,
            "agreement",
            project=project_slug,
            label=reference,
        )
    click.echo(f"agreement {reference}: {status}")


# ---- members -------------------------------------------------------------------------------
@main.group()
def member():
    """Project membership and roles."""


@member.command("add")
@click.argument("project_slug")
@click.argument("username")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.pass_obj
def member_add(obj: Ctx, project_slug, username, role):
    """Give a person a role on a project."""
    with obj.sessionmaker.begin() as s:
        p = _need(s, Project, "project", slug=project_slug)
        who = _need(s, Person, "person", username=username)
        _, status = _upsert(
            s,
            Membership,
            {"project_id": p.id, "person_id": who.id, "role": Role(role)},
            {},
            "membership",
            project=project_slug,
            label=f"{username}:{role}",
        )
    click.echo(f"member {username} ({role}) on {project_slug}: {status}")


@member.command("remove")
@click.argument("project_slug")
@click.argument("username")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.pass_obj
def member_remove(obj: Ctx, project_slug, username, role):
    """Take a role away (its grants go with it)."""
    with obj.sessionmaker.begin() as s:
        p = _need(s, Project, "project", slug=project_slug)
        who = _need(s, Person, "person", username=username)
        m = s.scalar(
            select(Membership).filter_by(project_id=p.id, person_id=who.id, role=Role(role))
        )
        if m is None:
            click.echo(f"member {username} ({role}) on {project_slug}: not a member")
            return
        s.delete(m)
        audit.append(
            s,
            "membership.deleted",
            actor=actor(),
            project=project_slug,
            details={"target": f"{username}:{role}"},
        )
    click.echo(f"member {username} ({role}) on {project_slug}: removed")


@member.command("list")
@click.argument("project_slug")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def member_list(obj: Ctx, project_slug, as_json):
    """List a project's members and their grants."""
    with obj.sessionmaker() as s:
        p = _need(s, Project, "project", slug=project_slug)
        rows = [
            {
                "username": m.person.username,
                "role": m.role.value,
                "grants": ", ".join(g.dataset.slug for g in m.grants),
            }
            for m in s.scalars(select(Membership).filter_by(project_id=p.id))
        ]
    _print_rows(rows, as_json)


# ---- datasets and grants -------------------------------------------------------------------
@main.group()
def dataset():
    """Source datasets (CSV or Parquet files on the hub host)."""


@dataset.command("add")
@click.argument("slug")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--title")
@click.option(
    "--identifier",
    "identifier_column",
    help="Its person-identifier (NHS number) column: opt-outs are removed by it and it is "
    "replaced by a per-project pseudonym in every extract.",
)
@click.pass_obj
def dataset_add(obj: Ctx, slug, source, title, identifier_column):
    """Register a dataset source file."""
    _slug(slug, "dataset")
    source = os.path.abspath(source)
    if not os.path.isfile(source):
        raise click.BadParameter(f"source file {source} does not exist")
    if not source.lower().endswith((".csv", ".parquet")):
        raise click.BadParameter("source must be a .csv or .parquet file")
    if identifier_column:
        try:
            check_identifier(source, identifier_column)
        except ExtractError as exc:
            raise click.BadParameter(str(exc)) from None
    with obj.sessionmaker.begin() as s:
        _, status = _upsert(
            s,
            Dataset,
            {"slug": slug},
            {"source_path": source, "title": title, "identifier_column": identifier_column},
            "dataset",
            label=slug,
        )
    click.echo(f"dataset {slug}: {status}")


@dataset.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def dataset_list(obj: Ctx, as_json):
    """List datasets."""
    with obj.sessionmaker() as s:
        rows = [
            {
                "slug": d.slug,
                "title": d.title,
                "source": d.source_path,
                "identifier": d.identifier_column,
            }
            for d in s.scalars(select(Dataset).order_by(Dataset.slug))
        ]
    _print_rows(rows, as_json)


@main.group()
def grant():
    """Minimum datasets: which columns and rows of a dataset a member sees."""


@grant.command("add")
@click.argument("project_slug")
@click.argument("username")
@click.argument("dataset_slug")
@click.option("--columns", required=True, help="Comma-separated column names.")
@click.option("--filter", "row_filter", default="", help='Row filter, e.g. "age >= 18".')
@click.option(
    "--role", type=click.Choice([r.value for r in Role]), default="researcher", show_default=True
)
@click.pass_obj
def grant_add(obj: Ctx, project_slug, username, dataset_slug, columns, row_filter, role):
    """Grant a member the given columns and rows of a dataset."""
    cols = [c.strip() for c in columns.split(",") if c.strip()]
    if not cols:
        raise click.BadParameter("--columns names no column")
    try:
        parse_row_filter(row_filter)
    except ExtractError as exc:
        raise click.BadParameter(str(exc)) from None
    with obj.sessionmaker.begin() as s:
        p = _need(s, Project, "project", slug=project_slug)
        who = _need(s, Person, "person", username=username)
        ds = _need(s, Dataset, "dataset", slug=dataset_slug)
        m = s.scalar(
            select(Membership).filter_by(project_id=p.id, person_id=who.id, role=Role(role))
        )
        if m is None:
            raise click.ClickException(f"{username} is not a {role} on {project_slug}")
        _, status = _upsert(
            s,
            Grant,
            {"membership_id": m.id, "dataset_id": ds.id},
            {"columns_json": json.dumps(cols), "row_filter": row_filter},
            "grant",
            project=project_slug,
            label=f"{username}:{dataset_slug}",
        )
    click.echo(f"grant {dataset_slug} to {username} on {project_slug}: {status}")


# ---- firewall ---------------------------------------------------------------------------------
@main.group("firewall")
def firewall_group():
    """The host firewall that keeps workspaces away from host services."""


@firewall_group.command("apply")
@click.option(
    "--port",
    "ports",
    type=int,
    multiple=True,
    required=True,
    help="Host TCP port workspaces may reach (the hub API); repeatable.",
)
def firewall_apply(ports):
    """Install the SDE-INPUT chain (idempotent)."""
    from sde_spawner import firewall

    try:
        for rule in firewall.apply(list(ports)):
            click.echo(" ".join(rule))
    except firewall.FirewallError as exc:
        raise click.ClickException(str(exc)) from None


@firewall_group.command("show")
def firewall_show():
    """Print the installed rules."""
    from sde_spawner import firewall

    rules = firewall.installed_rules()
    click.echo("\n".join(rules) if rules else "no SDE firewall rules installed")
    rules6 = firewall.installed_rules(ipv6=True)
    if rules6:
        click.echo("# IPv6\n" + "\n".join(rules6))


# ---- lifecycle -------------------------------------------------------------------------------
@main.command()
@click.option(
    "--hub-api",
    envvar="JUPYTERHUB_API_URL",
    default="http://127.0.0.1:8081/hub/api",
    show_default=True,
    help="The hub's REST API URL (env JUPYTERHUB_API_URL).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding a hub API token with the `servers` scope (default: env SDE_HUB_API_TOKEN).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be closed.")
@click.pass_obj
def enforce(obj: Ctx, hub_api, token_file, dry_run):
    """Close running workspaces whose person, project or agreement is no longer in order."""
    from sde_spawner import lifecycle

    if dry_run:
        with obj.sessionmaker() as s:
            for c in lifecycle.plan_from_db(s):
                click.echo(
                    f"would close {c.username}/{c.server_name or '-'} ({c.project}): {c.reason}"
                )
        return
    if token_file:
        with open(token_file) as fh:
            token = fh.read().strip()
    else:
        token = os.environ.get("SDE_HUB_API_TOKEN", "")
    if not token:
        raise click.ClickException("a hub API token is needed: --token-file or SDE_HUB_API_TOKEN")
    results = lifecycle.enforce(obj.sessionmaker, hub_api, token, actor=actor())
    for r in results:
        click.echo(f"closed {r['user']} on {r['project']} (HTTP {r['status']}): {r['reason']}")
    if not results:
        click.echo("nothing to close")
    if any(r["status"] not in (202, 204, 404) for r in results):
        raise SystemExit(1)


# ---- demo ------------------------------------------------------------------------------------
@main.command("demo-seed")
@click.argument("data_dir", type=click.Path(file_okay=False))
@click.pass_obj
def demo_seed(obj: Ctx, data_dir):
    """Create the synthetic demo dataset, project, people and grants (idempotent)."""
    from sde_spawner.demo import seed

    for line in seed(obj.sessionmaker, data_dir, actor()):
        click.echo(line)


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("(none)")
        return
    keys = list(rows[0])
    widths = {
        k: max(len(k), *(len(str(r[k] if r[k] is not None else "")) for r in rows)) for k in keys
    }
    click.echo("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        click.echo("  ".join(str(r[k] if r[k] is not None else "").ljust(widths[k]) for k in keys))


def _attach_audit() -> None:
    try:
        from sde_spawner.audit.cli import audit_group
    except ImportError:  # pragma: no cover - the audit package ships with this one
        return
    main.add_command(audit_group)


_attach_audit()
attach_data_commands(main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
