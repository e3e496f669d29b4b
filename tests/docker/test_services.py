"""The `sde` service as workspaces see it: reachable on its port, and audit ingestion stamps
the actor and project from the workspace's own token, never from the request body."""

from __future__ import annotations

import json

import pytest

from sde_spawner.containers import workspace_names
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"

POST = r"""
import json, os, sys, urllib.request, urllib.error
body = sys.argv[1].encode()
token = sys.argv[2] if len(sys.argv) > 2 else os.environ["JUPYTERHUB_API_TOKEN"]
req = urllib.request.Request(os.environ["SDE_SERVICE_URL"] + "api/audit/events", data=body,
    headers={"Authorization": "token " + token, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


@pytest.fixture(scope="module")
def alice_ws(hub, docker_client):
    User(hub, "alice").ensure_running(PROJECT)
    return docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)


def post_from(container, body: dict, token: str | None = None) -> tuple[int, dict]:
    args = ["python3", "-c", POST, json.dumps(body)] + ([token] if token else [])
    res = container.exec_run(args)
    status, _, text = res.output.decode().strip().partition(" ")
    return int(status), json.loads(text)


def test_workspace_activity_is_stamped_with_its_own_identity(hub, alice_ws):
    status, body = post_from(
        alice_ws, {"events": [{"action": "file.saved", "details": {"path": "analysis.ipynb"}}]}
    )
    assert (status, body) == (200, {"accepted": 1})
    ev = hub.events(action="file.saved")[-1]
    assert ev["actor"] == "alice" and ev["project"] == PROJECT
    assert json.loads(ev["details"]) if isinstance(ev["details"], str) else ev["details"]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"action": "file.saved", "actor": "bob"}, "actor is set by the hub"),
        ({"action": "file.saved", "project": "cardio-audit"}, "project is set by the hub"),
        ({"action": "spawn.started"}, "is not a workspace activity"),
        ({"action": "project.approved"}, "is not a workspace activity"),
    ],
)
def test_workspace_cannot_write_as_someone_else_or_as_the_hub(hub, alice_ws, event, message):
    n = len(hub.events(action=event["action"]))
    status, body = post_from(alice_ws, {"events": [event]})
    assert status == 400 and message in body["message"], body
    assert len(hub.events(action=event["action"])) == n
    refused = hub.events(action="audit.ingest.refused")[-1]
    assert refused["actor"] == "alice" and message in refused["reason"]


def test_a_personal_or_forged_token_is_refused(hub, alice_ws):
    personal = User(hub, "alice").token  # a person's own API token is not a workspace token
    n = len(hub.events(action="file.saved"))
    status, body = post_from(alice_ws, {"events": [{"action": "file.saved"}]}, token="forged")
    assert status == 403, body
    assert hub.events(action="audit.ingest.refused")[-1]["actor"] == "(unidentified)"
    status, body = post_from(alice_ws, {"events": [{"action": "file.saved"}]}, token=personal)
    assert status == 403 and "workspace's own token" in body["message"], body
    assert hub.events(action="audit.ingest.refused")[-1]["actor"] == "alice"
    assert len(hub.events(action="file.saved")) == n
