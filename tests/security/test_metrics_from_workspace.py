"""The service's metrics seen from inside a workspace: nothing, even with an admin's token.

A workspace reaches the ``sde`` service's port directly (its gateway), not through the proxy.
The metrics need a ``read:metrics`` token *and* a request through the proxy: an admin's
token pasted into the room (which has the scope) still reads nothing there, and the refusal
is audited. The control sends the same token through the proxy from the host and reads them.
"""

from __future__ import annotations

import json

import pytest
import requests

from sde_spawner.containers import workspace_names
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"

GET = r"""
import json, os, sys, urllib.error, urllib.request
url = os.environ["SDE_SERVICE_URL"].rstrip("/") + "/api/metrics"
out = []
for token in json.loads(sys.argv[1]):
    token = token or os.environ["JUPYTERHUB_API_TOKEN"]
    req = urllib.request.Request(url, headers={"Authorization": "token " + token})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            out.append([r.status, r.read(4000).decode(errors="replace")])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.read(4000).decode(errors="replace")])
print(json.dumps(out))
"""


def test_an_admin_token_pasted_into_a_workspace_reads_no_metrics(hub, docker_client):
    alice = User(hub, "alice")
    alice.ensure_running(PROJECT)
    room = docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)
    admin_token = User(hub, "admin").token
    res = room.exec_run(["python3", "-c", GET, json.dumps([admin_token, ""])], user="1000:1000")
    assert res.exit_code == 0, res.output
    results = json.loads(res.output.decode().strip().splitlines()[-1])
    for status, body in results:  # the admin's token, then the server's own
        assert status == 403, body
        assert "only through the hub's proxy" in json.loads(body)["message"]
        assert "sde_spawns_refused" not in body
    refused = [e for e in hub.events(action="metrics.refused") if "proxy" in e["reason"]]
    assert len(refused) >= 2

    # control: the same admin token through the proxy, from the host
    r = requests.get(
        f"{hub.url}/services/sde/api/metrics",
        headers={"Authorization": f"token {admin_token}"},
        timeout=30,
    )
    assert r.status_code == 200 and "sde_spawns_refused_total" in r.text
