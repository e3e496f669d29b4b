"""The egress extension inside a real jupyter_server: refusals, blocked downloads, viewing that
still works, and the activity it records. Events go to a recording sink here (no HTTP); the
same paths against the real hub-side service are in ``test_egress_export_flow.py``.

pytest_jupyter runs the server on its own loop (``jp_asyncio_loop``), so these tests are plain
functions that drive requests on that loop (see ``test_egress_status.py``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid

import pytest
from tornado.httpclient import HTTPClientError

from egress_extension import activity
from egress_extension.audit import Delivery

pytest_plugins = ["pytest_jupyter.jupyter_server"]

NOTEBOOK = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {},
    "cells": [
        {
            "cell_type": "code",
            "id": "c1",
            "metadata": {},
            "source": "1+1",
            "outputs": [],
            "execution_count": None,
        }
    ],
}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class RecordingSink:
    """Stands in for the audit service: keeps every event it is sent."""

    url = "recording://"

    def __init__(self):
        self.events: list[dict] = []

    async def send(self, body: bytes) -> Delivery:
        self.events.extend(json.loads(body)["events"])
        return Delivery.ok


@pytest.fixture
def jp_server_config():
    return {
        "ServerApp": {"jpserver_extensions": {"egress_extension": True, "jupyterlab": True}},
        # Refusals happen before any call to the service; nothing listens here.
        "EgressApp": {"service_url": "http://127.0.0.1:9/services/sde/", "api_token": "t"},
    }


@pytest.fixture
def files(jp_root_dir, tmp_path):
    root = jp_root_dir
    (root / "analysis.ipynb").write_text(json.dumps(NOTEBOOK))
    (root / "results.csv").write_text("region,n\nnorth,120\n")
    (root / "figure.png").write_bytes(PNG)
    (root / "cohort.sqlite").write_bytes(b"SQLite format 3\x00" + os.urandom(64))
    (root / "table.parquet").write_bytes(b"PAR1" + os.urandom(64) + b"\xff\xfe")
    (root / "sub").mkdir()
    data = tmp_path / "extract"
    data.mkdir()
    (data / "patients.csv").write_text("nhs_number,hba1c\n999,52\n")
    return root


@pytest.fixture
def ext(jp_serverapp):
    egress = jp_serverapp.web_app.settings["egress_extension"]
    egress.shipper.sink = RecordingSink()
    return egress


@pytest.fixture
def run(jp_asyncio_loop):
    return jp_asyncio_loop.run_until_complete


@pytest.fixture
def fetch(jp_fetch, run, ext):
    """jp_fetch on the server's loop; errors are returned, not raised."""

    def go(*parts, **kwargs):
        try:
            return run(jp_fetch(*parts, **kwargs))
        except HTTPClientError as exc:
            assert exc.response is not None, exc
            return exc.response

    return go


@pytest.fixture
def events(ext, run):
    """The events delivered so far, optionally of one action (waits for the queue to drain)."""

    def get(action: str | None = None) -> list[dict]:
        async def drained():
            for _ in range(500):
                if not ext.shipper.pending():
                    return
                await asyncio.sleep(0.01)

        run(drained())
        return [e for e in ext.shipper.sink.events if action is None or e["action"] == action]

    return get


def export(fetch, *files, justification="Aggregate counts for the paper, n>=10 per cell"):
    body = {
        "files": [{"path": f, "description": "summary table"} for f in files],
        "justification": justification,
    }
    return fetch("egress", "api", "requests", method="POST", body=json.dumps(body))


# --- export refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "path", "status", "code", "words"),
    [
        (None, "../outside.csv", 400, "parent", "'..' is not allowed"),
        (None, "/etc/passwd", 403, "outside", "outside your home directory"),
        ("link_passwd", "passwd.csv", 403, "symlink", "symbolic link to /etc/passwd"),
        ("link_data_file", "patients.csv", 403, "symlink", "outside your home directory"),
        ("link_data_dir", "data/patients.csv", 403, "symlink", "data is a symbolic link"),
        ("hardlink", "twin.csv", 403, "hardlink", "2 hard links"),
        (None, "sub", 400, "directory", "is a directory"),
        ("fifo", "pipe.csv", 400, "special", "named pipe"),
        ("sparse_big", "big.csv", 403, "too_large", "over the export limit of 200.0 MiB"),
        (None, "cohort.sqlite", 403, "type_not_allowed", "type .sqlite may not be exported"),
        (None, "missing.csv", 400, "missing", "no such file"),
    ],
)
def test_each_refused_export_says_why_and_is_audited(
    fetch, events, files, tmp_path, setup, path, status, code, words
):
    data = tmp_path / "extract"
    if setup == "link_passwd":
        (files / "passwd.csv").symlink_to("/etc/passwd")
    elif setup == "link_data_file":
        (files / "patients.csv").symlink_to(data / "patients.csv")
    elif setup == "link_data_dir":
        (files / "data").symlink_to(data)
    elif setup == "hardlink":
        os.link(files / "results.csv", files / "twin.csv")
    elif setup == "fifo":
        os.mkfifo(files / "pipe.csv")
    elif setup == "sparse_big":
        with open(files / "big.csv", "wb") as fh:
            fh.truncate(200 * 1024 * 1024 + 1)
    r = export(fetch, path)
    body = json.loads(r.body)
    assert (r.code, body["code"]) == (status, code), body
    assert words in body["message"]
    refused = events("export.refused")
    assert len(refused) == 1
    assert refused[0]["outcome"] == "denied" and refused[0]["reason"] == body["message"]
    assert refused[0]["details"]["code"] == code


def open_files_under(root) -> set[str]:
    """Files under ``root`` this process holds open (its descriptors, from /proc)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.add(target)
    return out


def test_one_bad_file_refuses_the_whole_request_before_anything_is_sent(fetch, files, ext):
    r = export(fetch, "results.csv", "cohort.sqlite")
    assert r.code == 403 and json.loads(r.body)["path"] == "cohort.sqlite"
    assert open_files_under(files) == set()  # results.csv, opened first, was closed again


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"files": [{"path": "results.csv", "description": "t"}]}, "a justification is required"),
        ({"files": [{"path": "results.csv"}], "justification": "j"}, "a description is required"),
        ({"files": [], "justification": "j"}, "name at least one file"),
        (
            {"files": [{"path": "results.csv", "description": "t"}] * 2, "justification": "j"},
            "listed twice",
        ),
        ({"files": [], "justification": "j", "user": "bob"}, "unknown field(s): user"),
    ],
)
def test_malformed_requests_are_refused_with_one_reason(fetch, events, files, body, words):
    r = fetch("egress", "api", "requests", method="POST", body=json.dumps(body))
    assert r.code == 400 and words in json.loads(r.body)["message"]
    assert events("export.refused")[0]["details"]["code"] == "bad_request"


def test_an_unreachable_service_is_a_502_and_no_file_is_left_open(fetch, files, ext):
    r = export(fetch, "results.csv")
    assert r.code == 502 and "cannot be reached" in json.loads(r.body)["message"]
    assert open_files_under(files) == set()


# --- disclosure pre-checks -------------------------------------------------------------------


def precheck(fetch, path):
    return fetch("egress", "api", "checks", params={"path": path})


def test_a_researcher_sees_the_checkers_findings_before_submitting(fetch, files, ext, events):
    (files / "crosstab.csv").write_text(",female,male\nasthma,12,4\ncopd,30,25\n")
    r = precheck(fetch, "crosstab.csv")
    report = json.loads(r.body)
    assert (r.code, report["path"], report["status"]) == (200, "crosstab.csv", "fail")
    (finding,) = report["findings"]
    assert (finding["rule"], finding["cells"]) == ("threshold", [[1, "male"]])
    r = precheck(fetch, str(files / "results.csv"))
    assert json.loads(r.body)["status"] == "pass"
    assert events("export.check.refused") == []


def test_a_precheck_refuses_what_an_export_would_refuse_and_records_it(fetch, files, ext, events):
    (files / "patients.csv").symlink_to(files.parent / "extract" / "patients.csv")
    r = precheck(fetch, "patients.csv")
    assert r.code == 403 and "symbolic link" in json.loads(r.body)["message"]
    (refused,) = events("export.check.refused")
    assert refused["details"]["code"] == "symlink" and refused["outcome"] == "denied"
    assert precheck(fetch, "../etc/passwd").code == 400
    assert precheck(fetch, "cohort.sqlite").code == 403


def test_a_precheck_says_when_the_bytes_are_not_what_the_name_says(fetch, files, ext, events):
    (files / "fig.png").write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a zip named as a figure
    r = precheck(fetch, "fig.png")
    body = json.loads(r.body)
    assert (r.code, body["code"]) == (422, "type_mismatch"), body
    assert "the bytes are a ZIP archive" in body["message"]
    (refused,) = events("export.check.refused")
    assert refused["details"]["code"] == "type_mismatch" and refused["outcome"] == "denied"


def test_a_file_over_the_precheck_size_is_left_to_the_service(fetch, files, ext):
    ext.max_check_size = 10
    r = precheck(fetch, "results.csv")
    report = json.loads(r.body)
    assert report["status"] == "info" and "too large" in report["checked"][0]


# --- blocked downloads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "params", "channel"),
    [
        (("files", "results.csv"), {}, "files"),
        (("files", "results.csv"), {"download": "1"}, "files"),
        (("files", "figure.png"), {}, "files"),
        (("nbconvert", "html", "analysis.ipynb"), {"download": "true"}, "nbconvert"),
        (("nbconvert", "script", "analysis.ipynb"), {}, "nbconvert"),
        (("view", "results.csv"), {}, "view"),
    ],
)
def test_download_channels_answer_403_with_a_reason_and_are_audited(
    fetch, events, files, parts, params, channel
):
    r = fetch(*parts, params=params)
    assert r.code == 403
    assert r.headers["Content-Type"].startswith("text/html")
    page = r.body.decode()
    assert "Download blocked" in page and "export request" in page
    assert "north,120" not in page
    (ev,) = events("download.blocked")
    assert ev["outcome"] == "denied" and ev["details"]["channel"] == channel
    assert ev["details"]["path"].endswith(parts[-1])
    assert ev["details"]["download_flag"] is bool(params)
    assert "disabled in this Secure Data Environment" in ev["reason"]


def test_a_blocked_api_client_gets_json(fetch, files):
    r = fetch("files", "results.csv", headers={"Accept": "application/json"})
    assert r.code == 403 and json.loads(r.body)["blocked"] is True


def test_blocked_channels_still_require_login(fetch, files, ext):
    r = fetch(
        "files", "results.csv", headers={"Authorization": "token wrong"}, follow_redirects=False
    )
    assert r.code == 302 and "/login" in r.headers["Location"]
    assert ext.shipper.pending() == [] and ext.shipper.sink.events == []


# --- viewing in the workspace still works ----------------------------------------------------


def test_opening_a_notebook_and_a_csv_through_the_contents_api_works(fetch, events, files):
    r = fetch("api", "contents", "analysis.ipynb", params={"content": "1"})
    assert r.code == 200 and json.loads(r.body)["content"]["cells"][0]["source"] == "1+1"
    r = fetch("api", "contents", "results.csv", params={"type": "file", "format": "text"})
    assert r.code == 200 and json.loads(r.body)["content"] == "region,n\nnorth,120\n"
    opened = events("file.opened")
    assert [(e["details"]["path"], e["details"]["type"]) for e in opened] == [
        ("analysis.ipynb", "notebook"),
        ("results.csv", "file"),
    ]


def test_images_still_open_through_the_contents_api(fetch, files):
    # JupyterLab's image viewer asks exactly this.
    params = {"type": "file", "format": "base64", "content": "1", "hash": "0"}
    r = fetch("api", "contents", "figure.png", params=params)
    assert r.code == 200 and base64.b64decode(json.loads(r.body)["content"]) == PNG


@pytest.mark.parametrize(
    "params",
    [
        {"type": "file", "format": "base64", "content": "1"},
        {"content": "1", "format": "base64"},
        {"content": "1"},  # the server falls back to base64 for a binary file
    ],
)
def test_raw_binary_downloads_through_the_contents_api_are_blocked(fetch, events, files, params):
    r = fetch("api", "contents", "table.parquet", params=params)
    assert r.code == 403
    body = json.loads(r.body)
    assert "downloading .parquet files from the workspace is blocked" in body["message"]
    assert "content" not in body
    (ev,) = events("download.blocked")
    assert ev["details"]["channel"] == "contents" and ev["details"]["path"] == "table.parquet"


def test_a_csv_asked_for_as_base64_is_a_download(fetch, files):
    r = fetch("api", "contents", "results.csv", params={"format": "base64", "type": "file"})
    assert r.code == 403


def test_files_too_big_to_view_are_blocked_before_reading(fetch, events, files, ext):
    with open(files / "huge.csv", "wb") as fh:
        fh.truncate(ext.max_view_size + 1)
    r = fetch("api", "contents", "huge.csv", params={"type": "file", "format": "text"})
    assert r.code == 403 and "over the 64.0 MiB that can be opened" in json.loads(r.body)["message"]
    assert events("download.blocked")[0]["details"]["path"] == "huge.csv"


def test_listings_and_metadata_polls_work_and_are_not_recorded_as_opens(fetch, events, files):
    r = fetch("api", "contents", "", params={"content": "1"})
    assert r.code == 200 and {"analysis.ipynb", "results.csv"} <= {
        m["name"] for m in json.loads(r.body)["content"]
    }
    r = fetch("api", "contents", "table.parquet", params={"content": "0"})
    assert r.code == 200  # metadata of a binary is not a download
    assert events("file.opened") == [] and events("download.blocked") == []


def test_missing_files_are_still_404(fetch, files):
    assert fetch("api", "contents", "nope.csv", params={"format": "base64"}).code == 404


def test_checkpoints_still_work(fetch, files):
    r = fetch("api", "contents", "analysis.ipynb", "checkpoints", method="POST", body="")
    assert r.code == 201
    r = fetch("api", "contents", "analysis.ipynb", "checkpoints")
    assert r.code == 200 and len(json.loads(r.body)) == 1


def test_jupyterlab_is_served_without_its_download_commands(fetch, files, ext):
    r = fetch("lab")
    assert r.code == 200
    page = r.body.decode()
    start = page.index('id="jupyter-config-data"')
    config = json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])
    for plugin in (
        "@jupyterlab/docmanager-extension:download",
        "@jupyterlab/filebrowser-extension:download",
        "@jupyterlab/notebook-extension:export",
        "@jupyterlab/filebrowser-extension:open-browser-tab",
    ):
        assert plugin in config["disabledExtensions"]


def test_lab_plugin_ids_exist_in_the_installed_jupyterlab():
    from pathlib import Path

    import jupyterlab

    from egress_extension.blocking import LAB_PLUGINS

    static = Path(jupyterlab.__file__).parent / "static"
    if not static.exists():
        import sys

        static = Path(sys.prefix) / "share" / "jupyter" / "lab" / "static"
    text = "".join(p.read_text(errors="replace") for p in static.glob("jlab_core*.js"))
    assert text, "no jlab_core bundle found"
    for plugin in LAB_PLUGINS:
        assert f'id:"{plugin}"' in text, plugin


def test_the_page_config_hook_keeps_other_disabled_plugins():
    from egress_extension.blocking import DownloadBlocker

    class Ext:
        disabled_lab_plugins = ("@x/y:download",)
        clipboard_out = "allow"

    def previous(handler, page_config):
        return {**page_config, "touched": True}

    hook = DownloadBlocker(Ext()).page_config_hook(previous)
    out = hook(None, {"disabledExtensions": ["@other/ext"]})
    assert out == {
        "disabledExtensions": ["@other/ext", "@x/y:download"],
        "touched": True,
        "sdeClipboardOut": "allow",
        "sdeProject": "",
        "sdeSupport": "",
    }


# --- activity -------------------------------------------------------------------------------


def test_saving_uploading_renaming_and_deleting_are_recorded(fetch, events, files):
    nb = {"type": "notebook", "content": NOTEBOOK}
    assert fetch("api", "contents", "analysis.ipynb", method="PUT", body=json.dumps(nb)).code == 200
    text = {"type": "file", "format": "text", "content": "x = 1\n"}
    assert fetch("api", "contents", "script.py", method="PUT", body=json.dumps(text)).code == 201
    upload = {"type": "file", "format": "base64", "content": base64.b64encode(PNG).decode()}
    assert fetch("api", "contents", "up.png", method="PUT", body=json.dumps(upload)).code == 201
    for chunk, part in ((1, b"a" * 10), (2, b"b" * 10), (-1, b"c")):
        big = {
            "type": "file",
            "format": "base64",
            "chunk": chunk,
            "content": base64.b64encode(part).decode(),
        }
        assert fetch("api", "contents", "big.txt", method="PUT", body=json.dumps(big)).code in (
            200,
            201,
        )
    rename = {"path": "renamed.py"}
    assert (
        fetch("api", "contents", "script.py", method="PATCH", body=json.dumps(rename)).code == 200
    )
    assert fetch("api", "contents", "renamed.py", method="DELETE").code == 204
    copy = {"copy_from": "results.csv"}
    assert fetch("api", "contents", "sub", method="POST", body=json.dumps(copy)).code == 201

    saved = events("file.saved")
    assert [e["details"]["path"] for e in saved] == [
        "analysis.ipynb",
        "script.py",
        "sub/results.csv",
    ]
    assert saved[2]["details"]["op"] == "copy" and saved[2]["details"]["from"] == "results.csv"
    uploaded = events("file.uploaded")
    assert [(e["details"]["path"], e["details"]["chunked"]) for e in uploaded] == [
        ("up.png", False),
        ("big.txt", True),
    ]
    (renamed,) = events("file.renamed")
    assert (renamed["details"]["from"], renamed["details"]["to"]) == ("script.py", "renamed.py")
    (deleted,) = events("file.deleted")
    assert deleted["details"]["path"] == "renamed.py"
    assert all(e["outcome"] == "allowed" for e in events())


def test_failed_operations_are_not_recorded(fetch, events, files):
    assert fetch("api", "contents", "nope.py", method="DELETE").code == 404
    r = fetch("api", "contents", "nope.py", method="PATCH", body=json.dumps({"path": "x.py"}))
    assert r.code >= 400
    assert events("file.deleted") == [] and events("file.renamed") == []


def _kernel_messages(ws, run, msg_id):
    replies = []
    while True:
        raw = run(asyncio.wait_for(ws.read_message(), 60))
        assert raw is not None, "websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            replies.append(msg)
            if msg["msg_type"] == "execute_reply":
                return replies


def test_kernel_start_code_and_stop_are_recorded(fetch, events, run, jp_ws_fetch, files):
    r = fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    assert r.code == 201
    kernel_id = json.loads(r.body)["id"]
    ws = run(jp_ws_fetch("api", "kernels", kernel_id, "channels"))
    code = "total = sum(range(10))\nprint('secret', total)"
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "u",
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                    "date": "",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    replies = _kernel_messages(ws, run, msg_id)
    assert replies[-1]["content"]["status"] == "ok"
    ws.close()
    assert fetch("api", "kernels", kernel_id, method="DELETE").code == 204

    (started,) = events("kernel.started")
    assert started["details"]["kernel_id"] == kernel_id
    (executed,) = events("code.executed")
    d = executed["details"]
    assert (d["kernel_id"], d["msg_id"], d["code"]) == (kernel_id, msg_id, code)
    assert d["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert d["truncated"] is False and d["via"] == "execute_request"
    (stopped,) = events("kernel.stopped")
    assert stopped["details"]["kernel_id"] == kernel_id


def test_kernels_still_running_when_the_server_stops_are_recorded_as_stopped(
    fetch, ext, run, files
):
    r = fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(r.body)["id"]
    run(ext.stop_extension())
    stopped = [e for e in ext.shipper.sink.events if e["action"] == "kernel.stopped"]
    assert stopped and stopped[0]["details"] == {
        "kernel_id": kernel_id,
        "operation": "shutdown",
        "server_stopping": True,
        "client_time": stopped[0]["details"]["client_time"],
    }


def test_opening_a_terminal_is_recorded(fetch, events, ext, run, files):
    run(asyncio.sleep(0))  # the terminal manager is wrapped once the loop runs
    r = fetch("api", "terminals", method="POST", body="{}")
    assert r.code == 200
    name = json.loads(r.body)["name"]
    (opened,) = events("terminal.opened")
    assert isinstance(opened["details"]["pid"], int)
    assert fetch("api", "terminals", name, method="DELETE").code == 204


@pytest.mark.parametrize("protocol", ["legacy", "v1"])
def test_execute_requests_are_recognised_in_both_websocket_protocols(protocol):
    from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

    header = {"msg_id": "m1", "msg_type": "execute_request"}
    content = {"code": "print(1)", "silent": True}
    if protocol == "v1":
        parts = [json.dumps(x).encode() for x in (header, {}, {}, content)]
        message = serialize_msg_to_ws_v1(parts, "shell")
        sub = "v1.kernel.websocket.jupyter.org"
    else:
        message = json.dumps(
            {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "content": content,
                "channel": "shell",
            }
        )
        sub = None
    found = activity.executed_code(sub, message)
    assert found == {
        "msg_id": "m1",
        "channel": "shell",
        "code": "print(1)",
        "silent": True,
        "via": "execute_request",
    }
    other = json.dumps({"header": {"msg_type": "kernel_info_request"}, "content": {}})
    assert activity.executed_code(None, other) is None


def test_debugger_evaluate_counts_as_executed_code():
    message = json.dumps(
        {
            "header": {"msg_id": "d1", "msg_type": "debug_request"},
            "channel": "control",
            "content": {"command": "evaluate", "arguments": {"expression": "df.head()"}},
        }
    )
    found = activity.executed_code(None, message)
    assert found["code"] == "df.head()" and found["via"] == "debugger_evaluate"


@pytest.mark.parametrize("code", ["x = 1\n" * 20_000, '\u00e9"\\\n' * 30_000])
def test_long_code_is_cut_but_hashed_whole_and_fits_the_service_limit(code):
    details = activity.code_details(code, 64 * 1024)
    assert details["truncated"] is True
    assert details["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert details["code_bytes"] == len(code.encode())
    assert code.startswith(details["code"])
    assert len(json.dumps(details, sort_keys=True)) <= 64 * 1024
    assert len(details["code"].encode()) <= 64 * 1024


# --- page and candidates --------------------------------------------------------------------


def test_the_export_page_is_served_with_the_api_and_xsrf(fetch, files, jp_base_url):
    r = fetch("egress/")
    assert r.code == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.body.decode()
    assert f'data-api="{jp_base_url}egress/api/"' in page
    assert 'data-xsrf="' in page and "Request an export" in page


def test_the_file_picker_lists_home_with_reasons(fetch, files, ext):
    (files / ".hidden.csv").write_text("x")
    r = fetch("egress", "api", "files")
    items = {i["path"]: i for i in json.loads(r.body)["files"]}
    assert items["results.csv"]["exportable"] and items["analysis.ipynb"]["exportable"]
    assert not items["cohort.sqlite"]["exportable"]
    assert ".hidden.csv" not in items


def test_code_sent_with_the_v1_websocket_protocol_is_recorded(fetch, events, run, jp_ws_fetch):
    from jupyter_server.services.kernels.connection.base import (
        deserialize_msg_from_ws_v1,
        serialize_msg_to_ws_v1,
    )

    r = fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(r.body)["id"]
    ws = run(
        jp_ws_fetch(
            "api",
            "kernels",
            kernel_id,
            "channels",
            subprotocols=["v1.kernel.websocket.jupyter.org"],
        )
    )
    assert ws.selected_subprotocol == "v1.kernel.websocket.jupyter.org"
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": "execute_request",
        "username": "u",
        "session": uuid.uuid4().hex,
        "version": "5.3",
        "date": "",
    }
    content = {
        "code": "2 ** 10",
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
    }
    parts = [json.dumps(x).encode() for x in (header, {}, {}, content)]
    ws.write_message(serialize_msg_to_ws_v1(parts, "shell"), binary=True)
    while True:
        raw = run(asyncio.wait_for(ws.read_message(), 60))
        assert raw is not None
        _channel, msg_parts = deserialize_msg_from_ws_v1(raw)
        if json.loads(msg_parts[0])["msg_type"] == "execute_reply":
            break
    ws.close()
    fetch("api", "kernels", kernel_id, method="DELETE")
    (executed,) = events("code.executed")
    assert executed["details"]["code"] == "2 ** 10" and executed["details"]["msg_id"] == msg_id


def test_a_page_config_hook_set_by_a_later_extension_is_wrapped_not_lost(ext, jp_serverapp, run):
    settings = jp_serverapp.web_app.settings

    def singleuser_hook(handler, page_config):  # what JupyterHub's extension installs later
        return {**page_config, "hubUser": "alice"}

    settings["page_config_hook"] = singleuser_hook
    run(asyncio.sleep(0))
    ext._late_hooks()
    ext._late_hooks()  # idempotent
    out = settings["page_config_hook"](None, {"disabledExtensions": []})
    assert out["hubUser"] == "alice"
    assert out["disabledExtensions"] == list(ext.disabled_lab_plugins)
