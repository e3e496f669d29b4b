"""The concurrency curve of ``python -m benchmarks.spawn`` (``--curve 1,10,20,50``).

For each database back end in ``--curve-db`` (``sqlite``, ``postgres``) a fresh pair of hubs
is started, as in the benchmark's first part, with as many researchers (SDE) and users (stock)
as the largest level. For each level N, N spawns are posted at once on the SDE hub, all are
stopped, then the same on the stock hub; p50, p95 and failures of spawn-to-ready are reported
per level and spawner.

``postgres``: both hubs' databases (the SDE registry, JupyterHub's own database of each hub)
are databases of their own, ``sde_scale_bench_<run>_*``, created on the server of
``--pg-url`` (default ``$SDE_TEST_POSTGRES_URL``, the test server on 127.0.0.1) for the run and
dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from pathlib import Path

from benchmarks.spawn import (
    concurrent,
    hub_pair,
    levels,
    percentile,
    report,
)

DATABASES = ("sqlite", "postgres")
DEFAULT_PG = "postgresql+psycopg2://sde:sde@127.0.0.1:5432/sde_test"


def add_curve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--curve",
        type=levels,
        default=[],
        metavar="N,N,...",
        help="concurrency levels for SDE and stock, e.g. 1,10,20,50 (default: no curve)",
    )
    p.add_argument(
        "--curve-db",
        type=lambda t: [x for x in t.split(",") if x],
        default=["sqlite"],
        metavar="DB,DB",
        help="hub databases for the curve: sqlite, postgres or both (default sqlite)",
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get("SDE_TEST_POSTGRES_URL", DEFAULT_PG),
        help="PostgreSQL server for --curve-db postgres (a role that may create databases)",
    )


@contextlib.contextmanager
def pg_databases(admin_url: str, names: list[str]):
    """Create databases ``names`` on the server of ``admin_url``; drop them on exit. Yields
    their URLs."""
    import sqlalchemy as sa

    base = sa.engine.make_url(admin_url)
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    created = []
    try:
        with engine.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        yield [base.set(database=n).render_as_string(hide_password=False) for n in names]
    finally:
        with engine.connect() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def run_curves(client, root: Path, events, args) -> list[str]:
    """Run the curve on every database of ``args.curve_db``; the summary lines."""
    lines = []
    top = max(args.curve)
    for db in args.curve_db:
        print(f"\n[4] concurrency curve {args.curve} on {db}", flush=True)
        with contextlib.ExitStack() as stack:
            urls = {}
            if db == "postgres":
                run = uuid.uuid4().hex[:6]
                names = [f"sde_scale_bench_{run}_{k}" for k in ("registry", "hub", "stock")]
                reg, hub, stock = stack.enter_context(pg_databases(args.pg_url, names))
                urls = {"registry_url": reg, "hub_db_url": hub, "stock_db_url": stock}
                print(f"  databases {', '.join(names)} on {args.pg_url.rsplit('@', 1)[-1]}")
            pair = stack.enter_context(hub_pair(client, root / f"curve-{db}", top, top, **urls))
            for n in args.curve:
                for label, side, users in (
                    ("sde", pair.sde_side, pair.crowd[:n]),
                    ("stock", pair.stock_side, pair.stock_crowd[:n]),
                ):
                    print(f"  {db} {label} x{n}:", flush=True)
                    samples = concurrent(side, users, client, events)
                    report(label, samples)
                    ok = [s.seconds for s in samples if s.ok]
                    lines.append(
                        f"curve {db:<8} {label:<5} x{n:<3} p50={percentile(ok, 50):6.2f}s "
                        f"p95={percentile(ok, 95):6.2f}s failures={len(samples) - len(ok)}"
                    )
    return lines
