"""The embedded demo: a synthetic dataset, two projects, researchers, two checkers, an admin.

Seeding registers the dataset and the admin through :mod:`sde_spawner.registry.ops` and applies
the demo's project files from ``examples/`` (:mod:`sde_spawner.registry.apply`): the same rules
and audit trail as a real deployment, and re-running it changes nothing.
"""

from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

from sde_spawner.registry import ops
from sde_spawner.registry.apply import apply_file

DEMO_PROJECT = "diabetes-outcomes"
DEMO_ENDED_PROJECT = "cardio-audit"
RESEARCHERS = ("alice", "bob")
CHECKERS = ("chris", "dana")
ADMIN = "admin"
EXPIRED_TRAINING = "eve"
ADMIN_TRAINING = date(2030, 6, 30)
#: The demo projects, in ``examples/``: diabetes-outcomes (open) and cardio-audit (ended).
DEMO_FILES = ("diabetes-outcomes.toml", "cardio-audit.toml")

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


def examples_dir() -> Path:
    """``examples/`` of the source tree, or its copy inside the installed package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "examples", here.parent / "examples"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the examples/ directory of project files is not installed")


def seed(sessionmaker, data_dir: str, actor: str) -> list[str]:
    """Register the synthetic dataset and the admin, then apply the demo's project files."""
    data = Path(data_dir).resolve()
    source = data / "patients.csv"
    if not source.exists():
        write_synthetic_patients(source)
    out = [
        ops.perform(
            sessionmaker,
            ops.add_dataset,
            actor,
            "patients",
            str(source),
            title="Synthetic patients",
        ).line(),
        ops.perform(
            sessionmaker,
            ops.add_person,
            actor,
            ADMIN,
            display_name="Admin",
            training_expires=ADMIN_TRAINING,
        ).line(),
    ]
    for name in DEMO_FILES:
        out += apply_file(sessionmaker, actor, examples_dir() / name).lines()
    return out
