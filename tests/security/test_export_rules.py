"""The export rules hold against a researcher who skips the extension.

Code in a workspace (a terminal, a kernel) has the server's own token in its environment and
can call the ``sde`` service's export API directly (``$SDE_SERVICE_URL api/exports``), past
every check of the workspace extension. Each probe runs as the researcher inside alice's
real container against the real service: a program by name (``tool.exe``, a real ELF from
the image), a program under a table's name (``results.csv``) and an archive under a figure's
name (``table.png``) are refused by the service with a reason and an audited denial, and none
of them can be submitted. The control sends a real CSV the very same way and it is accepted
and submitted, so the probe would see a breach if the service's checks were gone.
"""

from __future__ import annotations

import json

import pytest

from sde_spawner.containers import workspace_names
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"

#: Runs in the workspace as the researcher: builds each file's bytes there, then create,
#: upload, submit straight against the service with the workspace's own token.
DIRECT = r"""
import hashlib, io, json, os, sys, urllib.error, urllib.request, zipfile

assert os.getuid() == 1000, os.getuid()
base, token = os.environ["SDE_SERVICE_URL"], os.environ["JUPYTERHUB_API_TOKEN"]

def call(method, path, body=None, raw=None):
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": "token " + token})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return [r.status, json.loads(r.read() or b"null")]
    except urllib.error.HTTPError as e:
        return [e.code, json.loads(e.read() or b"null")]

def zipped():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.write("/etc/passwd", "patients.csv")
    return out.getvalue()

elf = open(sys.executable, "rb").read()
cases = {
    "tool.exe": elf,
    "results.csv": elf,
    "table.png": zipped(),
    "control.csv": b"region,n\nnorth,120\nsouth,98\n",
}
out = {}
for name, data in cases.items():
    body = {"justification": "Table 2 of the paper", "files": [
        {"path": name, "description": "counts by region", "size": len(data),
         "sha256": hashlib.sha256(data).hexdigest()}]}
    steps = {"create": call("POST", "api/exports", body)}
    if steps["create"][0] == 201:
        rid = steps["create"][1]["id"]
        steps["upload"] = call("PUT", f"api/exports/{rid}/files/0", raw=data)
        steps["submit"] = call("POST", f"api/exports/{rid}/submit")
        steps["id"] = rid
    out[name] = steps
print(json.dumps(out))
"""

WITHDRAW = r"""
import os, sys, urllib.request as u
url = os.environ["SDE_SERVICE_URL"] + f"api/exports/{sys.argv[1]}/withdraw"
auth = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
print(u.urlopen(u.Request(url, data=b"", method="POST", headers=auth), timeout=30).status)
"""


@pytest.fixture(scope="module")
def alice(hub):
    return User(hub, "alice")


@pytest.fixture(scope="module")
def alice_ws(hub, alice, docker_client):
    alice.ensure_running(PROJECT)
    return docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)


def test_direct_calls_from_the_workspace_get_the_export_rules(hub, alice_ws):
    res = alice_ws.exec_run(["python3", "-c", DIRECT])
    text = res.output.decode(errors="replace")
    assert res.exit_code == 0, text
    out = json.loads(text.strip().splitlines()[-1])

    # a program by name: refused at create, nothing made
    status, body = out["tool.exe"]["create"]
    assert (status, body.get("code")) == (400, "type_not_allowed"), body
    assert "tool.exe: files of type .exe may not be exported" in body["message"]
    assert "upload" not in out["tool.exe"]

    # a program named like a table, an archive named like a figure: the bytes decide
    for name, also in (("results.csv", "executable"), ("table.png", "archive")):
        steps = out[name]
        assert steps["create"][0] == 201, steps
        status, body = steps["upload"]
        assert (status, body.get("code")) == (422, "type_mismatch"), body
        assert [p["code"] for p in body["problems"]] == ["type_mismatch", also]
        status, body = steps["submit"]
        assert status == 409 and "not uploaded yet" in body["message"], body

    # control: a real CSV the very same way is accepted and submitted
    steps = out["control.csv"]
    assert [steps[k][0] for k in ("create", "upload", "submit")] == [201, 200, 200], steps
    assert steps["submit"][1]["state"] == "submitted"

    created = hub.events(action="export.created", outcome="denied", actor="alice")
    assert any(
        e["project"] == PROJECT
        and e["details"]["code"] == "type_not_allowed"
        and e["details"]["problems"][0]["path"] == "tool.exe"
        for e in created
    ), created
    uploads = hub.events(action="export.file.uploaded", outcome="denied", actor="alice")
    refused = {
        (e["details"]["request"], e["details"]["path"], e["details"]["detected"])
        for e in uploads
        if e["details"].get("code") == "type_mismatch"
    }
    assert {
        (out["results.csv"]["id"], "results.csv", "elf"),
        (out["table.png"]["id"], "table.png", "zip"),
    } <= refused
    assert all(e["project"] == PROJECT and e["reason"] for e in uploads)

    # leave alice's queue as it was for the modules after this one
    withdrawn = alice_ws.exec_run(["python3", "-c", WITHDRAW, str(out["control.csv"]["id"])])
    assert withdrawn.output.decode().strip() == "200", withdrawn.output
