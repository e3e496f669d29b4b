"""The hub seen from inside a workspace: only what its Jupyter server needs.

The hub's port is the one host port a workspace reaches besides the ``sde`` service. A
researcher who brings a credential into the room (types their password into the hub's login
form, pastes an API token made in their browser) must not be able to use the hub from there:
an API token's *note* is listed outside the room, so creating tokens is a way out for data;
so is anything else that writes text the researcher can read later. Each probe runs inside
alice's real container against the hub's real port; the control sends the very same request
from the host (loopback, where the proxy and services live) and it works there.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import requests

from sde_spawner.containers import workspace_names
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
SECRET_ROW = "9434765919,1961-02-03,HbA1c 71"

HTTP = r"""
import json, os, sys, urllib.error, urllib.request
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
opener = urllib.request.build_opener(NoRedirect)
base = os.environ["JUPYTERHUB_API_URL"].rsplit("/hub/api", 1)[0]
out = []
for method, path, headers, body in json.loads(sys.argv[1]):
    if headers.pop("_server_token", None):
        headers["Authorization"] = "token " + os.environ["JUPYTERHUB_API_TOKEN"]
    data = body.encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with opener.open(req, timeout=15) as r:
            out.append([r.status, r.read(2000).decode(errors="replace")])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.read(2000).decode(errors="replace")])
    except OSError as e:
        out.append([0, repr(e)])
print(json.dumps(out))
"""


def from_workspace(container, *requests_: tuple) -> list[tuple[int, str]]:
    res = container.exec_run(["python3", "-c", HTTP, json.dumps([list(r) for r in requests_])])
    out = res.output.decode(errors="replace")
    assert res.exit_code == 0, out
    return [tuple(x) for x in json.loads(out.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def alice(hub):
    return User(hub, "alice")


@pytest.fixture(scope="module")
def alice_ws(hub, alice, docker_client):
    alice.ensure_running(PROJECT)
    return docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)


def token_notes(alice: User) -> list[str]:
    r = alice.api("GET", f"/users/{alice.name}/tokens")
    r.raise_for_status()
    return [t.get("note") or "" for t in r.json()["api_tokens"]]


def test_a_pasted_token_cannot_use_the_hub_api_from_inside(hub, alice, alice_ws):
    auth = {"Authorization": f"token {alice.token}", "Content-Type": "application/json"}
    note = json.dumps({"note": SECRET_ROW, "expires_in": 600})
    spoofed = {**auth, "X-Forwarded-For": "127.0.0.1", "X-Real-Ip": "127.0.0.1"}
    results = from_workspace(
        alice_ws,
        ("POST", "/hub/api/users/alice/tokens", auth, note),
        ("POST", "/hub/api/users/alice/tokens", spoofed, note),
        ("GET", "/hub/api/users/alice/tokens", auth, None),
        ("GET", "/hub/api/users", auth, None),
        ("POST", "/hub/api/users/alice/servers/other", auth, "{}"),
        ("DELETE", "/hub/api/users/alice/servers/" + PROJECT, auth, None),
    )
    for status, body in results:
        assert status == 403, body
        assert "the hub does not serve" in body and "to workspaces" in body
    assert SECRET_ROW not in json.dumps(token_notes(alice))
    assert alice.server(PROJECT)["ready"]  # the DELETE did not stop it

    # control: the same token and request from the host are accepted (then cleaned up)
    r = requests.post(
        f"{hub.url}/hub/api/users/alice/tokens",
        headers=auth,
        data=json.dumps({"note": "control", "expires_in": 60}),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    alice.api("DELETE", f"/users/alice/tokens/{r.json()['id']}")

    denied = hub.events(action="hub.gate.denied")
    mine = [e for e in denied if e["details"]["path"].startswith("/hub/api/users")]
    assert len(mine) >= 6
    assert {(e["actor"], e["project"]) for e in mine} == {("alice", PROJECT)}
    assert all(e["outcome"] == "denied" and e["details"]["peer"] for e in mine)


def test_the_login_form_is_not_served_to_workspaces(hub, alice_ws):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    (login_page, login_post, home) = from_workspace(
        alice_ws,
        ("GET", "/hub/login", {}, None),
        ("POST", "/hub/login", form, "username=alice&password=demo"),
        ("GET", "/hub/home", {}, None),
    )
    for status, body in (login_page, login_post, home):
        assert status == 403 and "the hub does not serve" in body, body
    # control: through the proxy (outside) the same form logs alice in
    assert User(hub, "alice").logged_in


def test_activity_timestamps_cannot_carry_data_out(hub, alice, alice_ws):
    """The hub keeps activity timestamps to the microsecond and shows them outside: a script
    posting chosen timestamps with the server's own token would write 20 bits per post."""
    user = alice.api("GET", "/users/alice").json()
    before = user["servers"][PROJECT]["last_activity"]
    now = datetime.now(UTC).replace(microsecond=0)
    coded = (now + timedelta(microseconds=int("943476", 10))).isoformat().replace("+00:00", "Z")
    body = json.dumps({"last_activity": coded, "servers": {PROJECT: {"last_activity": coded}}})
    headers = {"_server_token": "1", "Content-Type": "application/json"}
    ((status, text),) = from_workspace(
        alice_ws, ("POST", "/hub/api/users/alice/activity", headers, body)
    )
    assert status == 403 and "the hub does not serve" in text, text
    after = alice.api("GET", "/users/alice").json()["servers"][PROJECT]["last_activity"]
    assert after == before and "943476" not in json.dumps(alice.api("GET", "/users/alice").json())
    env = alice_ws.exec_run(["printenv", "JUPYTERHUB_ACTIVITY_URL"])
    assert env.exit_code == 1  # the server is not told to send any

    # control: the same post with the same server token from the host is stored as sent
    token = alice_ws.exec_run(["printenv", "JUPYTERHUB_API_TOKEN"]).output.decode().strip()
    r = requests.post(
        f"http://127.0.0.1:{hub.hub_port}/hub/api/users/alice/activity",
        headers={"Authorization": f"token {token}"},
        data=body,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    shown = alice.api("GET", "/users/alice").json()["servers"][PROJECT]["last_activity"]
    assert ".943476" in shown


def test_what_the_workspace_server_needs_still_works(alice, alice_ws):
    ok = from_workspace(
        alice_ws,
        ("GET", "/hub/api/", {}, None),
        ("GET", "/hub/api/user", {"_server_token": "1"}, None),
    )
    assert ok[0][0] == 200 and '"version"' in ok[0][1]
    assert ok[1][0] == 200 and json.loads(ok[1][1])["name"] == "alice"
    # and JupyterLab, which logs in through the hub's OAuth, is reachable from the browser side
    r = alice.workspace_get(PROJECT, "api/status")
    assert r.status_code == 200, r.text
