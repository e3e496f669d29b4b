"""Cost of the disclosure checks (``python -m benchmarks.disclosure``).

* identifiers: the checks' identifier scan (NHS numbers with their check digit, postcodes,
  e-mail addresses, UK telephone numbers; :func:`sde_airlock.sdc.values.identifiers_in`
  over :func:`sde_airlock.sdc.text_chunks`, the path a large table takes) of a
  synthetic ``--mb`` MB CSV, against ``LC_ALL=C grep -E -c`` with the same four patterns in
  one process over the same file, interleaved run by run;
* table: ``sdc.check`` of a 100,000-cell table (10 columns x 10,000 rows), for the record.

The last line is ``ratio=<our scan time / grep time>`` (medians).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

from sde_airlock import sdc
from sde_airlock.sdc import values as sdc_values

#: The same four kinds of identifier in POSIX ERE (grep has no look-around: near enough).
GREP_PATTERNS = (
    r"[0-9]([ -]{0,2}[0-9]){9}",
    r"[A-PR-UWYZ][A-HK-Y]?[0-9][A-Z0-9]? {0,3}[0-9][ABD-HJLNP-UW-Z]{2}",
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}",
    r"(\+44|0)[1237]([ -]?[0-9]){9}",
)


def make_csv(path: str, megabytes: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    regions = ["north", "south", "east", "west", "midlands", "london"]
    words = [
        "seen",
        "in",
        "clinic",
        "follow",
        "up",
        "review",
        "stable",
        "improved",
        "referred",
        "discharged",
    ]
    size = 0
    target = megabytes * 1_000_000
    with open(path, "w") as fh:
        fh.write("ref,region,age_band,n,mean_cost,note\n")
        i = 0
        while size < target:
            note = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
            if i % 50_000 == 0:
                note += " contact jo.bloggs@example.org 943 476 5919 SW1A 1AA 07700 900123"
            line = (
                f"R{i:08d},{rng.choice(regions)},{rng.randint(1, 9)}0-{rng.randint(1, 9)}9,"
                f"{rng.randint(10, 5000)},{rng.random() * 1000:.2f},{note}\n"
            )
            fh.write(line)
            size += len(line)
            i += 1
    return size


def ours(data: bytes) -> dict[str, int]:
    found: dict[str, int] = {}
    for piece in sdc.text_chunks(data):
        sdc_values.merge_counts(found, sdc_values.identifiers_in(piece))
    return found


def grep(path: str) -> int:
    args = ["grep", "-E", "-c"]
    for p in GREP_PATTERNS:
        args += ["-e", p]
    res = subprocess.run(
        [*args, path], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}
    )
    return int(res.stdout.strip() or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the CSV in MB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("grep") is None:
        raise SystemExit("grep is needed for the baseline")
    tmp = tempfile.mkdtemp(prefix="sde-bench-sdc-")
    try:
        path = os.path.join(tmp, "big.csv")
        size = make_csv(path, args.mb)
        with open(path, "rb") as fh:
            data = fh.read()
        t_ours, t_grep = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            found = ours(data)
            t_ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            lines = grep(path)
            t_grep.append(time.perf_counter() - start)
        print(f"csv: {size / 1e6:.0f} MB; ours found {found}; grep matched {lines} lines")
        print(
            f"identifier scan: ours p50 {statistics.median(t_ours):.2f} s "
            f"({size / 1e6 / statistics.median(t_ours):.0f} MB/s), grep -E -c p50 "
            f"{statistics.median(t_grep):.2f} s"
        )
        table = "".join(
            ",".join([f"g{i}"] + [str(100 + (i * j) % 900) for j in range(9)]) + "\n"
            for i in range(10_000)
        )
        header = "g," + ",".join(f"n{j}" for j in range(9)) + "\n"
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            report = sdc.check("t.csv", (header + table).encode())
            times.append(time.perf_counter() - start)
        print(
            f"table checks, 100,000 cells: p50 {statistics.median(times) * 1000:.0f} ms "
            f"(status {report.status})"
        )
        print(f"ratio={statistics.median(t_ours) / statistics.median(t_grep):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
