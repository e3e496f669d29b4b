"""``sde-admin delete-due`` and ``sde-admin certificates``: deletion of a project's data at
its agreement's data-deletion date, and the signed certificates that record it (the work is
:mod:`sde_spawner.deletion`; these commands only parse and print)."""

from __future__ import annotations

import json

import click
from sqlalchemy import select


def cli():
    """The main CLI module (it imports this one: imported late)."""
    from sde_spawner import cli as main_cli

    return main_cli


# ---- deletion at the data-deletion date -----------------------------------------------------
@click.command("delete-due")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--no-docker", is_flag=True, help="Do not look at Docker volumes.")
@click.pass_obj
def delete_due(obj, dry_run, no_docker):
    """Delete the data of projects past their agreement's data-deletion date.

    Home volumes, every extract version and unreleased export blobs go; approved and
    released outputs stay. Each deletion writes a signed certificate (`certificates`).
    Reads SDE_STATE_DIR, SDE_EXTRACTS_DIR, SDE_OBJECT_PREFIX and SDE_WORKSPACE_IMAGE.
    """
    from sde_spawner import deletion

    site = deletion.Site.from_env()
    if not no_docker:
        import docker

        try:
            site.docker = docker.from_env()
            site.docker.ping()
        except Exception as exc:
            raise click.ClickException(f"no Docker engine answers (--no-docker?): {exc}") from None
    with obj.sessionmaker() as s:
        due = deletion.gather(s, site, deletion.due_today())
    if not due:
        click.echo("nothing is due for deletion")
        return
    run_id = deletion.new_run_id()
    failed = False
    for d in due:
        head = f"{d.project} (agreement {d.agreement}, delete by {d.delete_by.isoformat()})"
        if dry_run:
            click.echo(f"would delete {head}:")
            for item in d.items:
                click.echo(f"  {item.kind} {item.name}")
            if not d.items:
                click.echo("  nothing left; a certificate saying so would be written")
            continue
        res = deletion.execute(obj.sessionmaker, d, site, actor=cli().actor(), run_id=run_id)
        click.echo(f"deleted {head}: certificate {res.certificate_id}")
        for item in res.deleted:
            click.echo(f"  {item['kind']} {item['name']} {item['size']} bytes {item['sha256']}")
        for item in res.not_deleted:
            failed = True
            click.echo(f"  NOT deleted {item['kind']} {item['name']}: {item['reason']}", err=True)
    if failed:
        raise SystemExit(1)


@click.group()
def certificates():
    """Signed deletion certificates."""


@certificates.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def certificates_list(obj, as_json):
    """List deletion certificates."""
    from sde_spawner.registry.models import DeletionCertificate

    with obj.sessionmaker() as s:
        rows = []
        for c in s.scalars(select(DeletionCertificate).order_by(DeletionCertificate.id)):
            body = json.loads(c.body)
            rows.append(
                {
                    "id": c.id,
                    "project": c.project_slug,
                    "agreement": c.agreement_reference,
                    "at": c.created_at.isoformat(timespec="seconds"),
                    "deleted": len(body.get("deleted", [])),
                    "not_deleted": len(body.get("not_deleted", [])),
                    "run": c.run_id,
                }
            )
    cli()._print_rows(rows, as_json)


def _certificate(obj, cert_id: int):
    from sde_spawner.registry.models import DeletionCertificate

    with obj.sessionmaker() as s:
        return cli()._need(s, DeletionCertificate, "certificate", id=cert_id)


@certificates.command("show")
@click.argument("cert_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the certificate, signature and key.")
@click.pass_obj
def certificates_show(obj, cert_id, as_json):
    """Show one certificate (--json: exportable, with its signature and public key)."""
    c = _certificate(obj, cert_id)
    body = json.loads(c.body)
    if as_json:
        click.echo(
            json.dumps(
                {"certificate": c.body, "signature": c.signature, "public_key": c.public_key},
                indent=1,
            )
        )
        return
    click.echo(
        f"certificate {c.id}: project {body['project']}, agreement "
        f"{body['agreement']['reference']} (delete by {body['agreement']['data_deletion_on']})"
    )
    run = body["run"]
    click.echo(
        f"run {run['id']} by {run['actor']} on {run['host']}, {run['started_at']} to "
        f"{run['finished_at']}"
    )
    click.echo(f"hashes: {body['hash_method']}")
    for item in body["deleted"]:
        click.echo(
            f"  deleted {item['kind']} {item['name']}: {item['size']} bytes, "
            f"{len(item['files'])} file(s), sha256 {item['sha256']}"
        )
    for item in body["not_deleted"]:
        click.echo(f"  NOT deleted {item['kind']} {item['name']}: {item['reason']}")


@certificates.command("verify")
@click.argument("cert_id", type=int)
@click.pass_obj
def certificates_verify(obj, cert_id):
    """Check a certificate's signature against the service's signing key (exit 1 if not)."""
    from sde_spawner import deletion

    c = _certificate(obj, cert_id)
    try:
        key = deletion.signing_public_key(deletion.Site.from_env().state_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    problems = deletion.certificate_problems(c, key)
    if problems:
        click.echo(f"certificate {cert_id} does NOT verify: " + "; ".join(problems), err=True)
        raise SystemExit(1)
    click.echo(f"certificate {cert_id} verifies")


def attach(main: click.Group) -> None:
    """Register these commands on ``sde-admin``."""
    main.add_command(delete_due)
    main.add_command(certificates)
