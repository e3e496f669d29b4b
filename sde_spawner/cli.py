"""``sde-admin``: administer the registry (people, projects, agreements, members, datasets,
grants, ``apply`` of project files), the host firewall and the demo; ``sde-admin audit ...``
reads the audit trail.

Commands only parse and print: every change, its rules and its audit event live in
:mod:`sde_spawner.registry.ops` (``apply`` in :mod:`sde_spawner.registry.apply`). Every command
is idempotent (``add`` creates or updates, and says which); a refusal is one clear line listing
every problem, exits non-zero, and is audited (outcome ``denied``).
"""

from __future__ import annotations

import getpass
import json
import os
import sys

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from sde_spawner.checking.cli import outputs_group
from sde_spawner.datasets.cli import attach as attach_data_commands
from sde_spawner.db import DEFAULT_DB_URL, open_db
from sde_spawner.deletion_cli import attach as attach_deletion_commands
from sde_spawner.evidence.cli import evidence_cmd
from sde_spawner.registry import ops
from sde_spawner.registry.models import (
    Dataset,
    Membership,
    OrganisationKind,
    Person,
    Project,
    Purpose,
    Role,
)
from sde_spawner.usage_cli import usage_cmd

ROLES = ", ".join(r.value for r in Role)
PURPOSES = ", ".join(p.value for p in Purpose)
KINDS = ", ".join(k.value for k in OrganisationKind)


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

    def do(self, operation, *args, **kwargs) -> ops.Outcome:
        """Run one registry operation (its own transaction) and print its outcome."""
        out = self.run(operation, *args, **kwargs)
        click.echo(out.line())
        return out

    def run(self, operation, *args, **kwargs):
        try:
            return ops.perform(self.sessionmaker, operation, actor(), *args, **kwargs)
        except ops.RegistryError as exc:
            raise click.ClickException(f"refused: {exc}") from None
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise click.ClickException(f"database error: {first}") from None


def actor() -> str:
    return os.environ.get("SDE_ADMIN") or f"admin:{getpass.getuser()}"


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


# ---- declarative -----------------------------------------------------------------------------
@main.command("apply")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.pass_obj
def apply_cmd(obj: Ctx, files, dry_run):
    """Make the registry match project file(s) (TOML; see examples/).

    Every problem of a file is listed with its field path and nothing changes. Members and
    grants the file no longer lists are removed from the project (their workspaces close
    at the next `sde-admin enforce`).
    """
    from sde_spawner.registry.apply import apply_file

    failed = False
    for path in files:
        try:
            result = apply_file(obj.sessionmaker, actor(), path, dry_run=dry_run)
        except ops.RegistryError as exc:
            failed = True
            click.echo(f"{path}: refused, nothing changed:", err=True)
            for problem in exc.problems:
                click.echo(f"  {problem}", err=True)
            continue
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise click.ClickException(f"{path}: database error: {first}") from None
        for line in result.lines():
            click.echo(line)
    if failed:
        raise SystemExit(1)


# ---- people --------------------------------------------------------------------------
@main.group()
def person():
    """Researchers, checkers and leads: accounts, training, suspension."""


@person.command("add")
@click.argument("username")
@click.option("--name", "display_name", help="Display name.")
@click.option("--email")
@click.option("--training-expires", help="Date the data protection training expires (ISO).")
@click.option(
    "--idp-subject",
    help="Their subject ('sub') at the OpenID Connect provider: a login with it is this "
    "person. Without it, a login is matched by the provider's verified e-mail.",
)
@click.pass_obj
def person_add(obj: Ctx, username, display_name, email, training_expires, idp_subject):
    """Create a person, or update the given fields."""
    obj.do(
        ops.add_person,
        username,
        display_name=display_name,
        email=email,
        training_expires=training_expires,
        idp_subject=idp_subject,
    )


@person.command("suspend")
@click.argument("username")
@click.option("--reason", required=True, help="Why (recorded in the audit trail).")
@click.pass_obj
def person_suspend(obj: Ctx, username, reason):
    """Suspend a person: no new workspace starts (running ones are stopped by `enforce`)."""
    obj.do(ops.suspend_person, username, reason)


@person.command("reactivate")
@click.argument("username")
@click.option("--reason", required=True, help="Why (recorded in the audit trail).")
@click.pass_obj
def person_reactivate(obj: Ctx, username, reason):
    """Lift a suspension."""
    obj.do(ops.reactivate_person, username, reason)


@person.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def person_list(obj: Ctx, as_json):
    """List people."""
    with obj.sessionmaker() as s:
        rows = [
            {
                "username": p.username,
                "name": p.display_name,
                "status": p.status.value,
                "training_expires": ops.plain(p.training_expires),
                "idp_subject": p.idp_subject,
            }
            for p in s.scalars(select(Person).order_by(Person.username))
        ]
    _print_rows(rows, as_json)


# ---- projects --------------------------------------------------------------------------
@main.group()
def project():
    """Projects: Data Access Committee approval, ethics reference, purpose, status."""


@project.command("add")
@click.argument("slug")
@click.option("--title")
@click.option("--purpose", help=f"One of: {PURPOSES} (never insurance or marketing).")
@click.option("--ethics-ref", help="Ethics / HRA reference.")
@click.option("--lay-summary", help="What the project does, in plain words.")
@click.option("--public-benefit", help="Why the project is in the public interest.")
@click.option("--organisation", help="The applicant organisation.")
@click.option("--organisation-kind", help=f"One of: {KINDS}.")
@click.option("--required-approvals", type=int, help="Output checkers needed (1-5).")
@click.pass_obj
def project_add(
    obj: Ctx,
    slug,
    title,
    purpose,
    ethics_ref,
    lay_summary,
    public_benefit,
    organisation,
    organisation_kind,
    required_approvals,
):
    """Create a project (as draft), or update the given fields."""
    obj.do(
        ops.add_project,
        slug,
        title=title,
        purpose=purpose,
        ethics_reference=ethics_ref,
        lay_summary=lay_summary,
        public_benefit=public_benefit,
        organisation=organisation,
        organisation_kind=organisation_kind,
        required_approvals=required_approvals,
    )


@project.command("approve")
@click.argument("slug")
@click.option("--dac-ref", required=True, help="Data Access Committee reference.")
@click.option("--dac-date", required=True, help="Date the committee approved (ISO).")
@click.option("--lay-member", help="Name of the lay (public) panel member who signed off.")
@click.option("--lay-member-date", help="Date of the lay member's sign-off (ISO).")
@click.pass_obj
def project_approve(obj: Ctx, slug, dac_ref, dac_date, lay_member, lay_member_date):
    """Record the Data Access Committee's approval and mark the project approved.

    Refused unless the project has an ethics/HRA reference, a lay summary, a public-benefit
    statement and a lay member's sign-off (name and date).
    """
    obj.do(
        ops.approve_project,
        slug,
        dac_reference=dac_ref,
        dac_date=dac_date,
        lay_member=lay_member,
        lay_member_signed=lay_member_date,
    )


@project.command("suspend")
@click.argument("slug")
@click.option("--reason", required=True, help="Why (recorded in the audit trail).")
@click.pass_obj
def project_suspend(obj: Ctx, slug, reason):
    """Suspend a project: no workspace starts on it."""
    obj.do(ops.suspend_project, slug, reason)


@project.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
@click.option("--signed", help="Date signed (ISO); on or before --start.")
@click.option("--start", required=True, help="First day of access (ISO).")
@click.option("--end", required=True, help="Last day of access (ISO).")
@click.option("--delete-by", required=True, help="Date by which data must be deleted (ISO).")
@click.pass_obj
def agreement_add(obj: Ctx, project_slug, reference, signed, start, end, delete_by):
    """Record an agreement for a project (create or update by reference)."""
    obj.do(
        ops.add_agreement,
        project_slug,
        reference,
        signed=signed,
        start=start,
        end=end,
        delete_by=delete_by,
    )


# ---- members -------------------------------------------------------------------------------
@main.group()
def member():
    """Project membership and roles."""


@member.command("add")
@click.argument("project_slug")
@click.argument("username")
@click.option("--role", required=True, help=f"One of: {ROLES}.")
@click.pass_obj
def member_add(obj: Ctx, project_slug, username, role):
    """Give a person a role on a project."""
    obj.do(ops.add_member, project_slug, username, role)


@member.command("remove")
@click.argument("project_slug")
@click.argument("username")
@click.option("--role", required=True, help=f"One of: {ROLES}.")
@click.pass_obj
def member_remove(obj: Ctx, project_slug, username, role):
    """Take a role away (its grants go with it)."""
    obj.do(ops.remove_member, project_slug, username, role)


@member.command("list")
@click.argument("project_slug")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
    obj.do(ops.add_dataset, slug, source, title=title, identifier_column=identifier_column)


@dataset.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
@click.option(
    "--filter",
    "row_filter",
    help='Row filter, e.g. "age >= 18". Without it an existing filter is kept.',
)
@click.option("--clear-filter", is_flag=True, help="Remove the grant's row filter (all rows).")
@click.option("--role", default="researcher", show_default=True, help=f"One of: {ROLES}.")
@click.pass_obj
def grant_add(
    obj: Ctx, project_slug, username, dataset_slug, columns, row_filter, clear_filter, role
):
    """Grant a member the given columns and rows of a dataset."""
    cols = [c.strip() for c in columns.split(",") if c.strip()]
    obj.do(
        ops.add_grant,
        project_slug,
        username,
        dataset_slug,
        columns=cols,
        row_filter=row_filter,
        clear_filter=clear_filter,
        role=role,
    )


@grant.command("remove")
@click.argument("project_slug")
@click.argument("username")
@click.argument("dataset_slug")
@click.option("--role", default="researcher", show_default=True, help=f"One of: {ROLES}.")
@click.pass_obj
def grant_remove(obj: Ctx, project_slug, username, dataset_slug, role):
    """Take a dataset away from a member (their workspace closes at the next `enforce`)."""
    obj.do(ops.remove_grant, project_slug, username, dataset_slug, role=role)


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


# ---- breaches and sanctions -----------------------------------------------------------------
@main.group()
def breach():
    """Breaches of an agreement and their sanctions (warning, suspension, removal)."""


@breach.command("record")
@click.argument("username")
@click.argument("project_slug")
@click.option("--what", required=True, help="What the breach was (recorded).")
@click.option(
    "--sanction",
    required=True,
    help="warning (recorded only), suspension (the person is suspended, their rooms close) "
    "or removal (every role of theirs on the project is taken away).",
)
@click.option("--date", "on", help="Date of the breach (ISO; default today).")
@click.pass_obj
def breach_record(obj: Ctx, username, project_slug, what, sanction, on):
    """Record a breach by a person on a project and apply its sanction."""
    from sde_spawner.registry.breaches import record_breach

    obj.do(record_breach, username, project_slug, what=what, sanction=sanction, on=on)


@breach.command("list")
@click.option("--project", "project_slug", help="Only this project's breaches.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def breach_list(obj: Ctx, project_slug, as_json):
    """List recorded breaches."""
    from sde_spawner.registry.breaches import list_breaches

    with obj.sessionmaker() as s:
        rows = [
            {
                "id": b.id,
                "date": b.occurred_on.isoformat(),
                "person": b.username,
                "project": b.project_slug,
                "sanction": b.sanction.value,
                "what": b.what,
                "recorded_by": b.recorded_by,
            }
            for b in list_breaches(s, project_slug)
        ]
    _print_rows(rows, as_json)


# ---- transparency register ------------------------------------------------------------------
@main.group("register")
def register_group():
    """The public transparency register of approved projects."""


@register_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.pass_obj
def register_export(obj: Ctx, directory):
    """Write the register as static HTML (index.html) and JSON (register.json)."""
    from sde_spawner import register

    with obj.sessionmaker() as s:
        for path in register.export(s, directory):
            click.echo(f"wrote {path}")


@register_group.command("names")
@click.argument("project_slug")
@click.option(
    "--publish/--withhold",
    required=True,
    help="Whether the project agreed that the register names its researchers.",
)
@click.pass_obj
def register_names(obj: Ctx, project_slug, publish):
    """Record whether the register may name a project's researchers (default: withheld)."""
    from sde_spawner.registry.breaches import set_register_names

    obj.do(set_register_names, project_slug, publish)


# ---- demo ------------------------------------------------------------------------------------
@main.command("demo-seed")
@click.argument("data_dir", type=click.Path(file_okay=False))
@click.pass_obj
def demo_seed(obj: Ctx, data_dir):
    """Create the synthetic demo dataset, project, people and grants (idempotent).

    The projects are `apply` of examples/diabetes-outcomes.toml and examples/cardio-audit.toml.
    """
    from sde_spawner.demo import seed

    try:
        lines = seed(obj.sessionmaker, data_dir, actor())
    except (ops.RegistryError, FileNotFoundError) as exc:
        raise click.ClickException(f"demo seed refused: {exc}") from None
    for line in lines:
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
main.add_command(outputs_group)
main.add_command(evidence_cmd)
main.add_command(usage_cmd)
attach_deletion_commands(main)
attach_data_commands(main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
