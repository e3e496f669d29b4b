"""Export requests end to end without Docker: the workspace server with the egress extension
talks over loopback HTTP to the real hub-side ``sde`` service (output checking + audit
ingestion, ``sde_spawner.services.app``) whose hub is a table of tokens
(``sde_spawner.checking.testing.FakeHubOAuth``).

What is checked: the bytes the service stores are the snapshot taken at submission (later
edits do not reach them), the request is submitted under the token's user and project, the
researcher's listing comes from the service, the command line takes the same path, and
activity events land in the hub-side audit log stamped with the workspace's identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

pytest_plugins = ["pytest_jupyter.jupyter_server"]

WORKSPACE_TOKEN = "ws-token-alice"
USER, SERVER = "alice", "p1"
CSV = b"region,n\nnorth,120\nsouth,98\n"


@dataclass
class Service:
    url: str
    Session: object
    state_dir: Path
    server: HTTPServer

    def requests(self):
        from sde_spawner.checking.models import ExportRequest

        with self.Session() as s:
            return [(r.id, r.requester, r.project_slug, r.state) for r in s.query(ExportRequest)]

    def files(self, request_id: int):
        from sde_spawner.checking.models import ExportFile, ExportVersion

        with self.Session() as s:
            rows = (
                s.query(ExportFile)
                .join(ExportVersion)
                .filter(ExportVersion.request_id == request_id)
                .order_by(ExportFile.position)
            )
            return [(f.path, f.description, f.size, f.sha256, f.blob_key) for f in rows]

    def blob(self, key: str) -> bytes:
        from sde_spawner.checking.storage import BlobStore

        return BlobStore.for_state_dir(self.state_dir).path(key).read_bytes()

    def audit(self, action: str | None = None) -> list[dict]:
        from sde_spawner import audit

        with self.Session() as s:
            return [e.to_dict() for e in audit.query(s, action=action)]


@pytest.fixture
def service(tmp_path_factory, jp_asyncio_loop):
    from sde_spawner.checking import testing
    from sde_spawner.services.app import ServiceSettings, http_server, make_app

    state = tmp_path_factory.mktemp("sde-service")
    Session = testing.make_db(state)
    testing.open_workspace(Session, USER, testing.PROJECT, server=SERVER)
    hub_auth = testing.FakeHubOAuth({WORKSPACE_TOKEN: testing.server_token_model(USER, SERVER)})
    settings = ServiceSettings.from_env(
        prefix="/services/sde/",
        bind_ip="127.0.0.1",
        port=0,
        db_url=f"sqlite:///{state / 'registry.sqlite'}",
        state_dir=str(state),
    )

    async def start():
        server = http_server(make_app(settings, hub_auth=hub_auth))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        return server, sockets[0].getsockname()[1]

    server, port = jp_asyncio_loop.run_until_complete(start())
    yield Service(f"http://127.0.0.1:{port}/services/sde/", Session, state, server)
    server.stop()
    jp_asyncio_loop.run_until_complete(server.close_all_connections())


@pytest.fixture
def jp_server_config(service):
    return {
        "ServerApp": {"jpserver_extensions": {"egress_extension": True}},
        "EgressApp": {"service_url": service.url, "api_token": WORKSPACE_TOKEN},
    }


@pytest.fixture
def run(jp_asyncio_loop):
    return jp_asyncio_loop.run_until_complete


@pytest.fixture
def ext(jp_serverapp):
    return jp_serverapp.web_app.settings["egress_extension"]


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
def home(jp_root_dir):
    (jp_root_dir / "results.csv").write_bytes(CSV)
    (jp_root_dir / "out").mkdir()
    (jp_root_dir / "out" / "model.json").write_text('{"auc": 0.81}')
    return jp_root_dir


def shipped(ext, run, service, action):
    """Wait for the shipper to drain, then read the hub-side audit log."""

    async def drained():
        for _ in range(1000):
            if not ext.shipper.pending() and ext.shipper.failures == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"audit queue not drained: {ext.shipper.stats()}")

    run(drained())
    return service.audit(action)


def submit(fetch, files, justification="Aggregate counts for the paper; all cells n>=10"):
    body = {"files": files, "justification": justification}
    return fetch("egress", "api", "requests", method="POST", body=json.dumps(body))


def test_a_submitted_export_holds_the_snapshot_bytes_not_later_edits(fetch, service, home, ext):
    r = submit(
        fetch,
        [
            {"path": "results.csv", "description": "counts by region"},
            {"path": str(home / "out" / "model.json"), "description": "model AUC"},
        ],
    )
    assert r.code == 201, r.body
    result = json.loads(r.body)
    assert result["state"] == "submitted"
    assert [f["path"] for f in result["files"]] == ["results.csv", "out/model.json"]
    assert result["files"][0]["sha256"] == hashlib.sha256(CSV).hexdigest()

    (home / "results.csv").write_bytes(b"region,n\nnorth,3\n")  # too late: already sent
    assert service.requests() == [(result["id"], USER, "p1", "submitted")]
    stored = service.files(result["id"])
    assert stored[0][:4] == (
        "results.csv",
        "counts by region",
        len(CSV),
        hashlib.sha256(CSV).hexdigest(),
    )
    assert service.blob(stored[0][4]) == CSV
    assert service.blob(stored[1][4]) == b'{"auc": 0.81}'


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda p: p.write_bytes(CSV.replace(b"120", b"  3")), id="same-size"),
        pytest.param(lambda p: p.write_bytes(b"region,n\n"), id="shrunk"),
    ],
)
def test_a_file_edited_while_it_is_sent_is_not_stored_and_the_researcher_is_told(
    fetch, service, home, ext, run, monkeypatch, edit
):
    from egress_extension.service import ExportService

    upload = ExportService.upload

    async def edit_then_upload(self, url, fd, size):
        edit(home / "results.csv")  # after the snapshot was declared, before the bytes go
        return await upload(self, url, fd, size)

    monkeypatch.setattr(ExportService, "upload", edit_then_upload)
    r = submit(fetch, [{"path": "results.csv", "description": "counts"}])
    body = json.loads(r.body)
    assert (r.code, body["code"], body["path"]) == (409, "changed", "results.csv"), body
    assert "changed while it was being sent, so none of it was kept" in body["message"]
    ((request_id, *_rest, state),) = service.requests()
    assert state == "draft"  # never submitted: checkers do not see it
    (declared,) = service.files(request_id)
    assert declared[3] == hashlib.sha256(CSV).hexdigest() and declared[4] is None
    blobs = service.state_dir / "exports" / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []  # no blob, no partial upload
    (refused,) = shipped(ext, run, service, "export.refused")
    assert refused["details"]["code"] == "changed"


def test_a_larger_file_streams_through_intact(fetch, service, home):
    data = os.urandom(12 * 1024 * 1024 + 2).hex().encode()  # a CSV's bytes must be text
    (home / "big.csv").write_bytes(data)
    r = submit(fetch, [{"path": "big.csv", "description": "row-level synthetic test"}])
    assert r.code == 201, r.body
    (stored,) = service.files(json.loads(r.body)["id"])
    assert stored[3] == hashlib.sha256(data).hexdigest()
    assert service.blob(stored[4]) == data


def test_own_requests_are_listed_from_the_service_and_can_be_withdrawn(fetch, service, home):
    first = json.loads(submit(fetch, [{"path": "results.csv", "description": "t"}]).body)
    r = fetch("egress", "api", "requests")
    listed = json.loads(r.body)["requests"]
    assert [(x["id"], x["state"]) for x in listed] == [(first["id"], "submitted")]
    assert listed[0]["files"][0]["path"] == "results.csv"
    r = fetch("egress", "api", "requests", str(first["id"]), "withdraw", method="POST", body="{}")
    assert r.code == 200 and json.loads(r.body)["state"] == "withdrawn"
    assert service.requests()[0][3] == "withdrawn"


def test_a_service_refusal_comes_back_with_its_reason(fetch, service, home, ext):
    r = fetch("egress", "api", "requests", "999", "withdraw", method="POST", body="{}")
    assert r.code == 404 and "there is no export request 999" in json.loads(r.body)["message"]


def test_refusals_and_blocked_downloads_reach_the_hub_audit_log_as_the_workspace(
    fetch, service, home, ext, run, tmp_path
):
    (home / "patients.csv").symlink_to("/etc/passwd")
    assert submit(fetch, [{"path": "patients.csv", "description": "x"}]).code == 403
    assert fetch("files", "results.csv", params={"download": "1"}).code == 403
    nb = {"type": "file", "format": "text", "content": "print(1)\n"}
    assert fetch("api", "contents", "a.py", method="PUT", body=json.dumps(nb)).code == 201

    (refused,) = shipped(ext, run, service, "export.refused")
    assert (refused["actor"], refused["project"], refused["outcome"]) == (USER, "p1", "denied")
    assert "symbolic link to /etc/passwd" in refused["reason"]
    assert refused["details"]["source"] == "workspace" and refused["details"]["server"] == SERVER
    (blocked,) = service.audit("download.blocked")
    assert (blocked["actor"], blocked["details"]["channel"]) == (USER, "files")
    (saved,) = service.audit("file.saved")
    assert (saved["actor"], saved["details"]["path"]) == (USER, "a.py")


def test_the_command_line_takes_the_same_path(
    service,
    home,
    ext,
    run,
    jp_serverapp,
    jp_base_url,
    http_server,
    jp_http_port,
    monkeypatch,
    capsys,
):
    from egress_extension import cli

    monkeypatch.setenv("SDE_EXPORT_SERVER_URL", f"http://127.0.0.1:{jp_http_port}{jp_base_url}")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", jp_serverapp.identity_provider.token)
    monkeypatch.chdir(home)

    def cli_run(*argv):
        return run(asyncio.to_thread(cli.main, list(argv)))

    (home / "small.csv").write_bytes(b"region,n\nnorth,120\nsouth,4\n")
    assert cli_run("check", "results.csv", "small.csv") == 3  # a rule failed
    out = capsys.readouterr().out
    assert "results.csv: pass" in out and "small.csv: fail" in out
    assert "threshold  column 'n': 1 cell under the threshold of 10 (row 2: 4)" in out
    assert cli_run("check", "results.csv") == 0
    capsys.readouterr()

    assert cli_run("submit", "results.csv", "-j", "counts for the paper", "-d", "counts") == 0
    out = capsys.readouterr().out
    assert "export request 1 submitted" in out and hashlib.sha256(CSV).hexdigest() in out
    assert service.requests() == [(1, USER, "p1", "submitted")]

    assert cli_run("list") == 0
    assert "submitted" in capsys.readouterr().out

    (home / "link.csv").symlink_to("/etc/passwd")
    assert cli_run("submit", "link.csv", "-j", "x", "-d", "y") == 1
    err = capsys.readouterr().err
    assert err.startswith("sde-export: error: link.csv is a symbolic link to /etc/passwd")
    assert err.count("\n") == 1

    assert (
        cli_run(
            "submit", "results.csv", "out/model.json", "-j", "x", "-d", "a", "-d", "b", "-d", "c"
        )
        == 1
    )
    assert "one per file (2), not 3" in capsys.readouterr().err


def test_the_command_line_without_a_token_says_so(monkeypatch, capsys):
    from egress_extension import cli

    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    assert cli.main(["list"]) == 1
    assert "JUPYTERHUB_API_TOKEN is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "url"),
    [
        (
            {"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/alice/p1/"},
            "http://127.0.0.1:8888/user/alice/p1/egress/api/",
        ),
        (
            {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/p1/"},
            "http://127.0.0.1:8888/user/alice/p1/egress/api/",
        ),
        ({}, "http://127.0.0.1:8888/egress/api/"),
    ],
)
def test_the_command_line_finds_its_server(env, url):
    from egress_extension import cli

    assert cli.server_url(env) == url
