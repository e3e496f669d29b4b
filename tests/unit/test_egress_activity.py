# ruff: noqa: F811  (fixtures imported from test_egress_server are used as arguments)
"""Every way a client makes a kernel run code is recorded or refused, inside a real
jupyter_server with real kernels: ``user_expressions``, escaped message types, debugger
commands that evaluate, unreadable messages; and the audit trail cannot be fed from outside:
client-posted server events are refused, checkpoint restores are recorded, and recorded
client-chosen fields are bounded. Pure functions first, then the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid

import pytest
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from egress_extension import activity
from egress_extension.activity import KernelMessageRefused, kernel_message_code
from tests.unit.test_egress_server import (  # noqa: F401  (fixtures, reused)
    events,
    ext,
    fetch,
    files,
    jp_server_config,
    run,
)

pytest_plugins = ["pytest_jupyter.jupyter_server"]
V1 = activity.V1_PROTOCOL


def legacy(msg_type: str, content: dict, msg_id: str = "m1", channel: str = "shell") -> str:
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": "u",
        "session": "s",
        "version": "5.3",
        "date": "",
    }
    body = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    return json.dumps({**body, "channel": channel, "buffers": []})


def v1(msg_type: str, content: dict, msg_id: str = "m1", channel: str = "shell") -> bytes:
    header = {"msg_id": msg_id, "msg_type": msg_type, "session": "s", "version": "5.3"}
    parts = [json.dumps(x).encode() for x in (header, {}, {}, content)]
    return serialize_msg_to_ws_v1(parts, channel)


def debug(command: str, arguments: dict | None = None, encode=legacy):
    content = {"type": "request", "seq": 7, "command": command, "arguments": arguments or {}}
    return encode("debug_request", content, channel="control")


# --- pure: what a message asks the kernel to run ---------------------------------------------


@pytest.mark.parametrize("encode", [legacy, v1])
def test_user_expressions_are_code(encode):
    msg = encode("execute_request", {"code": "x = 1", "user_expressions": {"a": "os.getcwd()"}})
    found = kernel_message_code(V1 if encode is v1 else None, msg)
    assert [(f["via"], f["code"]) for f in found] == [
        ("execute_request", "x = 1"),
        ("user_expressions", "os.getcwd()"),
    ]


def test_an_escaped_msg_type_is_read_as_the_kernel_reads_it():
    msg = legacy("execute_request", {"code": "print('hidden')"}).replace(
        '"execute_request"', '"execute\\u005frequest"'
    )
    assert "execute_request" not in msg  # what fooled the old substring pre-filter
    (found,) = kernel_message_code(None, msg)
    assert found["code"] == "print('hidden')"


@pytest.mark.parametrize(
    ("command", "arguments", "code"),
    [
        ("evaluate", {"expression": "df.head()"}, "df.head()"),
        ("setExpression", {"expression": "x", "value": "open('/data/a').read()"}, None),
        ("setVariable", {"variablesReference": 1, "name": "x", "value": "f()"}, "x = f()"),
        ("completions", {"text": "__import__('os').system('id').x"}, None),
        ("setBreakpoints", {"breakpoints": [{"line": 2, "condition": "leak()"}]}, "leak()"),
        ("setBreakpoints", {"breakpoints": [{"line": 2, "logMessage": "{leak()}"}]}, None),
        (
            "setExceptionBreakpoints",
            {"filterOptions": [{"filterId": "r", "condition": "g()"}]},
            None,
        ),
    ],
)
def test_debugger_commands_that_evaluate_are_recorded(command, arguments, code):
    (found,) = kernel_message_code(None, debug(command, arguments))
    assert found["via"] == f"debugger_{command}"
    assert found["code"] == code or (code is None and found["code"])


@pytest.mark.parametrize("command", ["setBreakpoints", "stackTrace", "variables", "dumpCell"])
def test_debugger_commands_without_code_pass_unrecorded(command):
    assert kernel_message_code(None, debug(command, {"breakpoints": [{"line": 3}]})) == []


@pytest.mark.parametrize("command", ["launch", "restart", "goto", "setDataBreakpoints", "x"])
def test_other_debugger_commands_are_refused(command):
    with pytest.raises(KernelMessageRefused, match="not allowed") as exc:
        kernel_message_code(None, debug(command, {"program": "/tmp/x.py"}))
    assert exc.value.header["msg_type"] == "debug_request" and exc.value.channel == "control"


@pytest.mark.parametrize(
    ("subprotocol", "message", "words"),
    [
        (None, "{not json", "unreadable"),
        (None, "[1, 2]", "unreadable"),
        (None, json.dumps({"header": "execute_request", "content": {}}), "header"),
        (None, json.dumps({"header": {"msg_type": 1}}), "header"),
        (None, legacy("execute_request", {}).replace('"content": {}', '"content": [1]'), "content"),
        (V1, b"\x01", "unreadable"),
        (V1, serialize_msg_to_ws_v1([b"{}", b"{}"], "shell"), "unreadable"),
        (V1, serialize_msg_to_ws_v1([b"{x", b"{}", b"{}", b"{}"], "shell"), "unreadable"),
        (None, legacy("execute_request", {"code": "1", "user_expressions": ["x"]}), "user_exp"),
        (None, legacy("apply_request", {}), "not forwarded"),
        (None, debug("setBreakpoints", {"breakpoints": "leak()"}), "malformed"),
    ],
)
def test_messages_that_cannot_be_read_as_the_kernel_would_are_refused(subprotocol, message, words):
    with pytest.raises(KernelMessageRefused, match=words):
        kernel_message_code(subprotocol, message)


def test_a_huge_msg_id_is_bounded_before_it_is_recorded():
    (found,) = kernel_message_code(None, legacy("execute_request", {"code": "1"}, "m" * 70_000))
    assert len(found["msg_id"]) == 128


def test_parsing_every_message_costs_microseconds():
    """The per-message cost of reading every message (no substring pre-filter)."""
    msg = legacy("comm_msg", {"comm_id": "c", "data": {"value": list(range(40))}})
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        kernel_message_code(None, msg)
    per_message = (time.perf_counter() - started) / n
    print(f"parse cost: {per_message * 1e6:.1f} us per {len(msg)}-byte message")
    assert per_message < 500e-6


# --- a real server with real kernels ---------------------------------------------------------


@pytest.fixture
def kernel(fetch):
    r = fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    assert r.code == 201
    kernel_id = json.loads(r.body)["id"]
    yield kernel_id
    fetch("api", "kernels", kernel_id, method="DELETE")


@pytest.fixture
def ws(kernel, run, jp_ws_fetch):
    sockets = []

    def connect(subprotocol: str | None = None):
        kw = {"subprotocols": [subprotocol]} if subprotocol else {}
        sock = run(jp_ws_fetch("api", "kernels", kernel, "channels", **kw))
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close()


def arrived(events, run, action: str, n: int = 1) -> list[dict]:
    """The ``action`` events once ``n`` have arrived (websocket messages are handled later)."""
    for _ in range(500):
        if len(found := events(action)) >= n:
            return found
        run(asyncio.sleep(0.01))
    return events(action)


def replies(
    sock, run, msg_id: str, last: str, v1_protocol: bool = False, *, idle: bool = False
) -> list[dict]:
    """The messages answering ``msg_id`` up to the first of type ``last``; with ``idle``, on
    until the kernel's idle status too (shell replies and iopub output are not ordered)."""
    out = []
    while True:
        raw = run(asyncio.wait_for(sock.read_message(), 60))
        assert raw is not None, "websocket closed"
        if v1_protocol:
            channel, parts = deserialize_msg_from_ws_v1(raw)
            msg = {
                "channel": channel,
                **{
                    k: json.loads(p)
                    for k, p in zip(
                        ("header", "parent_header", "metadata", "content"), parts, strict=False
                    )
                },
            }
            msg["msg_type"] = msg["header"]["msg_type"]
        else:
            msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            out.append(msg)
            types = [(m["msg_type"], m["content"].get("execution_state")) for m in out]
            if any(t == last for t, _ in types) and (not idle or ("status", "idle") in types):
                return out


def test_user_expressions_run_by_a_kernel_are_recorded(ws, run, events, kernel, files):
    sock = ws()
    marker = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    expr = f"__import__('os').getcwd() + '{marker}'"
    sock.write_message(
        legacy("execute_request", {"code": "", "user_expressions": {"e": expr}}, msg_id)
    )
    (reply,) = [m for m in replies(sock, run, msg_id, "execute_reply")[-1:]]
    result = reply["content"]["user_expressions"]["e"]
    assert result["status"] == "ok" and marker in result["data"]["text/plain"]  # it ran
    (recorded,) = [e for e in events("code.executed") if e["details"]["via"] == "user_expressions"]
    assert recorded["details"]["code"] == expr and recorded["details"]["kernel_id"] == kernel
    assert recorded["details"]["code_sha256"] == hashlib.sha256(expr.encode()).hexdigest()


def test_an_escaped_execute_request_that_runs_is_recorded(ws, run, events, files):
    sock = ws()
    marker = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    code = f"print('{marker}')"
    msg = legacy("execute_request", {"code": code}, msg_id)
    sock.write_message(msg.replace('"execute_request"', '"execute\\u005frequest"'))
    out = replies(sock, run, msg_id, "execute_reply", idle=True)
    assert any(marker in m["content"].get("text", "") for m in out)  # the kernel ran it
    assert [e["details"]["code"] for e in events("code.executed")] == [code]


@pytest.mark.parametrize("protocol", [None, V1])
def test_a_refused_debugger_command_is_answered_and_audited(ws, run, events, protocol, files):
    sock = ws(protocol)
    msg_id = uuid.uuid4().hex
    content = {"type": "request", "seq": 3, "command": "launch", "arguments": {"code": "1"}}
    encode = v1 if protocol else legacy
    msg = encode("debug_request", content, msg_id, "control")
    sock.write_message(msg, binary=protocol is not None)
    (reply,) = replies(sock, run, msg_id, "debug_reply", v1_protocol=protocol is not None)
    assert reply["content"]["success"] is False and reply["channel"] == "control"
    assert "not allowed" in reply["content"]["message"]
    assert (reply["content"]["command"], reply["content"]["request_seq"]) == ("launch", 3)
    (refused,) = events("code.refused")
    assert refused["outcome"] == "denied" and "launch" in refused["reason"]
    assert refused["details"]["msg_id"] == msg_id and events("code.executed") == []


def test_an_unreadable_message_is_refused_not_forwarded(ws, run, events, kernel, files):
    sock = ws(V1)
    bad = serialize_msg_to_ws_v1([b'{"msg_type": "execute_request"', b"{}", b"{}", b"{}"], "shell")
    sock.write_message(bad, binary=True)
    (refused,) = arrived(events, run, "code.refused")
    assert refused["reason"].startswith("unreadable kernel message")
    assert refused["details"]["message_sha256"] == hashlib.sha256(bad).hexdigest()
    # the connection still works for well-formed messages
    msg_id = uuid.uuid4().hex
    sock.write_message(v1("kernel_info_request", {}, msg_id), binary=True)
    assert replies(sock, run, msg_id, "kernel_info_reply", v1_protocol=True)


def test_a_huge_msg_id_cannot_push_the_code_out_of_the_event(ws, run, events, files):
    sock = ws()
    code = "secret_analysis = 42\n" * 100
    msg_id = "m" * 70_000
    sock.write_message(legacy("execute_request", {"code": code}, msg_id))
    replies(sock, run, msg_id, "execute_reply")
    (recorded,) = events("code.executed")
    assert recorded["details"]["code"] == code and recorded["details"]["msg_id"] == msg_id[:128]


def test_client_posted_kernel_events_are_refused_and_audited(fetch, events, files):
    forged = {
        "schema_id": activity.KERNEL_ACTIONS_SCHEMA,
        "version": 1,
        "data": {
            "kernel_id": str(uuid.uuid4()),
            "kernel_name": "python3",
            "action": "shutdown",
            "status": "success",
            "msg": "forged",
        },
    }
    r = fetch("api", "events", method="POST", body=json.dumps(forged))
    assert r.code == 403 and b"only be emitted by the server" in r.body
    assert events("kernel.stopped") == []
    (refused,) = events("event.refused")
    assert refused["details"]["schema_id"] == activity.KERNEL_ACTIONS_SCHEMA


def test_the_listener_ignores_events_about_kernels_the_server_does_not_run(ext, run, events):
    listener = activity.kernel_listener(ext)
    for action in ("start", "shutdown"):
        data = {"kernel_id": str(uuid.uuid4()), "action": action, "status": "success"}
        run(listener(None, activity.KERNEL_ACTIONS_SCHEMA, data))
    assert events("kernel.started") == [] and events("kernel.stopped") == []
    assert len(events("event.refused")) == 2


def test_restoring_a_checkpoint_is_recorded_as_a_save(fetch, events, files):
    r = fetch("api", "contents", "results.csv", "checkpoints", method="POST", body="")
    assert r.code == 201
    checkpoint = json.loads(r.body)["id"]
    (files / "results.csv").write_text("edited\n")
    r = fetch("api", "contents", "results.csv", "checkpoints", checkpoint, method="POST", body="")
    assert r.code == 204
    assert (files / "results.csv").read_text() == "region,n\nnorth,120\n"
    (saved,) = [e for e in events("file.saved") if e["details"].get("op") == "restore_checkpoint"]
    assert saved["details"]["path"] == "results.csv"
    assert saved["details"]["checkpoint_id"] == checkpoint
