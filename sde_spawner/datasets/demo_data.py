"""Synthetic person-level demo data: patients with valid NHS numbers, and opt-out files.

The NHS numbers are drawn from the 999 range the NHS keeps for testing, so they pass the
Modulus 11 check without belonging to anyone. Deterministic for a given seed.
"""

from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

from sde_spawner.datasets.nhs_number import with_check_digit

REGIONS = ("north", "south", "east", "west")
DIAGNOSES = ("E10", "E11", "E13", "I10", "I21", "J45")
COLUMNS = (
    "nhs_number",
    "age",
    "sex",
    "region",
    "postcode_district",
    "diagnosis",
    "hba1c",
    "admitted",
)


def synthetic_nhs_numbers(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct valid NHS numbers from the 999 test range."""
    out: dict[str, None] = {}
    while len(out) < count:
        number = with_check_digit(f"999{rng.randrange(10**6):06d}")
        if number:
            out[number] = None
    return list(out)


def write_demo_patients(path: str | Path, rows: int = 500, seed: int = 20261123) -> Path:
    """A CSV of synthetic patients, one row each, identified by ``nhs_number``."""
    path = Path(path)
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for number in synthetic_nhs_numbers(rows, rng):
            w.writerow(
                [
                    number,
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


def write_demo_optouts(
    source: str | Path, out_dir: str | Path, every: int = 25, local_every: int = 40
) -> dict[str, Path]:
    """Opt-out files for the patients in ``source``: every ``every``-th patient on the national
    list, every ``local_every``-th (offset by one) on a local list. Returns list name -> file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Path(source).open(newline="") as fh:
        numbers = [r["nhs_number"] for r in csv.DictReader(fh)]
    files = {
        "national": (out / "optout-national.txt", numbers[::every]),
        "local:demo-trust": (out / "optout-local-demo-trust.txt", numbers[1::local_every]),
    }
    for path, chosen in files.values():
        path.write_text("".join(f"{n}\n" for n in chosen))
    return {name: path for name, (path, _) in files.items()}
