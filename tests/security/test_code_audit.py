"""The "code run is audited" promise, attacked by the researcher in a real workspace.

Alice talks to her own Jupyter server through the proxy with her own token, as any client in
her room can, and tries to run code or shape the audit trail without leaving a trace:
``user_expressions``, an escaped ``execute_request`` on the legacy protocol, a debugger
``launch``, a 70 KB ``msg_id``, a ``kernel.stopped`` posted to ``/api/events``, a checkpoint
restore. Each probe then reads the hub-side audit trail (``sde-admin audit export``). The
controls show the probe would see the gap: the kernel really ran the code (its reply carries
the marker), the forged event is one jupyter_server itself accepts, the restore rewrote the
file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid

import pytest
import requests

from tests.docker.test_egress_workspace import (
    PROJECT,
    alice,  # noqa: F401  (module fixture)
    details,
    events_where,
    kernel_exchange,
    workspace_url,
)
from tests.docker.test_egress_workspace import kernel_message as message

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def kernel(hub, alice):  # noqa: F811
    headers = {"Authorization": f"token {alice.token}"}
    r = requests.post(
        workspace_url(hub, "api/kernels"), json={"name": "python3"}, headers=headers, timeout=60
    )
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    yield kernel_id
    requests.delete(workspace_url(hub, f"api/kernels/{kernel_id}"), headers=headers, timeout=60)


def send(hub, alice, kernel, text: str, msg_id: str, last: str = "execute_reply"):  # noqa: F811
    return asyncio.run(kernel_exchange(hub, alice.token, kernel, text, msg_id, last))


def test_user_expressions_are_recorded_as_code(hub, alice, kernel):  # noqa: F811
    marker = uuid.uuid4().hex
    expr = f"'{marker}'.upper()"
    msg_id = uuid.uuid4().hex
    body = message("execute_request", {"code": "", "user_expressions": {"e": expr}}, msg_id)
    out = send(hub, alice, kernel, json.dumps(body), msg_id)
    result = out[-1]["content"]["user_expressions"]["e"]
    assert marker.upper() in result["data"]["text/plain"]  # control: the expression ran
    (recorded,) = events_where(hub, "code.executed", lambda d, e: marker in d.get("code", ""))
    d = details(recorded)
    assert (d["via"], d["code"], d["kernel_id"]) == ("user_expressions", expr, kernel)
    assert (recorded["actor"], recorded["project"]) == ("alice", PROJECT)


def test_an_escaped_execute_request_is_recorded(hub, alice, kernel):  # noqa: F811
    marker = uuid.uuid4().hex
    code = f"print('{marker}'[::-1])"
    msg_id = uuid.uuid4().hex
    text = json.dumps(message("execute_request", {"code": code}, msg_id))
    text = text.replace('"execute_request"', '"execute\\u005frequest"')
    assert "execute_request" not in text
    out = send(hub, alice, kernel, text, msg_id)
    printed = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")
    assert marker[::-1] in printed  # control: the kernel ran it
    (recorded,) = events_where(hub, "code.executed", lambda d, e: marker in d.get("code", ""))
    assert details(recorded)["code"] == code


def test_a_debugger_launch_is_refused_answered_and_audited(hub, alice, kernel):  # noqa: F811
    msg_id = uuid.uuid4().hex
    content = {
        "type": "request",
        "seq": 1,
        "command": "launch",
        "arguments": {"program": "/tmp/x.py"},
    }
    text = json.dumps(message("debug_request", content, msg_id, channel="control"))
    (reply,) = [m for m in send(hub, alice, kernel, text, msg_id, "debug_reply")]
    assert reply["content"]["success"] is False and "not allowed" in reply["content"]["message"]
    (refused,) = events_where(hub, "code.refused", lambda d, e: d.get("msg_id") == msg_id)
    assert refused["outcome"] == "denied" and "launch" in refused["reason"]


async def _debug_then_sync(hub, token: str, kernel_id: str, requests_: list[dict]) -> dict:
    """Send debug requests on the control channel, then an execute request; wait for its reply
    (the debug replies are not awaited: a kernel whose debugger never started may not answer)."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = workspace_url(hub, f"api/kernels/{kernel_id}/channels").replace("http://", "ws://")
    ws = await websocket_connect(
        HTTPRequest(url, headers={"Authorization": f"token {token}"}, connect_timeout=30)
    )
    try:
        for text in requests_:
            ws.write_message(json.dumps(text))
        sync = uuid.uuid4().hex
        ws.write_message(json.dumps(message("execute_request", {"code": "1"}, sync)))
        while True:
            raw = await asyncio.wait_for(ws.read_message(), 60)
            assert raw is not None, "kernel websocket closed"
            msg = json.loads(raw)
            if msg["parent_header"].get("msg_id") == sync and msg["msg_type"] == "execute_reply":
                return msg
    finally:
        ws.close()
        with contextlib.suppress(asyncio.TimeoutError):  # let the close handshake finish
            while await asyncio.wait_for(ws.read_message(), 5) is not None:
                pass


def test_debugger_commands_that_evaluate_code_are_recorded(hub, alice, kernel):  # noqa: F811
    marker = uuid.uuid4().hex
    commands = {
        "evaluate": ({"expression": f"'{marker}e'.upper()"}, f"'{marker}e'.upper()"),
        "setExpression": (
            {"expression": "x", "value": f"'{marker}x'"},
            f"x = '{marker}x'",
        ),
        "setVariable": (
            {"variablesReference": 1, "name": "y", "value": f"'{marker}v'"},
            f"y = '{marker}v'",
        ),
    }
    sent = []
    for seq, (command, (arguments, _)) in enumerate(commands.items(), 1):
        content = {"type": "request", "seq": seq, "command": command, "arguments": arguments}
        sent.append(message("debug_request", content, f"{marker}-{command}", channel="control"))
    reply = asyncio.run(_debug_then_sync(hub, alice.token, kernel, sent))
    assert reply["content"]["status"] == "ok"  # the connection still forwards code
    for command, (_, code) in commands.items():
        (recorded,) = events_where(
            hub, "code.executed", lambda d, e, c=command: d.get("msg_id") == f"{marker}-{c}"
        )
        d = details(recorded)
        assert (d["via"], d["code"], d["kernel_id"]) == (f"debugger_{command}", code, kernel)
        assert recorded["actor"] == "alice"


def test_a_huge_msg_id_cannot_cut_the_recorded_code(hub, alice, kernel):  # noqa: F811
    marker = uuid.uuid4().hex
    code = f"secret = '{marker}'\n" + "summary = len(secret) * 2\n" * 300  # ~8.5 KB
    msg_id = marker + "m" * 70_000
    text = json.dumps(message("execute_request", {"code": code}, msg_id))
    out = send(hub, alice, kernel, text, msg_id)
    assert out[-1]["content"]["status"] == "ok"  # control: it ran, with that msg_id
    (recorded,) = events_where(hub, "code.executed", lambda d, e: marker in d.get("code", ""))
    d = details(recorded)
    assert d["code"] == code and d["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert d["code_bytes"] == len(code) and len(d["msg_id"]) <= 128


def test_a_client_cannot_post_a_kernel_event(hub, alice):  # noqa: F811
    headers = {"Authorization": f"token {alice.token}"}
    ghost = str(uuid.uuid4())
    forged = {
        "schema_id": "https://events.jupyter.org/jupyter_server/kernel_actions/v1",
        "version": 1,
        "data": {"kernel_id": ghost, "kernel_name": "python3", "action": "shutdown"}
        | {"status": "success", "msg": "forged"},
    }
    url = workspace_url(hub, "api/events")
    r = requests.post(url, json=forged, headers=headers, timeout=30)
    assert r.status_code == 403, r.text
    (refused,) = events_where(
        hub, "event.refused", lambda d, e: d.get("schema_id") == forged["schema_id"]
    )
    assert refused["actor"] == "alice" and refused["outcome"] == "denied"
    assert not [
        e for e in hub.events(action="kernel.stopped") if details(e).get("kernel_id") == ghost
    ]
    # control: the route is jupyter_server's own, live for other schemas (it validates them)
    r = requests.post(url, json={**forged, "schema_id": "urn:x"}, headers=headers, timeout=30)
    assert r.status_code == 400


def test_a_checkpoint_restore_is_recorded(hub, alice):  # noqa: F811
    headers = {"Authorization": f"token {alice.token}"}
    name = f"restore-{uuid.uuid4().hex[:6]}.csv"
    url = workspace_url(hub, f"api/contents/{name}")
    body = {"type": "file", "format": "text", "content": "a,b\n1,2\n"}
    assert requests.put(url, json=body, headers=headers, timeout=30).status_code == 201
    r = requests.post(url + "/checkpoints", headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    checkpoint = r.json()["id"]
    edited = {**body, "content": "a,b\nedited\n"}
    assert requests.put(url, json=edited, headers=headers, timeout=30).status_code == 200
    r = requests.post(f"{url}/checkpoints/{checkpoint}", headers=headers, timeout=30)
    assert r.status_code == 204
    back = requests.get(url, headers=headers, timeout=30).json()["content"]
    assert back == "a,b\n1,2\n"  # control: the restore rewrote the file
    (saved,) = events_where(
        hub,
        "file.saved",
        lambda d, e: d.get("path") == name and d.get("op") == "restore_checkpoint",
    )
    assert details(saved)["checkpoint_id"] == checkpoint
