"""Safe-data extract build time against a plain DuckDB copy (``python -m benchmarks.extract``).

Synthetic data made in the run: a ``--rows`` (default 5,000,000) row Parquet source of
person-level records (valid NHS numbers, ten columns) and a national opt-out list of
``--optouts`` (default 100,000) valid numbers, half of them people in the source.

* ours: :func:`sde_spawner.datasets.extract.build_extract` — drop invalid identifiers, remove
  everyone on the list, replace the NHS number by the project's HMAC-SHA256 pseudonym, keep
  six of the ten columns, apply the row filter ``age >= 18``, write Parquet, plus its counts,
  source and output SHA-256 and the data dictionary (the native path where the library was
  built; the run says which). On the native path DuckDB streams Arrow batches to two worker
  threads (NHS number check, HMAC, cut to the kept rows, the low-cardinality string columns
  dictionary-encoded) and one pyarrow writer thread, which hashes the file as it writes; the
  source's SHA-256 is taken in a thread of its own meanwhile;
* for the record (run once): the same plain copy with only the NHS number replaced by the
  pseudonym written in DuckDB SQL (the fallback's way), to show what that costs;
* baseline: ``COPY (SELECT <the same six columns> FROM read_parquet(source)) TO ... (FORMAT
  parquet)`` in plain DuckDB (no opt-outs, no pseudonyms, no filter).

Runs alternate, each in a fresh process (so peak memory is each run's own), ``--repeat``
times; medians are reported, with the CPU time (all threads) of the timed part: on a busy
machine wall time varies with other work, CPU time much less. The last line is
``ratio=<ours / plain>`` (goal <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("age", "sex", "region", "diagnosis", "hba1c")


def _cpu() -> float:
    """CPU seconds (all threads) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _nhs_sql(base: str) -> str:
    """SQL: the NHS number made from a 9-digit integer expression (NULL when none exists)."""
    digits = [f"(({base}) // {10 ** (8 - i)} % 10)" for i in range(9)]
    total = " + ".join(f"{10 - i} * {d}" for i, d in enumerate(digits))
    check = f"((11 - ({total}) % 11) % 11)"
    number = f"lpad(CAST(({base}) AS VARCHAR), 9, '0') || CAST({check} AS VARCHAR)"
    return f"CASE WHEN {check} = 10 THEN NULL ELSE {number} END"


def generate(work: Path, rows: int, optouts: int) -> tuple[Path, Path]:
    import duckdb

    source, optout_file = work / "source.parquet", work / "optouts.parquet"
    con = duckdb.connect()
    nhs = _nhs_sql("400000000 + i * 7")
    con.execute(
        f"""
        COPY (
          SELECT nhs_number,
                 (hash(i) % 100)::INT AS age,
                 CASE hash(i + 1) % 2 WHEN 0 THEN 'F' ELSE 'M' END AS sex,
                 ['north', 'south', 'east', 'west'][(hash(i + 2) % 4)::INT + 1] AS region,
                 'ZZ' || (hash(i + 3) % 99)::VARCHAR AS postcode_district,
                 ['E10', 'E11', 'E13', 'I10', 'I21', 'J45'][(hash(i + 4) % 6)::INT + 1]
                   AS diagnosis,
                 round(30 + (hash(i + 5) % 8000) / 100.0, 1) AS hba1c,
                 DATE '2024-01-01' + (hash(i + 6) % 700)::INT AS admitted,
                 (hash(i + 7) % 1000000)::BIGINT AS gp_practice,
                 'free text note ' || (hash(i + 8) % 1000)::VARCHAR AS notes
          FROM (SELECT i, {nhs} AS nhs_number FROM range({int(rows * 1.2)}) t(i))
          WHERE nhs_number IS NOT NULL
          LIMIT {rows}
        ) TO '{source}' (FORMAT parquet)
        """
    )
    other = _nhs_sql("800000000 + i * 13")
    con.execute(
        f"""
        COPY (
          (SELECT nhs_number FROM read_parquet('{source}') USING SAMPLE {optouts // 2} ROWS)
          UNION ALL
          (SELECT n FROM (SELECT {other} AS n FROM range({optouts}) t(i)) WHERE n IS NOT NULL
           LIMIT {optouts - optouts // 2})
        ) TO '{optout_file}' (FORMAT parquet)
        """
    )
    con.close()
    return source, optout_file


def run_ours(source: Path, optout_file: Path, out: Path) -> dict:
    import pyarrow.parquet as pq

    from sde_spawner.datasets.extract import GrantSpec, OptoutVersion, SafeData, build_extract
    from sde_spawner.datasets.pseudonyms import key_id, project_key

    table = pq.read_table(optout_file)
    key = project_key(b"benchmark-master-key-0123456789!", "bench")
    safe = SafeData(
        project="bench",
        key=key,
        key_id=key_id(key),
        optouts=(OptoutVersion("national", 1, table.num_rows, "bench"),),
        load_entries=lambda _ov: table,
    )
    grant = GrantSpec("records", str(source), ("pseudonym", *COLUMNS), "age >= 18", "nhs_number")
    t0, c0 = time.perf_counter(), _cpu()
    res = build_extract([grant], out, safe)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    d = res.manifest["datasets"]["records"]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows_out": d["rows_out"],
        "opted_out": d["removed_by_optout"],
    }


def run_plain(source: Path, out: Path) -> dict:
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _cpu()
    con = duckdb.connect()
    cols = ", ".join(("nhs_number", *COLUMNS))
    con.execute(
        f"COPY (SELECT {cols} FROM read_parquet('{source}')) TO '{out / 'plain.parquet'}' "
        "(FORMAT parquet)"
    )
    con.close()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0}


def run_hmac_only(source: Path, out: Path) -> dict:
    """For the record: the plain copy with only the NHS number replaced by the pseudonym."""
    import duckdb

    from sde_spawner.datasets.pseudonyms import pads, project_key, pseudonym_sql

    ipad, opad = pads(project_key(b"benchmark-master-key-0123456789!", "bench"))
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _cpu()
    con = duckdb.connect()
    cols = ", ".join((f"{pseudonym_sql('nhs_number')} AS pseudonym", *COLUMNS))
    con.execute(
        f"COPY (SELECT {cols} FROM read_parquet('{source}')) TO '{out / 'hmac.parquet'}' "
        "(FORMAT parquet)",
        {"ipad": ipad, "opad": opad},
    )
    con.close()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0}


def child(kind: str, work: Path, n: int) -> None:
    out = work / f"out-{kind}-{n}"
    if kind == "ours":
        result = run_ours(work / "source.parquet", work / "optouts.parquet", out)
    elif kind == "hmac":
        result = run_hmac_only(work / "source.parquet", out)
    else:
        result = run_plain(work / "source.parquet", out)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--optouts", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "WORK", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return
    with tempfile.TemporaryDirectory(prefix="sde-bench-extract-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        source, _ = generate(work, args.rows, args.optouts)
        from sde_spawner.datasets import pseudonym_batch

        path = "native" if pseudonym_batch.available() else "SQL (no native library)"
        print(f"pseudonyms: {path}")
        print(
            f"generated {args.rows:,} rows ({source.stat().st_size / 2**20:.0f} MiB Parquet) and "
            f"{args.optouts:,} opt-outs in {time.perf_counter() - t0:.1f} s"
        )
        runs: dict[str, list[dict]] = {"ours": [], "plain": [], "hmac": []}
        for n in range(args.repeat):
            for kind in ("plain", "ours", "hmac") if n == 0 else ("plain", "ours"):
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.extract", "--child", kind, tmp, str(n)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                runs[kind].append(json.loads(out.strip().splitlines()[-1]))
        for kind, results in runs.items():
            secs = statistics.median(r["seconds"] for r in results)
            cpu = statistics.median(r["cpu_seconds"] for r in results)
            peak = max(r["peak_rss_mb"] for r in results)
            extra = ""
            if kind == "ours":
                r = results[0]
                extra = f", {r['rows_out']:,} rows out, {r['opted_out']:,} removed by opt-out"
            label = {"hmac": "plain + SQL HMAC only (for the record)"}.get(kind, kind)
            print(
                f"{label}: median {secs:.2f} s ({args.rows / secs / 1e6:.2f} M rows/s, "
                f"{cpu:.2f} CPU s), peak RSS {peak:.0f} MiB{extra}"
            )
        ours = statistics.median(r["seconds"] for r in runs["ours"])
        plain = statistics.median(r["seconds"] for r in runs["plain"])
        print(f"target ratio <= 1.5; runs: {args.repeat} each")
        print(f"ratio={ours / plain:.3f}")


if __name__ == "__main__":
    main()
