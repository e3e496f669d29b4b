"""``sde-admin evidence``: write the evidence report (HTML and JSON) from JUnit XML results."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from sde_spawner.evidence import catalogue as catalogue_mod
from sde_spawner.evidence import facts as facts_mod
from sde_spawner.evidence import junit, report


def _facts(db_url: str) -> dict:
    from sde_spawner.db import open_db

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise click.ClickException(
            f"no registry database at {url.database}: give --db URL, or --no-facts"
        )
    try:
        sessionmaker = open_db(db_url, migrate=False)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot open database {db_url}: {exc}") from None
    try:
        return facts_mod.collect(sessionmaker)
    finally:
        sessionmaker.kw["bind"].dispose()


@click.command("evidence")
@click.option(
    "--junit",
    "junit_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A JUnit XML file of a test run (pytest --junitxml); repeat for each tier.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for index.html and report.json (created if missing).",
)
@click.option(
    "--catalogue",
    "catalogue_path",
    default=str(catalogue_mod.DEFAULT_PATH),
    show_default=False,
    type=click.Path(exists=True, dir_okay=False),
    help="Claims file (default: the catalogue shipped with sde_spawner).",
)
@click.option(
    "--no-facts",
    is_flag=True,
    help="Leave out live facts of the deployment (firewall, audit, agreements, opt-outs).",
)
@click.pass_obj
def evidence_cmd(obj, junit_files, out, catalogue_path, no_facts):
    """Map each of the Five Safes and each SATRE statement we implement to its controls and
    the tests that prove them, with each test's result from this run; add live facts from the
    registry given by --db. Statements not met are listed with the reason."""
    try:
        cat = catalogue_mod.load(catalogue_path)
    except catalogue_mod.CatalogueError as exc:
        raise click.ClickException("invalid catalogue:\n  " + "\n  ".join(exc.problems)) from None
    try:
        results = junit.read_all(junit_files)
    except junit.JUnitError as exc:
        raise click.ClickException(str(exc)) from None
    facts = None if no_facts else _facts(obj.db_url)
    data = report.build(cat, results, facts, junit_files=list(junit_files))
    if facts is not None:
        data["facts_from"] = make_url(obj.db_url).render_as_string(hide_password=True)
    json_path, html_path = report.write(data, out)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(data["statement_counts"].items()))
    click.echo(f"wrote {html_path} and {json_path}")
    click.echo(f"{len(results)} test case(s); SATRE statements {counts}")
