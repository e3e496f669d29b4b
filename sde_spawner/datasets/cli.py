"""``sde-admin optout ...`` and ``sde-admin extract ...``: opt-out lists and extract policy.

``optout load LIST FILE`` validates a whole file and stores a new version of the list (or
nothing, listing every bad line); ``optout apply PROJECT local:NAME`` makes a local list part
of a project's policy (the national list always applies); ``extract csv PROJECT --on`` asks
for CSV besides Parquet; ``extract list PROJECT`` shows the versions built and their counts.
Each change is audited in the same transaction.
"""

from __future__ import annotations

import json

import click
from sqlalchemy import select

from sde_spawner.datasets import optouts
from sde_spawner.registry.models import ExtractVersion, Project


def _cli():
    from sde_spawner import cli  # the main CLI imports this module: import it late

    return cli


def _project(session, slug: str) -> Project:
    p = session.scalar(select(Project).where(Project.slug == slug))
    if p is None:
        raise click.ClickException(f"no such project: {slug}")
    return p


@click.group("optout")
def optout_group():
    """Opt-out lists: the national data opt-out and local lists."""


@optout_group.command("load")
@click.argument("list_name", metavar="LIST")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.pass_obj
def optout_load(obj, list_name, path):
    """Load a new version of LIST ('national' or 'local:NAME') from FILE, one NHS number a
    line. Nothing is loaded when any line is bad; every bad line is reported."""
    actor = _cli().actor()
    try:
        optouts.check_name(list_name)
        with obj.sessionmaker.begin() as s:
            row, status = optouts.load(s, list_name, path, actor)
    except optouts.OptoutError as exc:
        optouts.record_refusal(obj.sessionmaker, list_name, path, actor, exc)
        raise click.ClickException(str(exc)) from None
    click.echo(f"opt-out list {list_name}: {status} (version {row.version}, {row.entries} numbers)")


@optout_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Every version, not only those in force.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def optout_list(obj, show_all, as_json):
    """List the opt-out lists (the version in force of each, or --all)."""
    with obj.sessionmaker() as s:
        seen: set[str] = set()
        rows = []
        for r in optouts.all_lists(s):
            in_force = r.name not in seen
            seen.add(r.name)
            if in_force or show_all:
                rows.append(
                    {
                        "list": r.name,
                        "version": r.version,
                        "numbers": r.entries,
                        "in_force": in_force,
                        "loaded_at": r.loaded_at.isoformat(timespec="seconds"),
                        "loaded_by": r.loaded_by,
                    }
                )
    _cli()._print_rows(rows, as_json)


def _set_applied(obj, project_slug, list_name, applied):
    try:
        with obj.sessionmaker.begin() as s:
            status = optouts.set_applied(
                s, _project(s, project_slug), list_name, applied, _cli().actor()
            )
    except optouts.OptoutError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"opt-out list {list_name} on {project_slug}: {status}")


@optout_group.command("apply")
@click.argument("project_slug", metavar="PROJECT")
@click.argument("list_name", metavar="local:NAME")
@click.pass_obj
def optout_apply(obj, project_slug, list_name):
    """Apply a local opt-out list to PROJECT's extracts (from their next start)."""
    _set_applied(obj, project_slug, list_name, True)


@optout_group.command("unapply")
@click.argument("project_slug", metavar="PROJECT")
@click.argument("list_name", metavar="local:NAME")
@click.pass_obj
def optout_unapply(obj, project_slug, list_name):
    """Stop applying a local opt-out list to PROJECT (the national list always applies)."""
    _set_applied(obj, project_slug, list_name, False)


@optout_group.command("policy")
@click.argument("project_slug", metavar="PROJECT")
@click.pass_obj
def optout_policy(obj, project_slug):
    """Show which opt-out lists apply to PROJECT."""
    with obj.sessionmaker() as s:
        pol = optouts.policy(s, _project(s, project_slug))
        local = pol.local_optouts if pol else []
    click.echo(", ".join([optouts.NATIONAL, *local]))


@click.group("extract")
def extract_group():
    """Minimum-dataset extracts: formats and the versions built."""


@extract_group.command("csv")
@click.argument("project_slug", metavar="PROJECT")
@click.option("--on/--off", "on", required=True, help="Write CSV besides Parquet, or not.")
@click.pass_obj
def extract_csv(obj, project_slug, on):
    """Ask for CSV files besides Parquet in PROJECT's extracts (from their next start)."""
    with obj.sessionmaker.begin() as s:
        status = optouts.set_csv(s, _project(s, project_slug), on, _cli().actor())
    click.echo(f"CSV extracts on {project_slug}: {'on' if on else 'off'} ({status})")


@extract_group.command("list")
@click.argument("project_slug", metavar="PROJECT")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def extract_list(obj, project_slug, as_json):
    """The extract versions built for PROJECT, with their counts."""
    with obj.sessionmaker() as s:
        rows = []
        for v in s.scalars(
            select(ExtractVersion)
            .where(ExtractVersion.project_slug == project_slug)
            .order_by(ExtractVersion.username, ExtractVersion.version)
        ):
            d = v.details
            for name, ds in d.get("datasets", {}).items():
                rows.append(
                    {
                        "user": v.username,
                        "version": v.version,
                        "built_at": v.built_at.isoformat(timespec="seconds"),
                        "dataset": name,
                        "rows_in": ds["rows_in"],
                        "opted_out": ds["removed_by_optout"],
                        "filtered": ds["removed_by_filter"],
                        "rows_out": ds["rows_out"],
                        "lists": json.dumps(
                            [f"{o['list']} v{o['version']}" for o in d.get("optout_lists", [])]
                        ),
                    }
                )
    _cli()._print_rows(rows, as_json)


def attach(main: click.Group) -> None:
    """Register these groups on ``sde-admin``."""
    main.add_command(optout_group)
    main.add_command(extract_group)
