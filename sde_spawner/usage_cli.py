"""``sde-admin usage``: usage per person and project, as a table or CSV.

The figures are :func:`sde_spawner.usage.report`'s."""

from __future__ import annotations

from datetime import date

import click

from sde_spawner import usage


def _date(ctx, param, value):
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not a date (YYYY-MM-DD): {value!r}") from None


@click.command("usage")
@click.option("--since", callback=_date, help="Workspaces started on or after this date.")
@click.option("--until", callback=_date, help="Workspaces started on or before this date.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV (person, project, workspaces, "
              "workspace_hours, cpu_hours, memory_gib_hours, memory_peak_gib).")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write to FILE.")
@click.pass_obj
def usage_cmd(obj, since, until, as_csv, out):
    """Workspace, CPU and memory hours per person and project."""
    if since and until and since > until:
        raise click.ClickException(f"--since {since} is after --until {until}")
    with obj.sessionmaker() as s:
        rows = usage.report(s, since=since, until=until)
    if as_csv:
        text = usage.to_csv(rows)
    else:
        widths = [max(len(c), *(len(str(getattr(r, c))) for r in rows)) for c in usage.COLUMNS]
        lines = ["  ".join(c.ljust(w) for c, w in zip(usage.COLUMNS, widths, strict=True))]
        lines += [
            "  ".join(
                str(getattr(r, c)).ljust(w) for c, w in zip(usage.COLUMNS, widths, strict=True)
            )
            for r in rows
        ]
        text = "\n".join(lines) + "\n" + ("" if rows else "(no workspaces)\n")
    if out:
        with open(out, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        click.echo(f"wrote {len(rows)} rows to {out}")
    else:
        click.echo(text, nl=False)
