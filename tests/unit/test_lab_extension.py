"""The server side of the TRE's JupyterLab extension (egress_extension/labextension), inside a
real jupyter_server: the page config tells the page the project's copy-out rule and keeps the
news, update and extension-manager plugins off; a blocked copy reported by the page becomes a
``clipboard.copy_blocked`` event (bad reports a 400 and no event); the My data panel's API
returns the extract's dictionary and file names, never content. The hub side: a project's
output policy sets the rule (whole env dict), a typo in it is refused. The page itself runs in
Chromium against a real workspace in ``tests/browser/test_lab_extension.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

from egress_extension.audit import Delivery

pytest_plugins = ["pytest_jupyter.jupyter_server"]


class RecordingSink:
    url = "recording://"

    def __init__(self):
        self.events: list[dict] = []

    async def send(self, body: bytes) -> Delivery:
        self.events.extend(json.loads(body)["events"])
        return Delivery.ok


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "extract"
    d.mkdir()
    (d / "patients.csv").write_text("patient_pseudonym,hba1c\nab12,52\n")
    dictionary = {
        "version": 3,
        "built_at": "2026-11-30T10:00:00Z",
        "project": "diabetes-outcomes",
        "datasets": [
            {
                "name": "patients",
                "files": ["patients.csv"],
                "rows": 1,
                "columns": [
                    {"name": "patient_pseudonym", "type": "string"},
                    {"name": "hba1c", "type": "int64"},
                ],
            }
        ],
    }
    (d / "DATA_DICTIONARY.json").write_text(json.dumps(dictionary))
    (d / "DATA_DICTIONARY.md").write_text("# dictionary\n")
    (d / "MANIFEST.json").write_text("{}")
    return d


@pytest.fixture
def jp_server_config(data_dir):
    return {
        "ServerApp": {"jpserver_extensions": {"egress_extension": True, "jupyterlab": True}},
        "EgressApp": {
            "service_url": "http://127.0.0.1:9/services/sde/",
            "api_token": "t",
            "data_dir": str(data_dir),
        },
    }


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
    def go(*parts, **kwargs):
        try:
            return run(jp_fetch(*parts, **kwargs))
        except HTTPClientError as exc:
            assert exc.response is not None, exc
            return exc.response

    return go


@pytest.fixture
def events(ext, run):
    def get(action: str) -> list[dict]:
        async def drained():
            for _ in range(500):
                if not ext.shipper.pending():
                    return
                await asyncio.sleep(0.01)

        run(drained())
        return [e for e in ext.shipper.sink.events if e["action"] == action]

    return get


def test_a_blocked_copy_is_recorded_as_denied(fetch, events, ext):
    assert ext.clipboard_out == "block"  # SDE_CLIPBOARD_OUT unset: blocked
    body = {"action": "copy", "where": "notebook", "chars": 42}
    r = fetch("egress", "api", "clipboard", method="POST", body=json.dumps(body))
    assert r.code == 200 and json.loads(r.body) == {"recorded": True, "rule": "block"}
    (event,) = events("clipboard.copy_blocked")
    details = {k: v for k, v in event["details"].items() if k != "client_time"}
    assert (event["outcome"], details) == (
        "denied",
        {"action": "copy", "where": "notebook", "chars": 42, "rule": "block"},
    )
    assert "export request" in event["reason"]


@pytest.mark.parametrize(
    "body",
    [
        {"action": "paste", "where": "notebook", "chars": 1},
        {"action": "copy", "where": "<script>", "chars": 1},
        {"action": "copy", "where": "page", "chars": -1},
        {"action": "copy", "where": "page", "chars": True},
        ["copy"],
    ],
)
def test_a_bad_clipboard_report_is_refused_and_not_recorded(fetch, events, body):
    r = fetch("egress", "api", "clipboard", method="POST", body=json.dumps(body))
    assert r.code == 400
    assert events("clipboard.copy_blocked") == []


def test_the_page_config_carries_the_rule_and_keeps_the_room_quiet(ext):
    from egress_extension.blocking import LAB_PLUGINS, QUIET_PLUGINS, DownloadBlocker

    class Ext:
        disabled_lab_plugins = (*LAB_PLUGINS, *QUIET_PLUGINS)
        clipboard_out = "block"
        support_contact = "tre-help@example.org"

    hook = DownloadBlocker(Ext()).page_config_hook(None)
    out = hook(None, {"disabledExtensions": ["@other/ext", "@sde-tre/jupyterlab:clipboard"]})
    assert out == {
        "disabledExtensions": ["@other/ext", *LAB_PLUGINS, *QUIET_PLUGINS],
        "sdeClipboardOut": "block",
        "sdeProject": "",
        "sdeSupport": "tre-help@example.org",
    }
    assert "@jupyterlab/apputils-extension:announcements" in ext.disabled_lab_plugins


@pytest.mark.parametrize(
    ("value", "rule"), [("allow", "allow"), ("ALLOW ", "allow"), ("block", "block"),
                        ("", "block"), (None, "block"), ("alow", "block")],
)  # fmt: skip
def test_anything_but_allow_blocks(value, rule):
    from egress_extension.app import clipboard_rule

    assert clipboard_rule(value) == rule


def test_my_data_lists_the_dictionary_and_file_names_not_content(fetch, data_dir):
    r = fetch("egress", "api", "data")
    assert r.code == 200
    info = json.loads(r.body)
    assert info["data_dir"] == str(data_dir)
    assert info["files"] == [{"name": "patients.csv", "size": 32}]
    assert info["dictionary"]["datasets"][0]["columns"][1] == {"name": "hba1c", "type": "int64"}
    assert "ab12" not in r.body.decode()


def test_my_data_says_so_when_no_extract_is_mounted(tmp_path):
    from egress_extension.handlers import data_info

    missing = tmp_path / "none"
    assert data_info(str(missing)) == {
        "data_dir": str(missing),
        "files": [],
        "dictionary": None,
        "message": f"No extract is mounted at {missing} in this workspace.",
    }


def test_the_labextension_routes_are_classified(ext):
    from egress_extension.routes import classify

    for pattern, name in (
        (r"/egress/api/clipboard", "ClipboardHandler"),
        (r"/egress/api/data", "DataHandler"),
    ):
        route = classify(pattern, f"egress_extension.handlers.{name}")
        assert route is not None and route.kind == "api"
    assert not [f for f in ext.routes if f.kind == "unclassified"]


def test_a_projects_policy_sets_the_workspaces_copy_rule():
    from sde_spawner.registry import rules
    from sde_spawner.spawner import project_clipboard_env

    assert project_clipboard_env({}) == {"SDE_CLIPBOARD_OUT": "block"}
    assert project_clipboard_env({"clipboard_out": "allow"}) == {"SDE_CLIPBOARD_OUT": "allow"}
    assert project_clipboard_env({"clipboard_out": "block"}) == {"SDE_CLIPBOARD_OUT": "block"}
    assert rules.output_policy_problems({"clipboard_out": "allow"}) == []
    assert rules.output_policy_problems({"clipboard_out": "sometimes"}) == [
        ("clipboard_out", "clipboard_out must be 'block' or 'allow', not 'sometimes'")
    ]


def test_the_hub_accepts_every_action_the_workspace_records():
    """A batch is all or nothing: one action the audit API does not know would lose the whole
    batch, so every action name egress_extension records must be a workspace activity."""
    import re

    from sde_spawner.audit.api import WORKSPACE_ACTIONS
    from tests.support import REPO

    source = "".join(p.read_text() for p in (REPO / "egress_extension").glob("*.py"))
    recorded = set(re.findall(r'record\(\s*"([a-z_]+\.[a-z_.]+)"', source))
    recorded |= set(re.findall(r'action="([a-z_]+\.[a-z_.]+)"', source))
    assert {"clipboard.copy_blocked", "export.check.refused", "download.blocked"} <= recorded
    assert recorded - WORKSPACE_ACTIONS == set()


def test_the_extract_shows_in_the_file_browser_and_cannot_be_exported(fetch, events, jp_root_dir):
    link = jp_root_dir / "data"
    assert link.is_symlink()
    info = json.loads(fetch("egress", "api", "data").body)
    assert info["browser_path"] == "data"
    listing = json.loads(fetch("api", "contents", "data").body)
    assert [c["name"] for c in listing["content"] if c["name"] == "patients.csv"]
    r = fetch("api", "contents", "data", "patients.csv", params={"content": "1"})
    assert r.code == 200 and "hba1c" in json.loads(r.body)["content"]
    assert [e for e in events("file.opened") if e["details"]["path"] == "data/patients.csv"]
    body = {
        "files": [{"path": "data/patients.csv", "description": "the extract"}],
        "justification": "trying to take the extract out",
    }
    r = fetch("egress", "api", "requests", method="POST", body=json.dumps(body))
    assert r.code in (400, 403), r.body
    assert "link" in json.loads(r.body)["message"]


def test_a_folder_of_the_same_name_is_left_alone(ext, jp_root_dir, data_dir, tmp_path):
    link = jp_root_dir / "data"
    link.unlink()
    link.mkdir()
    assert ext.link_data() is None and link.is_dir() and not link.is_symlink()
