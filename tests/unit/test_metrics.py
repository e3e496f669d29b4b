"""Prometheus metrics of the ``sde`` service over real HTTP (tornado, fake hub): a
``read:metrics`` token reads figures taken from the registry and the audit trail; a
workspace's token, a person's browser login, no token, or a request from outside the proxy's
networks are refused (403) and audited."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.testing import bind_unused_port

from sde_spawner import audit
from sde_spawner.checking.models import ExportRequest, ExportVersion
from sde_spawner.checking.testing import FakeHubOAuth, browser_model, server_token_model
from sde_spawner.db import open_db
from sde_spawner.services import metrics
from sde_spawner.services.app import ServiceSettings, http_server, make_app

PREFIX = "/services/sde/"
NOW = datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def db(tmp_path):
    sm = open_db(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    with sm() as s, s.begin():
        for reason in (
            "your account is suspended",
            "agreement DSA-1 ended 2026-10-01",
            "agreement DSA-2 is not signed; your training expired on 2026-01-01",
            "something new",
        ):
            audit.append(s, "spawn.refused", actor="alice", outcome="denied", reason=reason)
        audit.append(s, "audit.lost", actor="hub", outcome="error", details={"dropped": 3})
        audit.append(s, "audit.lost", actor="alice", outcome="error", details={"dropped": 2})
        audit.append(s, "workspace.closed", actor="lifecycle", reason="suspended")
        audit.append(s, "workspace.culled", actor="lifecycle", reason="idle")
        audit.append(s, "workspace.culled", actor="lifecycle", reason="idle")
        audit.append(s, "export.approved", actor="chris")  # not a lifecycle action
        waits = [("submitted", timedelta(minutes=5)), ("in_review", timedelta(days=2)),
                 ("submitted", timedelta(days=9))]  # fmt: skip
        for state, age in waits:
            r = ExportRequest(project_slug="p1", requester="alice", state=state)
            r.versions.append(ExportVersion(number=1, submitted_at=NOW - age))
            s.add(r)
        decided = ExportRequest(
            project_slug="p1", requester="alice", state="approved", decided_at=NOW
        )
        decided.versions.append(ExportVersion(number=1, submitted_at=NOW - timedelta(hours=2)))
        s.add(decided)
    return sm


@contextlib.asynccontextmanager
async def serving(tmp_path, **settings):
    settings = ServiceSettings.from_env(prefix=PREFIX, bind_ip="127.0.0.1", port=0,
                                        db_url=f"sqlite:///{tmp_path}/registry.sqlite",
                                        state_dir=str(tmp_path), **settings)  # fmt: skip
    auth = FakeHubOAuth(
        {
            "prom": {"kind": "service", "name": "prometheus", "scopes": ["read:metrics"]},
            "ws-alice": server_token_model("alice", "p1"),
            "oauth-alice": browser_model("alice"),
        }
    )
    app = make_app(settings, hub_auth=auth)
    sock, port = bind_unused_port()
    server = http_server(app)
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)

    async def get(token=None):
        headers = {"Authorization": f"token {token}"} if token else {}
        req = HTTPRequest(f"http://127.0.0.1:{port}{PREFIX}api/metrics", headers=headers)
        return await client.fetch(req, raise_error=False)

    try:
        yield get
    finally:
        server.stop()
        client.close()
        await server.close_all_connections()
        auth.close()


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_a_metrics_token_reads_the_figures(tmp_path, db):
    async with serving(tmp_path) as get:
        r = await get("prom")
    assert r.code == 200, r.body
    assert r.headers["Content-Type"].startswith("text/plain")
    got = samples(r.body.decode())
    refused = {k[1][0][1]: v for k, v in got.items() if k[0] == "sde_spawns_refused_total"}
    assert refused == {"not_registered": 0, "person_suspended": 1, "training": 0,
                       "project_not_approved": 0, "not_member": 0, "agreement": 2, "no_data": 0,
                       "bad_request": 0, "other": 1}  # fmt: skip
    waiting = {
        dict(k[1])["state"] + "/" + dict(k[1])["age"]: v
        for k, v in got.items()
        if k[0] == "sde_export_requests_waiting" and v
    }
    assert waiting == {"submitted/under_1h": 1, "in_review/1d_to_7d": 1, "submitted/over_7d": 1}
    assert got[("sde_export_decision_seconds_count", ())] == 1
    assert got[("sde_export_decision_seconds_bucket", (("le", "3600"),))] == 0
    assert got[("sde_export_decision_seconds_bucket", (("le", "14400"),))] == 1
    assert 7190 < got[("sde_export_decision_seconds_sum", ())] < 7300
    assert got[("sde_audit_events_lost_total", (("source", "hub"),))] == 3
    assert got[("sde_audit_events_lost_total", (("source", "workspace"),))] == 2
    lifecycle = {dict(k[1])["action"]: v for k, v in got.items()
                 if k[0] == "sde_lifecycle_actions_total"}  # fmt: skip
    assert lifecycle == {"workspace.closed": 1, "workspace.culled": 2}


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (None, "read:metrics scope"),
        ("ws-alice", "read:metrics scope"),  # a workspace's server token
        ("oauth-alice", "read:metrics scope"),  # a person's login to the service
        ("made-up", "read:metrics scope"),
    ],
)
async def test_anything_but_a_metrics_token_is_refused_and_audited(tmp_path, db, token, why):
    async with serving(tmp_path) as get:
        r = await get(token)
    assert r.code == 403 and why.encode() in r.body
    assert b"sde_" not in r.body
    with db() as s:
        (event,) = audit.query(s, action="metrics.refused")
    assert why in event.reason and event.outcome == "denied"


async def test_metrics_are_not_served_outside_the_proxys_networks(tmp_path, db):
    """Workspaces reach the service port from their gateway: no figures for them."""
    async with serving(tmp_path, page_networks=["10.99.0.0/16"]) as get:
        r = await get("prom")
    assert r.code == 403 and b"only through the hub" in r.body
    with db() as s:
        (event,) = audit.query(s, action="metrics.refused")
    assert "127.0.0.1" in event.reason


def test_reason_codes_are_a_fixed_set():
    assert metrics.reason_code("project p1 is not approved by the Data Access Committee") == (
        "project_not_approved"
    )
    assert metrics.reason_code("you are not a member of project p1") == "not_member"
    assert metrics.reason_code("you are not registered in this environment") == "not_registered"
    assert metrics.reason_code(None) == "other"
    assert json.dumps(metrics.age_label(30)) == '"under_1h"'
