"""Usage per person and project: workspace hours, CPU hours and memory hours.

* Workspace hours come from the registry's ``workspace`` rows, which the spawner writes at
  every start and stop (:mod:`sde_spawner.spawner`; the hub's events are the same moments).
* CPU and memory are metered by the ``sde`` service: every ``usage_sample_seconds`` it reads
  each running workspace container's statistics from Docker (off the event loop) and
  :func:`record` keeps, per workspace, the container's own cumulative CPU counter and the
  memory in use times the time since the previous sample (:func:`memory_in_use`: usage less
  the reclaimable page cache, as ``docker stats`` shows it).
* :func:`report` sums them per (person, project) over the workspaces started in a period;
  :func:`to_csv` is the administrators' export (``sde-admin usage --csv`` and the download on
  the service's usage page).

Usage rows are metering, not registry facts: they are written here, without an audit row
per sample (which would flood the trail with one event per workspace per minute).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time

from sqlalchemy import select

from sde_spawner.registry import ops
from sde_spawner.registry.models import Workspace, WorkspaceUsage

log = logging.getLogger(__name__)
GiB = 1024**3
#: A gap between samples longer than this many intervals counts as this many (the service
#: was down: what the container did meanwhile is not known, and is not invented).
MAX_GAP_INTERVALS = 2.0


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def memory_in_use(memory_stats: dict) -> int:
    """Bytes in use from Docker's ``memory_stats`` (cgroup v1 or v2), less the page cache
    the kernel can reclaim."""
    usage = int(memory_stats.get("usage") or 0)
    stats = memory_stats.get("stats") or {}
    cache = stats.get("inactive_file", stats.get("total_inactive_file", 0))
    return max(0, usage - int(cache or 0))


def cpu_seconds(stats: dict) -> float:
    """The container's cumulative CPU time, in seconds."""
    return int(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def record(
    session,
    workspace_id: int,
    *,
    cpu: float,
    memory: int,
    now: datetime,
    interval: float,
) -> WorkspaceUsage:
    """One sample of one workspace: ``cpu`` its cumulative CPU seconds, ``memory`` bytes in
    use now; memory counts for the time since the previous sample (the first: one interval;
    at most :data:`MAX_GAP_INTERVALS` intervals)."""
    row = session.get(WorkspaceUsage, workspace_id)
    if row is None:
        row = WorkspaceUsage(workspace_id=workspace_id, cpu_seconds=0.0,
                             memory_byte_seconds=0.0, memory_peak_bytes=0, samples=0)  # fmt: skip
        session.add(row)
    elapsed = (now - row.sampled_at).total_seconds() if row.sampled_at else interval
    elapsed = min(max(0.0, elapsed), MAX_GAP_INTERVALS * interval)
    row.cpu_seconds = max(row.cpu_seconds or 0.0, cpu)  # the counter only grows
    row.memory_byte_seconds = (row.memory_byte_seconds or 0.0) + memory * elapsed
    row.memory_peak_bytes = max(row.memory_peak_bytes or 0, memory)
    row.samples = (row.samples or 0) + 1
    row.sampled_at = now
    return row


def sample(sessionmaker, docker_client, interval: float, now: datetime | None = None) -> int:
    """Sample every open workspace's container once (blocking: run it in a thread); returns
    how many were sampled. A container that is gone or not running is skipped."""
    import docker

    with sessionmaker() as s:
        rooms = [(w.id, w.container) for w in ops.open_workspaces(s)]
    done = 0
    for workspace_id, name in rooms:
        try:
            stats = docker_client.containers.get(name).stats(stream=False, one_shot=True)
            cpu, memory = cpu_seconds(stats), memory_in_use(stats.get("memory_stats") or {})
        except (docker.errors.NotFound, KeyError, TypeError, ValueError):
            continue
        with sessionmaker() as s, s.begin():
            record(s, workspace_id, cpu=cpu, memory=memory, now=now or _now(), interval=interval)
        done += 1
    return done


@dataclass(frozen=True)
class UsageRow:
    person: str
    project: str
    workspaces: int
    workspace_hours: float
    cpu_hours: float
    memory_gib_hours: float
    memory_peak_gib: float


COLUMNS = tuple(UsageRow.__dataclass_fields__)


def report(
    session, *, since: date | None = None, until: date | None = None, now: datetime | None = None
) -> list[UsageRow]:
    """Usage per (person, project) of the workspaces started in [since, until] (dates,
    inclusive); a running workspace counts up to ``now``."""
    now = now or _now()
    stmt = select(Workspace, WorkspaceUsage).outerjoin(
        WorkspaceUsage, WorkspaceUsage.workspace_id == Workspace.id
    )
    if since is not None:
        stmt = stmt.where(Workspace.started_at >= datetime.combine(since, time.min))
    if until is not None:
        stmt = stmt.where(Workspace.started_at <= datetime.combine(until, time.max))
    totals: dict[tuple[str, str], list[float]] = {}
    for ws, use in session.execute(stmt):
        t = totals.setdefault((ws.username, ws.project_slug), [0, 0.0, 0.0, 0.0, 0.0])
        end = ws.stopped_at or now
        t[0] += 1
        t[1] += max(0.0, (end - ws.started_at).total_seconds())
        if use is not None:
            t[2] += use.cpu_seconds or 0.0
            t[3] += use.memory_byte_seconds or 0.0
            t[4] = max(t[4], use.memory_peak_bytes or 0)
    return [
        UsageRow(
            person=person,
            project=project,
            workspaces=int(n),
            workspace_hours=round(seconds / 3600, 4),
            cpu_hours=round(cpu / 3600, 6),
            memory_gib_hours=round(mem / GiB / 3600, 6),
            memory_peak_gib=round(peak / GiB, 4),
        )
        for (person, project), (n, seconds, cpu, mem, peak) in sorted(totals.items())
    ]


def to_csv(rows: list[UsageRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    return buf.getvalue()
