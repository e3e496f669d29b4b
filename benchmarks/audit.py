"""Audit trail throughput and verify time (``python -m benchmarks.audit``).

On a temporary SQLite file (WAL, default synchronous, as ``make_engine`` configures it):

* single appends, one transaction (and fsync) each;
* batched appends (``--batch`` events per transaction) through ``audit.append_many``;
* baseline: a plain executemany INSERT of the very same rows, in the same batches, into an
  identical table (same columns and indexes) with no chain, no lock and no hashing,
  interleaved batch by batch with the chained run so both see the same conditions;
* ``audit.verify`` over all ``--events`` events (default 1,000,000), with a signed checkpoint.

Goals from the issue: >= 20,000 batched appends/s on SQLite, verify of 1M events <= 5 s.
The last line is ``ratio=<batched chained throughput / plain insert throughput>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Index, MetaData, Table, insert

from sde_spawner import audit
from sde_spawner.audit.models import AUDIT_TABLES, AuditEvent
from sde_spawner.db import Base, make_engine, make_sessionmaker

ACTIONS = ("workspace.start", "file.open", "kernel.execute", "export.request", "egress.blocked")
KEY = b"benchmark-checkpoint-key-0123456789"


def make_events(start: int, count: int, t0: datetime) -> list[dict]:
    return [
        {
            "action": ACTIONS[i % len(ACTIONS)],
            "actor": f"user{i % 97}",
            "project": f"project{i % 13}",
            "outcome": "denied" if i % 50 == 0 else "allowed",
            "reason": "not approved" if i % 50 == 0 else None,
            "details": {"path": f"/home/jovyan/work/analysis_{i}.ipynb", "bytes": i * 17},
            "at": t0 + timedelta(microseconds=i * 1000),
        }
        for i in range(start, start + count)
    ]


def plain_table() -> Table:
    """An identical copy of audit_event (columns, PK, indexes) in its own metadata, no triggers."""
    metadata = MetaData()
    source = AuditEvent.__table__
    table = Table("audit_event_plain", metadata, *(c._copy() for c in source.columns))
    for index in source.indexes:
        Index(f"{index.name}_plain", *(table.c[c.name] for c in index.columns))
    return table


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} events/s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events for batch + verify")
    parser.add_argument("--batch", type=int, default=1000, help="events per batched transaction")
    parser.add_argument("--single", type=int, default=2000, help="single-append transactions")
    parser.add_argument("--saves", type=int, default=300, help="contents saves per server")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sde-audit-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'audit.sqlite'}"
        engine = make_engine(url)
        Base.metadata.create_all(engine, tables=AUDIT_TABLES)
        plain = plain_table()
        plain.metadata.create_all(engine)
        Session = make_sessionmaker(engine)
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        print(f"SQLite file in {tmp}; {args.events:,} events, batches of {args.batch}")

        # single appends: one transaction each
        singles = make_events(0, args.single, t0)
        started = time.perf_counter()
        for event in singles:
            with Session() as s:
                audit.append(s, **event)
                s.commit()
        single_s = time.perf_counter() - started
        print(f"single appends (1 per transaction): {rate(args.single, single_s)}")

        # batched appends vs plain INSERT of the same rows, interleaved batch by batch
        chained_s = plain_s = 0.0
        written = args.single
        columns = [c.name for c in plain.columns]
        while written < args.events:
            n = min(args.batch, args.events - written)
            events = make_events(written, n, t0)
            started = time.perf_counter()
            with Session() as s:
                stored = audit.append_many(s, events)
                s.commit()
            chained_s += time.perf_counter() - started
            rows = [{name: getattr(e, name) for name in columns} for e in stored]
            started = time.perf_counter()
            with engine.begin() as c:
                c.execute(insert(plain), rows)
            plain_s += time.perf_counter() - started
            written += n
        batched = written - args.single
        chained_rate = batched / chained_s
        plain_rate = batched / plain_s
        goal = "met" if chained_rate >= 20_000 else "NOT met"
        print(
            f"batched appends ({args.batch} per transaction): {rate(batched, chained_s)} "
            f"(goal >= 20,000/s: {goal})"
        )
        print(f"baseline plain INSERT, same rows, no chain: {rate(batched, plain_s)}")

        with Session() as s:
            audit.checkpoint(s, KEY)
            s.commit()
        started = time.perf_counter()
        result = audit.verify(engine, checkpoint_key=KEY)
        verify_s = time.perf_counter() - started
        if not result.ok or result.checked != written:
            raise SystemExit(f"verify failed: {result}")
        scaled = verify_s * 1_000_000 / written
        goal = "met" if scaled <= 5 else "NOT met"
        print(
            f"verify {written:,} events: {verify_s:.2f} s ({rate(written, verify_s)}; "
            f"{scaled:.2f} s per 1M, goal <= 5 s: {goal})"
        )
        engine.dispose()
    print(f"chained/plain batched append throughput: {chained_rate / plain_rate:.3f}")

    from benchmarks.audit_save import measure

    save = measure(args.saves)
    print(
        f"contents save, p50 over {save['saves']} each: with audit "
        f"{save['audited_p50'] * 1000:.2f} ms, without {save['plain_p50'] * 1000:.2f} ms "
        f"({save['events_received']} file.saved events shipped; target ratio <= 1.05)"
    )
    print(f"ratio={save['audited_p50'] / save['plain_p50']:.3f}")


if __name__ == "__main__":
    main()
