"""On a real hub: a running workspace's CPU and memory are metered from its container, the
administrators' CSV (page, through the proxy) and ``sde-admin usage --csv`` agree, and the
service's metrics are read through the proxy with an admin's token (which holds
``read:metrics``) and refused to a researcher's."""

from __future__ import annotations

import csv
import io

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"


def usage_row(hub, person: str, project: str) -> dict | None:
    res = hub.admin("usage", "--csv")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    return next((r for r in rows if (r["person"], r["project"]) == (person, project)), None)


def test_a_workspace_is_metered_and_the_usage_exported(hub):
    bob = User(hub, "bob")
    bob.ensure_stopped(PROJECT)
    before = usage_row(hub, "bob", PROJECT)
    assert bob.spawn_with_form(PROJECT, PROJECT).status_code == 302
    bob.wait_ready(PROJECT)

    # sampled every 2 s (tests/support.py): memory hours grow while the room runs
    def grew():
        row = usage_row(hub, "bob", PROJECT)
        old = float(before["memory_gib_hours"]) if before else 0.0
        return row if row and float(row["memory_gib_hours"]) > old else None

    row = wait_for(grew, 60, "bob's workspace to be metered")
    assert float(row["cpu_hours"]) > 0  # the server's start alone takes CPU time
    assert float(row["memory_peak_gib"]) > 0
    bob.stop(PROJECT)
    after = usage_row(hub, "bob", PROJECT)
    assert int(after["workspaces"]) == int(before["workspaces"] if before else 0) + 1
    assert float(after["workspace_hours"]) > float(before["workspace_hours"] if before else 0)

    admin = User(hub, "admin")
    page = admin.s.get(f"{hub.url}/services/sde/admin/usage.csv", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/csv")
    cli = hub.admin("usage", "--csv").stdout
    assert page.text.splitlines()[0] == cli.splitlines()[0]
    bobs = [line for line in page.text.splitlines() if line.startswith(f"bob,{PROJECT},")]
    assert bobs == [line for line in cli.splitlines() if line.startswith(f"bob,{PROJECT},")]
    assert len(bobs) == 1  # his rooms are stopped: the same figures both ways
    html = admin.s.get(f"{hub.url}/services/sde/admin/usage", timeout=30)
    assert html.status_code == 200 and f"<td>bob</td><td>{PROJECT}</td>" in html.text
    r = User(hub, "alice").s.get(f"{hub.url}/services/sde/admin/usage.csv", timeout=30)
    assert r.status_code == 403 and "bob" not in r.text
    ev = hub.events(action="usage.page.refused")[-1]
    assert (ev["actor"], ev["outcome"]) == ("alice", "denied")


def test_metrics_through_the_proxy_for_a_metrics_token_only(hub):
    eve = User(hub, "eve")  # her training expired: a refused start
    assert eve.spawn_with_form(PROJECT, PROJECT).status_code != 302
    url = f"{hub.url}/services/sde/api/metrics"
    token = User(hub, "admin").token
    r = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"sde_spawns_refused", "sde_export_requests_waiting", "sde_export_decision_seconds",
            "sde_audit_events_lost", "sde_lifecycle_actions"} <= set(families)  # fmt: skip
    training = [s for s in families["sde_spawns_refused"].samples
                if s.labels == {"reason": "training"}]  # fmt: skip
    assert training and training[0].value >= 1
    r = requests.get(url, headers={"Authorization": f"token {User(hub, 'alice').token}"},
                     timeout=30)  # fmt: skip
    assert r.status_code == 403 and "read:metrics" in r.json()["message"]
    assert hub.events(action="metrics.refused")[-1]["actor"] == "alice"
