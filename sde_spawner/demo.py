"""The embedded demo: a synthetic dataset, two projects, researchers, two checkers, an admin.

Seeding registers the dataset and the admin through :mod:`sde_spawner.registry.ops` and applies
the demo's project files from ``examples/`` (:mod:`sde_spawner.registry.apply`): the same rules
and audit trail as a real deployment, and re-running it changes nothing.
"""

from __future__ import annotations

from datetime import date
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
    """Synthetic patients (no real person), identified by NHS numbers from the range the NHS
    keeps for testing; deterministic for a given seed
    (:func:`sde_spawner.datasets.demo_data.write_demo_patients`)."""
    from sde_spawner.datasets.demo_data import write_demo_patients

    return write_demo_patients(path, rows=rows, seed=seed)


def examples_dir() -> Path:
    """``examples/`` of the source tree, or its copy inside the installed package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "examples", here.parent / "examples"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the examples/ directory of project files is not installed")


def seed(sessionmaker, data_dir: str, actor: str) -> list[str]:
    """Register the synthetic dataset (identified by NHS number) and the admin, load the demo
    opt-out lists, then apply the demo's project files: the demo's extracts are pseudonymised
    per project and opted-out patients are absent."""
    from sde_spawner.datasets import optouts
    from sde_spawner.datasets.demo_data import write_demo_optouts
    from sde_spawner.registry.models import Project

    data = Path(data_dir).resolve()
    source = data / "demo-patients.csv"
    if not source.exists():
        write_synthetic_patients(source)
    lists = write_demo_optouts(source, data)
    out = [
        ops.perform(
            sessionmaker,
            ops.add_dataset,
            actor,
            "patients",
            str(source),
            title="Synthetic patients",
            identifier_column="nhs_number",
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
    for name, path in lists.items():
        with sessionmaker.begin() as s:
            row, status = optouts.load(s, name, path, actor)
        out.append(f"opt-out list {name}: {status} (version {row.version}, {row.entries} numbers)")
    for name in DEMO_FILES:
        out += apply_file(sessionmaker, actor, examples_dir() / name).lines()
    with sessionmaker.begin() as s:
        project = s.query(Project).filter_by(slug=DEMO_PROJECT).one()
        status = optouts.set_applied(s, project, "local:demo-trust", True, actor)
    out.append(f"opt-out list local:demo-trust on {DEMO_PROJECT}: {status}")
    return out
