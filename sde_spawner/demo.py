"""The embedded demo: a synthetic dataset, two projects, researchers, two checkers, an admin.

Seeding goes through the ``sde-admin`` commands themselves, so the demo exercises the same
validation and audit trail as a real deployment, and re-running it changes nothing.
"""

from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

DEMO_PROJECT = "diabetes-outcomes"
DEMO_ENDED_PROJECT = "cardio-audit"
RESEARCHERS = ("alice", "bob")
CHECKERS = ("chris", "dana")
ADMIN = "admin"
EXPIRED_TRAINING = "eve"

REGIONS = ("north", "south", "east", "west")
DIAGNOSES = ("E10", "E11", "E13", "I10", "I21", "J45")


def write_synthetic_patients(path: Path, rows: int = 500, seed: int = 20261123) -> Path:
    """Synthetic, pseudonymised patients (no real person). Deterministic for a given seed."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "pseudo_id",
                "age",
                "sex",
                "region",
                "postcode_district",
                "diagnosis",
                "hba1c",
                "admitted",
            ]
        )
        for i in range(rows):
            w.writerow(
                [
                    f"P{i:05d}",
                    rng.randint(18, 95),
                    rng.choice("FM"),
                    rng.choice(REGIONS),
                    f"ZZ{rng.randint(1, 99)}",
                    rng.choice(DIAGNOSES),
                    round(rng.uniform(30, 110), 1),
                    (date(2024, 1, 1) + timedelta(days=rng.randint(0, 700))).isoformat(),
                ]
            )
    tmp.replace(path)
    return path


def seed(sessionmaker, data_dir: str, actor: str) -> list[str]:
    from click.testing import CliRunner

    from sde_spawner.cli import main

    data = Path(data_dir).resolve()
    source = data / "patients.csv"
    if not source.exists():
        write_synthetic_patients(source)
    today = date.today()
    d = lambda days: (today + timedelta(days=days)).isoformat()  # noqa: E731
    url = sessionmaker.kw["bind"].url.render_as_string(hide_password=False)
    commands = [
        ["dataset", "add", "patients", str(source), "--title", "Synthetic patients"],
        *[
            ["person", "add", u, "--name", u.title(), "--training-expires", d(365)]
            for u in (*RESEARCHERS, *CHECKERS, ADMIN)
        ],
        ["person", "add", EXPIRED_TRAINING, "--name", "Eve", "--training-expires", d(-10)],
        [
            "project",
            "add",
            DEMO_PROJECT,
            "--title",
            "Outcomes of type 2 diabetes care",
            "--purpose",
            "research",
            "--ethics-ref",
            "IRAS 300001",
            "--lay-summary",
            "Does earlier HbA1c control reduce admissions?",
        ],
        ["project", "approve", DEMO_PROJECT, "--dac-ref", "DAC-2026-017", "--dac-date", d(-45)],
        [
            "agreement",
            "add",
            DEMO_PROJECT,
            "DSA-017",
            "--signed",
            d(-40),
            "--start",
            d(-30),
            "--end",
            d(365),
            "--delete-by",
            d(365 + 90),
        ],
        [
            "project",
            "add",
            DEMO_ENDED_PROJECT,
            "--title",
            "Cardiac audit 2025",
            "--purpose",
            "clinical_audit",
            "--ethics-ref",
            "IRAS 290002",
        ],
        [
            "project",
            "approve",
            DEMO_ENDED_PROJECT,
            "--dac-ref",
            "DAC-2025-003",
            "--dac-date",
            d(-400),
        ],
        [
            "agreement",
            "add",
            DEMO_ENDED_PROJECT,
            "DSA-003",
            "--signed",
            d(-395),
            "--start",
            d(-390),
            "--end",
            d(-20),
            "--delete-by",
            d(70),
        ],
        *[
            ["member", "add", DEMO_PROJECT, u, "--role", "researcher"]
            for u in (*RESEARCHERS, EXPIRED_TRAINING)
        ],
        *[["member", "add", DEMO_PROJECT, u, "--role", "output_checker"] for u in CHECKERS],
        ["member", "add", DEMO_ENDED_PROJECT, "alice", "--role", "researcher"],
        [
            "grant",
            "add",
            DEMO_PROJECT,
            "alice",
            "patients",
            "--columns",
            "pseudo_id,age,sex,region,diagnosis,hba1c",
        ],
        [
            "grant",
            "add",
            DEMO_PROJECT,
            "bob",
            "patients",
            "--columns",
            "pseudo_id,age,diagnosis,hba1c",
            "--filter",
            "region == 'north'",
        ],
        ["grant", "add", DEMO_PROJECT, EXPIRED_TRAINING, "patients", "--columns", "pseudo_id,age"],
        [
            "grant",
            "add",
            DEMO_ENDED_PROJECT,
            "alice",
            "patients",
            "--columns",
            "pseudo_id,diagnosis",
        ],
    ]
    out = []
    runner = CliRunner()
    for args in commands:
        res = runner.invoke(main, ["--db", url, *args], env={"SDE_ADMIN": actor})
        if res.exit_code != 0:
            detail = res.output.strip() or repr(res.exception)
            raise RuntimeError(f"demo seed failed at {' '.join(args)}: {detail}")
        out.append(res.output.strip())
    return out
