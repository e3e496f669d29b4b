"""``sde-admin outputs check FILE... [--against FILE...] [--json]``: the checkers' checks.

Runs exactly the service's code (:func:`sde_airlock.sdc.check_many`) with the same
settings (``SDE_SDC_*``, overridable by options), so an administrator or a checker can run
the automated disclosure checks on files outside the service, and compare them with earlier
releases (``--against``: differencing).

Exit codes: 0 no rule failed (every file passes, or only needs review); 3 a rule failed
(``fail``) or a file could not be fully checked (``not_fully_checked``); 2 the command could
not run (unreadable file, bad option) -- one line on stderr.

``--json`` prints one object: ``{"files": {FILE: {"status", "kind", "checked",
"findings": [{"rule", "severity", "location", "message", ...}]}}, "status", "rules"}`` with
each FILE as given on the command line; rule ids are listed in ``docs/disclosure-rules.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import click

from sde_airlock import sdc
from sde_airlock.sdc.core import _RANK, valid_rounding

EXIT_FAILED = 3
MAX_INPUT = 1024 * 1024 * 1024


class OutputsError(click.ClickException):
    exit_code = 2


def _read(path: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_INPUT:
            raise OutputsError(f"{path}: {size:,} bytes, over the 1 GiB the checks read")
        with open(path, "rb") as fh:
            return fh.read()
    except IsADirectoryError:
        raise OutputsError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise OutputsError(f"{path}: {exc.strerror or exc}") from None


@click.group("outputs")
def outputs_group() -> None:
    """Outputs: the automated disclosure checks the output checkers see."""


@outputs_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--against",
    "against",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="An earlier released output to compare each table with (differencing); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--threshold", type=click.IntRange(min=1), help="Smallest safe cell count.")
@click.option("--dof-threshold", type=click.IntRange(min=1), help="Smallest residual df.")
@click.option(
    "--zeros-are-disclosive/--zeros-are-not-disclosive",
    default=None,
    help="Whether a zero count fails (default yes, as in ACRO).",
)
@click.option("--rounding", help="Rounding counts must show: a base such as 5, or midpoint6.")
def outputs_check(
    files, against, as_json, threshold, dof_threshold, zeros_are_disclosive, rounding
):
    """Run the disclosure checks on FILES (exit 3 when a rule fails)."""
    rules = sdc.Rules.from_env(os.environ)
    try:
        changes = {
            "threshold": threshold,
            "dof_threshold": dof_threshold,
            "zeros_are_disclosive": zeros_are_disclosive,
            "rounding": valid_rounding(rounding) if rounding is not None else None,
        }
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rounding") from None
    rules = replace(rules, **{k: v for k, v in changes.items() if v is not None})
    inputs = [(path, _read(path)) for path in files]
    earlier = [(path, _read(path)) for path in against]
    reports = sdc.check_many(inputs, rules, against=earlier)
    statuses = [r.status for r in reports.values()]
    worst = max(statuses, key=_RANK.__getitem__, default=sdc.PASS)
    failed = any(s in (sdc.FAIL, sdc.NOT_FULLY_CHECKED) for s in statuses)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "status": worst,
                    "files": {path: reports[path].to_dict() for path, _ in inputs},
                    "rules": rules.to_dict(),
                },
                indent=2,
            )
        )
    else:
        for path, _ in inputs:
            report = reports[path]
            click.echo(f"{path}: {report.status}")
            for f in report.findings:
                click.echo(f"  {f.status:<17} {f.rule:<22} {f.where}: {f.message}")
    raise SystemExit(EXIT_FAILED if failed else 0)
