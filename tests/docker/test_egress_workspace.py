"""The egress extension in a real workspace behind the real hub, proxy and `sde` service.

From inside alice's container (``docker exec``, as uid 1000 with the container's own
environment: her server token, SDE_SERVICE_URL) and from her side of the proxy: an export
request made with ``python -m egress_extension.cli`` reaches output checking with the bytes
that were in the file; a link into /data is refused; downloads through the proxy are refused;
and file saves, kernel starts and code sent through a kernel websocket land in the hub-side
audit trail stamped with alice and her project, whatever the container says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid

import pytest
import requests

from sde_spawner.containers import workspace_names
from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
HOME = "/home/researcher"


def details(event: dict) -> dict:
    d = event.get("details") or {}
    return json.loads(d) if isinstance(d, str) else d


def events_where(hub, action: str, predicate, timeout: float = 30) -> list[dict]:
    """Audit events of ``action`` matching ``predicate``, waiting for the workspace to ship."""

    def found():
        return [e for e in hub.events(action=action) if predicate(details(e), e)]

    return wait_for(found, timeout, f"a {action} event in the hub's audit trail")


@pytest.fixture(scope="module")
def alice(hub):
    user = User(hub, "alice")
    assert user.logged_in, hub.log_tail()
    user.ensure_running(PROJECT)
    return user


@pytest.fixture(scope="module")
def alice_ws(hub, alice, docker_client):
    return docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)


def sh(container, *argv: str) -> tuple[int, str, str]:
    res = container.exec_run(list(argv), workdir=HOME, demux=True)
    out, err = res.output
    return res.exit_code, (out or b"").decode(), (err or b"").decode()


def write_file(container, name: str, text: str) -> None:
    code = f"open({HOME + '/' + name!r}, 'w').write({text!r})"
    assert sh(container, "python3", "-c", code)[0] == 0


def workspace_url(hub, path: str) -> str:
    return f"{hub.url}/user/alice/{PROJECT}/{path.lstrip('/')}"


def test_cli_submits_an_export_request_end_to_end(hub, alice, alice_ws):
    marker = uuid.uuid4().hex[:8]
    content = f"region,n\nnorth,120\nsouth,{marker}\n"
    write_file(alice_ws, "results.csv", content)
    listing = ("sh", "-c", f"find {HOME} -path {HOME}/.local -prune -o -print | sort")
    before = sh(alice_ws, *listing)[1]
    code, out, err = sh(
        alice_ws,
        "python3",
        "-m",
        "egress_extension.cli",
        "submit",
        "results.csv",
        "--justification",
        f"Aggregate counts by region for the paper ({marker})",
        "--description",
        "counts by region, all cells n>=10",
    )
    assert code == 0, err + out
    assert "submitted" in out
    digest = hashlib.sha256(content.encode()).hexdigest()
    assert digest in out
    request_id = int(out.split()[2])

    (created,) = events_where(hub, "export.created", lambda d, e: d.get("request") == request_id)
    assert (created["actor"], created["project"]) == ("alice", PROJECT)
    assert details(created)["files"] == [
        {"path": "results.csv", "size": len(content.encode()), "sha256": digest}
    ]
    (submitted,) = events_where(
        hub, "export.submitted", lambda d, e: d.get("request") == request_id
    )
    assert submitted["actor"] == "alice"

    write_file(alice_ws, "results.csv", "edited after submission\n")
    code, out, err = sh(alice_ws, "python3", "-m", "egress_extension.cli", "list")
    assert code == 0 and f"{request_id:>5}  submitted" in out, err + out
    # No copy of the file was made in the workspace: the service holds the only other copy.
    assert sh(alice_ws, *listing)[1] == before


def test_a_link_into_data_is_refused_and_audited(hub, alice, alice_ws):
    code, out, _ = sh(alice_ws, "ls", "/data")
    assert code == 0 and out.split(), "the workspace has no /data extract"
    target = "/data/patients.csv" if "patients.csv" in out.split() else f"/data/{out.split()[0]}"
    name = f"linked-{uuid.uuid4().hex[:6]}.csv"
    assert sh(alice_ws, "ln", "-s", target, f"{HOME}/{name}")[0] == 0
    code, out, err = sh(
        alice_ws, "python3", "-m", "egress_extension.cli", "submit", name, "-j", "j", "-d", "d"
    )
    assert code == 1 and out == ""
    assert err.startswith(f"sde-export: error: {name} is a symbolic link to {target}"), err
    (refused,) = events_where(hub, "export.refused", lambda d, e: d.get("path") == name)
    assert (refused["actor"], refused["project"], refused["outcome"]) == (
        "alice",
        PROJECT,
        "denied",
    )
    assert f"symbolic link to {target}" in refused["reason"]


def test_downloads_through_the_proxy_are_refused_and_audited(hub, alice, alice_ws):
    write_file(alice_ws, "download-me.csv", "a,b\n1,2\n")
    r = alice.workspace_get(PROJECT, "files/download-me.csv?download=1")
    assert r.status_code == 403
    assert "Download blocked" in r.text and "1,2" not in r.text
    (blocked,) = events_where(
        hub, "download.blocked", lambda d, e: d.get("path") == "download-me.csv"
    )
    assert (blocked["actor"], blocked["project"]) == ("alice", PROJECT)
    assert details(blocked)["channel"] == "files" and details(blocked)["download_flag"] is True

    r = alice.workspace_get(PROJECT, "nbconvert/html/nothing.ipynb?download=true")
    assert r.status_code == 403


def test_viewing_notebooks_and_csv_still_works_and_saves_are_audited(hub, alice, alice_ws):
    headers = {"Authorization": f"token {alice.token}"}
    name = f"notes-{uuid.uuid4().hex[:6]}.ipynb"
    notebook = {
        "type": "notebook",
        "content": {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []},
    }
    r = requests.put(
        workspace_url(hub, f"api/contents/{name}"), json=notebook, headers=headers, timeout=30
    )
    assert r.status_code == 201, r.text
    r = alice.workspace_get(PROJECT, f"api/contents/{name}?content=1")
    assert r.status_code == 200 and r.json()["type"] == "notebook"
    write_file(alice_ws, "view.csv", "x,y\n1,2\n")
    r = alice.workspace_get(PROJECT, "api/contents/view.csv?type=file&format=text&content=1")
    assert r.status_code == 200 and r.json()["content"] == "x,y\n1,2\n"

    (saved,) = events_where(hub, "file.saved", lambda d, e: d.get("path") == name)
    assert (saved["actor"], saved["project"]) == ("alice", PROJECT)
    assert details(saved)["source"] == "workspace"
    (opened,) = events_where(hub, "file.opened", lambda d, e: d.get("path") == name)
    assert opened["actor"] == "alice"


def test_a_raw_binary_download_through_the_contents_api_is_refused(hub, alice, alice_ws):
    assert sh(alice_ws, "sh", "-c", f"head -c 256 /dev/urandom > {HOME}/blob.bin")[0] == 0
    r = alice.workspace_get(PROJECT, "api/contents/blob.bin?type=file&format=base64&content=1")
    assert r.status_code == 403 and "blocked" in r.json()["message"]
    assert "content" not in r.json()


def kernel_message(msg_type: str, content: dict, msg_id: str, channel: str = "shell") -> dict:
    """One Jupyter kernel protocol message, as a browser's websocket sends it."""
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": "alice",
        "session": uuid.uuid4().hex,
        "version": "5.3",
        "date": "",
    }
    return {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


async def kernel_exchange(hub, token: str, kernel_id: str, text: str, msg_id: str, last: str):
    """Send ``text`` over the kernel websocket through the hub's proxy; collect the replies to
    ``msg_id`` up to the first of type ``last``. The close handshake is awaited, so no socket is
    left for the garbage collector to report inside some later test."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = workspace_url(hub, f"api/kernels/{kernel_id}/channels").replace("http://", "ws://")
    ws = await websocket_connect(
        HTTPRequest(url, headers={"Authorization": f"token {token}"}, connect_timeout=30)
    )
    ws.write_message(text)
    out = []
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), 60)
            assert raw is not None, "kernel websocket closed"
            msg = json.loads(raw)
            if msg["parent_header"].get("msg_id") == msg_id:
                out.append(msg)
                if msg["msg_type"] == last:
                    return out
    finally:
        ws.close()
        with contextlib.suppress(asyncio.TimeoutError):  # let the close handshake finish
            while await asyncio.wait_for(ws.read_message(), 5) is not None:
                pass


async def _execute_through_proxy(hub, token: str, kernel_id: str, code: str) -> dict:
    msg_id = uuid.uuid4().hex
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
    }
    text = json.dumps(kernel_message("execute_request", content, msg_id))
    replies = await kernel_exchange(hub, token, kernel_id, text, msg_id, "execute_reply")
    return {"msg_id": msg_id, "reply": replies[-1]["content"]}


def test_kernel_start_and_code_sent_through_the_websocket_are_audited(hub, alice, alice_ws):
    headers = {"Authorization": f"token {alice.token}"}
    r = requests.post(
        workspace_url(hub, "api/kernels"), json={"name": "python3"}, headers=headers, timeout=60
    )
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    marker = uuid.uuid4().hex
    code = f"import pandas as pd\nsummary = {{'marker': '{marker}'}}\nprint(summary)"
    try:
        result = asyncio.run(_execute_through_proxy(hub, alice.token, kernel_id, code))
    finally:
        requests.delete(workspace_url(hub, f"api/kernels/{kernel_id}"), headers=headers, timeout=60)
    assert result["reply"]["status"] == "ok", result

    (started,) = events_where(hub, "kernel.started", lambda d, e: d.get("kernel_id") == kernel_id)
    assert (started["actor"], started["project"]) == ("alice", PROJECT)
    (executed,) = events_where(hub, "code.executed", lambda d, e: marker in d.get("code", ""))
    d = details(executed)
    assert (executed["actor"], executed["project"]) == ("alice", PROJECT)
    assert d["code"] == code and d["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert (d["kernel_id"], d["msg_id"]) == (kernel_id, result["msg_id"])
    (stopped,) = events_where(hub, "kernel.stopped", lambda d, e: d.get("kernel_id") == kernel_id)
    assert stopped["actor"] == "alice"


def test_the_export_page_is_served_through_the_proxy(hub, alice, alice_ws):
    r = alice.workspace_get(PROJECT, "egress/")
    assert r.status_code == 200 and "Request an export" in r.text
    r = alice.workspace_get(PROJECT, "egress/api/activity")
    status = r.json()
    assert status["export_service"] is True
    assert status["audit"]["lost_unreported"] == 0 and status["audit"]["destination"]


def test_jupyterlab_is_served_without_download_commands(hub, alice, alice_ws):
    r = alice.workspace_get(PROJECT, "lab")
    assert r.status_code == 200
    for plugin in (
        "@jupyterlab/docmanager-extension:download",
        "@jupyterlab/filebrowser-extension:download",
        "@jupyterlab/notebook-extension:export",
    ):
        assert plugin in r.text


def test_opening_a_terminal_is_audited(hub, alice, alice_ws):
    headers = {"Authorization": f"token {alice.token}"}
    before = len(hub.events(action="terminal.opened"))
    r = requests.post(workspace_url(hub, "api/terminals"), json={}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    try:
        opened = wait_for(
            lambda: hub.events(action="terminal.opened")[before:], 30, "terminal.opened"
        )
        assert (opened[-1]["actor"], opened[-1]["project"]) == ("alice", PROJECT)
        assert isinstance(details(opened[-1])["pid"], int)
    finally:
        requests.delete(workspace_url(hub, f"api/terminals/{name}"), headers=headers, timeout=30)


LOADED_EXTENSIONS = r"""
import json
from jupyter_server.serverapp import ServerApp
app = ServerApp.instance()
app.initialize(argv=["--ServerApp.token=t", "--ServerApp.open_browser=False"],
               new_httpserver=False)
print(json.dumps({n: e.enabled for n, e in app.extension_manager.extensions.items()}))
"""


def test_a_user_config_file_cannot_switch_the_extension_off(alice_ws):
    off = '{"ServerApp": {"jpserver_extensions": {"egress_extension": false}}}'
    planted = [f"{HOME}/.jupyter/jupyter_server_config.json", f"{HOME}/jupyter_server_config.json"]
    assert sh(alice_ws, "mkdir", "-p", f"{HOME}/.jupyter")[0] == 0
    for path in planted:
        write_file(alice_ws, path.removeprefix(HOME + "/"), off)
    write_file(
        alice_ws,
        "jupyter_server_config.py",
        "c.ServerApp.jpserver_extensions = {'egress_extension': False}\n",
    )
    try:
        code, out, err = sh(alice_ws, "python3", "-c", LOADED_EXTENSIONS)
        assert code == 0, err[-2000:]
        enabled = json.loads(out.strip().splitlines()[-1])
        assert enabled.get("egress_extension") is True, enabled
    finally:
        sh(alice_ws, "rm", "-f", *planted, f"{HOME}/jupyter_server_config.py")


def test_the_export_page_submits_with_the_browser_login_and_its_xsrf_token(hub, alice, alice_ws):
    write_file(alice_ws, "page-results.csv", "group,n\na,40\nb,52\n")
    page = alice.s.get(workspace_url(hub, "egress/"), timeout=30)  # hub OAuth, as a browser
    assert page.status_code == 200 and "Request an export" in page.text
    xsrf = re.search(r'data-xsrf="([^"]+)"', page.text).group(1)
    body = {
        "files": [{"path": "page-results.csv", "description": "group sizes"}],
        "justification": "group sizes for the report",
    }
    url = workspace_url(hub, "egress/api/requests")
    r = alice.s.post(url, json=body, timeout=60)
    assert r.status_code == 403  # a cookie-authenticated write without the xsrf token
    r = alice.s.post(url, json=body, headers={"X-XSRFToken": xsrf}, timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "submitted"
    listed = alice.s.get(url, timeout=30).json()["requests"]
    assert r.json()["id"] in [x["id"] for x in listed]


PEEK = r"""
import ctypes, errno, json, os
out = {}
pid = 1  # the container's command: the Jupyter server carrying the extension
assert "jupyterhub-singleuser" in open(f"/proc/{pid}/cmdline").read()
try:
    with open(f"/proc/{pid}/mem", "rb") as fh:
        fh.read(1)
    out["mem"] = "read"
except OSError as e:
    out["mem"] = errno.errorcode[e.errno]
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
if libc.ptrace(PTRACE_ATTACH, pid, 0, 0) == 0:
    out["ptrace"] = "attached"
    os.waitpid(pid, 0)
    libc.ptrace(PTRACE_DETACH, pid, 0, 0)
else:
    out["ptrace"] = errno.errorcode[ctypes.get_errno()]
# control: a process of the same user that did not opt out is open to the same probe
child = os.fork()
if child == 0:
    import time
    time.sleep(30)
    os._exit(0)
try:
    with open(f"/proc/{child}/mem", "rb") as fh:
        out["control_mem"] = "opened"
except OSError as e:
    out["control_mem"] = errno.errorcode[e.errno]
os.kill(child, 9)
print(json.dumps(out))
"""


def test_code_in_the_workspace_cannot_ptrace_or_patch_the_server(alice_ws):
    """The server is non-dumpable, so a kernel (same uid) can neither attach to it nor
    read or write its memory to switch the activity capture off."""
    code, out, err = sh(alice_ws, "python3", "-c", PEEK)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"mem": "EACCES", "ptrace": "EPERM", "control_mem": "opened"}, result
