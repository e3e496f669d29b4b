"""Prometheus metrics of the TRE, served by the ``sde`` service at ``{prefix}api/metrics``.

The figures are read from the registry and the audit trail when Prometheus scrapes (a
:class:`TRECollector` on a registry of its own, run off the event loop), so they hold for
the hub and the service alike, whichever process did the work, and survive restarts:

* ``sde_spawns_refused_total{reason}`` — refused workspace starts, by :func:`reason_code`
  (a fixed set of codes: the audited reasons are free text naming dates and projects);
* ``sde_export_requests_waiting{state,age}`` — submitted and in-review requests, by how long
  they have waited since submission (:data:`AGE_BUCKETS`);
* ``sde_export_decision_seconds`` — histogram of the time from a request's (current)
  submission to its checkers' decision;
* ``sde_audit_events_lost_total{source}`` — events the hub's writer or a workspace's shipper
  had to drop (recorded as ``audit.lost`` with the count);
* ``sde_lifecycle_actions_total{action}`` — lifecycle actions: workspaces closed or culled,
  suspensions, breaches, deletions.

Who may read them: a hub token with the ``read:metrics`` scope (JupyterHub's own scope for
``/hub/metrics``; admins have it), from the pages' networks only (the proxy's, i.e. not from
a workspace, which reaches the service port directly). Anything else is refused (403) and
audited as ``metrics.refused``.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime

from jupyterhub.utils import url_path_join
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select
from tornado import web

from sde_spawner import audit
from sde_spawner.audit.models import AuditEvent
from sde_spawner.checking.models import ExportRequest, ExportVersion
from sde_spawner.services.pages import allowed_from

METRICS_SCOPE = "read:metrics"

#: (code, pattern of the audited reason); the first match names a refusal.
REASON_CODES = (
    ("not_registered", r"not registered"),
    ("person_suspended", r"your account is suspended"),
    ("training", r"training"),
    ("project_not_approved", r"project \S+ is (suspended|closed|not approved)|no such project"),
    ("not_member", r"not a member|role"),
    ("agreement", r"agreement"),
    ("no_data", r"no dataset|extract|opt-out|pseudonym"),
    ("bad_request", r"option|form|server name|named server"),
)
#: Waiting ages: (label, upper bound in seconds).
AGE_BUCKETS = (
    ("under_1h", 3600),
    ("1h_to_1d", 86400),
    ("1d_to_7d", 7 * 86400),
    ("over_7d", float("inf")),
)
DECISION_BUCKETS = (600, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400, float("inf"))
#: Audit actions counted as lifecycle actions (exact names, or prefixes ending in ".").
LIFECYCLE_ACTIONS = (
    "workspace.closed",
    "workspace.close.failed",
    "workspace.culled",
    "person.suspended",
    "project.suspended",
    "project.closed",
    "membership.removed",
    "breach.",
    "deletion.",
)
WAITING = ("submitted", "in_review")


def reason_code(reason: str | None) -> str:
    """A refused spawn's reason as one of a fixed set of codes (pure); of several reasons
    (``"; "``-joined, as :class:`~sde_spawner.policy.Decision` gives them), the first."""
    text = (reason or "").lower().split("; ")[0]
    for code, pattern in REASON_CODES:
        if re.search(pattern, text):
            return code
    return "other"


def age_label(seconds: float) -> str:
    return next(label for label, bound in AGE_BUCKETS if seconds < bound)


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def read_figures(session, now: datetime | None = None) -> dict:
    """Every figure, read from the registry and the audit trail (plain data)."""
    now = _naive(now or datetime.now(UTC))
    refused: dict[str, int] = {}
    rows = session.execute(
        select(AuditEvent.reason, func.count())
        .where(AuditEvent.action == "spawn.refused")
        .group_by(AuditEvent.reason)
    )
    for reason, n in rows:
        code = reason_code(reason)
        refused[code] = refused.get(code, 0) + n

    waiting = {(s, label): 0 for s in WAITING for label, _ in AGE_BUCKETS}
    current = (ExportVersion.request_id == ExportRequest.id) & (
        ExportVersion.number == ExportRequest.current_version
    )
    for state, submitted in session.execute(
        select(ExportRequest.state, ExportVersion.submitted_at)
        .join(ExportVersion, current)
        .where(ExportRequest.state.in_(WAITING))
    ):
        age = (now - _naive(submitted)).total_seconds() if submitted else 0.0
        waiting[(state, age_label(max(0.0, age)))] += 1

    decisions = [
        max(0.0, (_naive(decided) - _naive(submitted)).total_seconds())
        for decided, submitted in session.execute(
            select(ExportRequest.decided_at, ExportVersion.submitted_at)
            .join(ExportVersion, current)
            .where(ExportRequest.decided_at.is_not(None), ExportVersion.submitted_at.is_not(None))
        )
    ]

    lost = {"hub": 0, "workspace": 0}
    for actor, details in session.execute(
        select(AuditEvent.actor, AuditEvent.details).where(AuditEvent.action == "audit.lost")
    ):
        try:
            dropped = int(json.loads(details or "{}").get("dropped", 1))
        except (ValueError, TypeError, AttributeError):
            dropped = 1
        lost["hub" if actor == "hub" else "workspace"] += max(0, dropped)

    lifecycle: dict[str, int] = {}
    for action, n in session.execute(
        select(AuditEvent.action, func.count())
        .where(AuditEvent.outcome != "denied")
        .group_by(AuditEvent.action)
    ):
        if any(
            action == a or (a.endswith(".") and action.startswith(a)) for a in LIFECYCLE_ACTIONS
        ):
            lifecycle[action] = n
    return {
        "refused": refused,
        "waiting": waiting,
        "decisions": decisions,
        "lost": lost,
        "lifecycle": lifecycle,
    }


def families(figures: dict) -> list:
    """The Prometheus metric families of :func:`read_figures`' figures (pure)."""
    refused = CounterMetricFamily(
        "sde_spawns_refused", "Refused workspace starts, by reason.", labels=["reason"]
    )
    for code, _ in (*REASON_CODES, ("other", "")):
        refused.add_metric([code], figures["refused"].get(code, 0))
    waiting = GaugeMetricFamily(
        "sde_export_requests_waiting",
        "Export requests waiting for checkers, by state and time since submission.",
        labels=["state", "age"],
    )
    for (state, label), n in sorted(figures["waiting"].items()):
        waiting.add_metric([state, label], n)
    decisions = figures["decisions"]
    buckets = []
    for bound in DECISION_BUCKETS:
        total = sum(1 for d in decisions if d <= bound)
        buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", total))
    decision = HistogramMetricFamily(
        "sde_export_decision_seconds",
        "Seconds from an export request's submission to its checkers' decision.",
        buckets=buckets,
        sum_value=sum(decisions),
    )
    lost = CounterMetricFamily(
        "sde_audit_events_lost", "Audit events that could not be recorded.", labels=["source"]
    )
    for source, n in sorted(figures["lost"].items()):
        lost.add_metric([source], n)
    lifecycle = CounterMetricFamily(
        "sde_lifecycle_actions", "Lifecycle actions taken, by audit action.", labels=["action"]
    )
    for action, n in sorted(figures["lifecycle"].items()):
        lifecycle.add_metric([action], n)
    return [refused, waiting, decision, lost, lifecycle]


class TRECollector:
    """A Prometheus collector reading the figures from the database at each scrape."""

    def __init__(self, sessionmaker):
        self.sessionmaker = sessionmaker

    def collect(self):
        with self.sessionmaker() as s:
            yield from families(read_figures(s))

    def describe(self):
        return []  # figures are read at scrape time only


def exposition(sessionmaker) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TRECollector(sessionmaker))
    return generate_latest(registry)


class MetricsHandler(web.RequestHandler):
    """``GET {prefix}api/metrics``: a ``read:metrics`` token, from the pages' networks."""

    async def refuse(self, reason: str, actor: str | None) -> None:
        from sde_spawner.checking import flood, limits

        budget = limits.for_app(self.settings)
        if budget.audit_refusal([("addr", flood.client_ip(self))], "403 metrics.refused"):
            await asyncio.to_thread(
                audit.append_committed,
                self.settings["sessionmaker"],
                "metrics.refused",
                actor=(actor or "(unidentified)")[:64],
                outcome="denied",
                reason=reason,
                details={"path": self.request.path, "remote": self.request.remote_ip},
            )
        raise web.HTTPError(403, reason.replace("%", "%%"))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message % exc.args if isinstance(exc, web.HTTPError) else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    async def get(self):
        hub_auth = self.settings["hub_auth"]
        m = hub_auth.auth_header_pat.match(self.request.headers.get("Authorization", ""))
        token = m.group(1).strip() if m else ""
        if not allowed_from(self.request.remote_ip, tuple(self.settings["sde"].page_networks)):
            await self.refuse(
                f"metrics are served only through the hub's proxy, not to {self.request.remote_ip}",
                None,
            )
        model = await hub_auth.user_for_token(token, sync=False) if token else None
        name = (model or {}).get("name")
        if not model or METRICS_SCOPE not in set(model.get("scopes") or ()):
            await self.refuse(f"metrics need a hub token with the {METRICS_SCOPE} scope", name)
        body = await asyncio.to_thread(exposition, self.settings["sessionmaker"])
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


def routes(prefix: str) -> list[tuple]:
    return [(url_path_join(prefix, "api/metrics"), MetricsHandler)]
