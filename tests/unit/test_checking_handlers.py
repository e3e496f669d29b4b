"""The output-checking handlers over real HTTP (tornado), with a fake hub that answers
"whose token is this?" from a table. Workspaces use their server token; people use the
HubOAuth cookie; the two never mix. State lives only in the DB and the blob store, so a new
app over the same directory carries on where the old one stopped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import zlib
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.testing import bind_unused_port
from tornado.web import create_signed_value

from sde_spawner import audit
from sde_spawner.checking import manifest
from sde_spawner.checking.storage import BlobStore
from sde_spawner.checking.testing import (
    PROJECT,
    FakeHubOAuth,
    browser_model,
    make_db,
    open_workspace,
    server_token_model,
    sha256,
)
from sde_spawner.services.app import ServiceSettings, http_server, make_app

PREFIX = "/services/sde/"
CSV = b"region,n\nnorth,120\nsouth,98\n"
NOTEBOOK = json.dumps(
    {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "id": "c1",
                "metadata": {},
                "execution_count": 1,
                "source": "show()",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "text/html": "<script>document.title='pwned'</script>"
                            "<img src=x onerror=alert(1)><b>mean HbA1c 52</b>"
                        },
                    }
                ],
            }
        ],
    }
).encode()
FILES = {"out/summary.csv": CSV, "analysis.ipynb": NOTEBOOK}


def png_bytes() -> bytes:
    """A real 1x1 PNG (uploads are checked for what their bytes are)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
        + chunk(b"IEND", b"")
    )


def text_bytes(n: int) -> bytes:
    """``n`` bytes of random text (a CSV's bytes must be text)."""
    return os.urandom(n // 2 + 1).hex().encode()[:n]


PEOPLE = ("alice", "bob", "chris", "dana", "olga")


class Service:
    """One running app over a state directory; ``stop()`` and build another to 'restart'."""

    def __init__(self, tmp_path, hub_auth):
        self.settings = ServiceSettings.from_env(
            prefix=PREFIX,
            bind_ip="127.0.0.1",
            port=0,
            db_url=f"sqlite:///{tmp_path / 'registry.sqlite'}",
            state_dir=str(tmp_path / "state"),
        )
        self.app = make_app(self.settings, hub_auth=hub_auth)
        sock, self.port = bind_unused_port()
        self.server = http_server(self.app)
        self.server.add_sockets([sock])
        self.client = AsyncHTTPClient(force_instance=True)
        self.jars: dict[str, dict[str, str]] = {}

    async def stop(self):
        """Stop listening, close the client and every accepted connection (no leaked sockets)."""
        self.server.stop()
        self.client.close()
        await self.server.close_all_connections()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}{path}"

    async def fetch(
        self, method, path, *, token=None, user=None, body=None, headers=None, source=None
    ):
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"token {token}"
        if user:
            jar = self.jars.setdefault(user, {})
            jar.setdefault(
                "service-sde",
                create_signed_value(
                    self.app.settings["cookie_secret"], "service-sde", f"oauth-{user}"
                ).decode(),
            )
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        if isinstance(body, dict):
            body = json.dumps(body)
        if body is None and method in ("POST", "PUT"):
            body = b""
        resp = await self.client.fetch(
            HTTPRequest(
                self.url(path),
                method=method,
                body=body,
                headers=headers,
                follow_redirects=False,
                network_interface=source,  # the client's address (127.0.0.x): who is calling
            ),
            raise_error=False,
        )
        if user:
            for value in resp.headers.get_list("Set-Cookie"):
                for name, morsel in SimpleCookie(value).items():
                    self.jars[user][name] = morsel.value
        return resp

    async def form_post(self, user, path, fields: dict):
        """A browser form submission: the _xsrf token comes from the page's cookie."""
        data = {**fields, "_xsrf": self.jars[user]["_xsrf"]}
        return await self.fetch(
            "POST",
            path,
            user=user,
            body=urlencode(data),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )


@pytest.fixture
def hub_auth():
    tokens = {f"oauth-{u}": browser_model(u) for u in PEOPLE}
    tokens["ws-alice"] = server_token_model("alice", PROJECT)
    tokens["ws-bob"] = server_token_model("bob", PROJECT)
    tokens["personal-alice"] = {**browser_model("alice"), "scopes": ["self"]}
    return FakeHubOAuth(tokens)


@pytest.fixture
def db(tmp_path):
    Session = make_db(tmp_path)
    open_workspace(Session, "alice", PROJECT)
    open_workspace(Session, "bob", PROJECT)
    return Session


@pytest.fixture
async def svc(tmp_path, db, hub_auth):
    s = Service(tmp_path, hub_auth)
    yield s
    await s.stop()


def events(db, **filters) -> list[dict]:
    with db() as s:
        rows = [e.to_dict() for e in audit.query(s)]
    return [e for e in rows if all(e[k] == v for k, v in filters.items())]


def body_of(files: dict[str, bytes]) -> dict:
    return {
        "justification": "Table 2 and the notebook that makes it",
        "files": [
            {"path": p, "description": f"{p} for the paper", "size": len(d), "sha256": sha256(d)}
            for p, d in files.items()
        ],
    }


async def submit_request(svc: Service, workspace="ws-alice", files=FILES) -> int:
    token = workspace
    r = await svc.fetch("POST", "api/exports", token=token, body=body_of(files))
    assert r.code == 201, r.body
    created = json.loads(r.body)
    assert created["version"] == 1 and created["state"] == "draft"
    for up, data in zip(created["uploads"], files.values(), strict=True):
        assert up["url"] == f"{PREFIX}api/exports/{created['id']}/files/{up['index']}"
        r = await svc.fetch("PUT", up["url"].removeprefix(PREFIX), token=token, body=data)
        assert r.code == 200, r.body
    r = await svc.fetch("POST", f"api/exports/{created['id']}/submit", token=token)
    assert r.code == 200, r.body
    assert json.loads(r.body)["state"] == "submitted"
    return created["id"]


async def review_all(
    svc: Service, user: str, rid: int, decision="approve", override="looked at by eye: safe"
):
    page = await svc.fetch("GET", f"checking/requests/{rid}", user=user)
    assert page.code == 200, page.body
    if b'id="claim"' in page.body:
        r = await svc.form_post(user, f"checking/requests/{rid}/claim", {})
        assert r.code == 302, r.body
        page = await svc.fetch("GET", f"checking/requests/{rid}", user=user)
    file_ids = re.findall(rb'name="decision-(\d+)" value="approve"', page.body)
    assert file_ids, page.body
    fields = {"version": "1"}
    for fid in file_ids:
        fields[f"decision-{fid.decode()}"] = decision
        if decision != "approve":
            fields[f"reason-{fid.decode()}"] = "small-cell-count"
        elif override:
            # the notebook's hostile output fails the automated `script` rule: approving it
            # needs the checker's comment
            fields[f"comment-{fid.decode()}"] = override
    r = await svc.form_post(user, f"checking/requests/{rid}/review", fields)
    assert r.code == 302, r.body
    return r.headers["Location"]


async def test_workspace_submits_checkers_review_requester_downloads(svc, db):
    rid = await submit_request(svc)
    listed = json.loads((await svc.fetch("GET", "api/exports", token="ws-alice")).body)
    assert [(r["id"], r["state"]) for r in listed["requests"]] == [(rid, "submitted")]
    assert json.loads((await svc.fetch("GET", "api/exports", token="ws-bob")).body) == {
        "requests": []
    }

    queue = await svc.fetch("GET", "checking/", user="chris")
    assert queue.code == 200 and f'data-request="{rid}"'.encode() in queue.body
    assert queue.headers["Content-Security-Policy"].startswith("default-src 'none'")

    assert (await review_all(svc, "chris", rid)).endswith(f"requests/{rid}?done=reviewed")
    # independence: dana sees no decisions of chris before submitting her own
    page = await svc.fetch("GET", f"checking/requests/{rid}", user="dana")
    assert b"chris" not in page.body
    assert (await review_all(svc, "dana", rid)).endswith("?done=approved")
    page = await svc.fetch("GET", f"checking/requests/{rid}", user="dana")
    assert b"chris" in page.body and b'id="state">approved' in page.body

    releases = await svc.fetch("GET", "releases/", user="alice")
    links = re.findall(rb'href="(/services/sde/releases/\d+/files/\d+)"', releases.body)
    assert len(links) == 2
    got = []
    for link in links:
        r = await svc.fetch("GET", link.decode().removeprefix(PREFIX), user="alice")
        assert r.code == 200, r.body
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["X-SDE-SHA256"] == sha256(r.body)
        assert "attachment" in r.headers["Content-Disposition"]
        got.append(r.body)
    assert got == list(FILES.values())
    assert (
        json.loads((await svc.fetch("GET", "api/exports", token="ws-alice")).body)["requests"][0][
            "state"
        ]
        == "released"
    )

    text = (await svc.fetch("GET", f"releases/{rid}/manifest.json", user="alice")).body
    sig = (await svc.fetch("GET", f"releases/{rid}/manifest.sig", user="alice")).body
    key = json.loads((await svc.fetch("GET", "api/release-key")).body)
    assert key["algorithm"] == "Ed25519"
    assert manifest.verify(key["public_key_pem"], text, sig.decode().strip())
    m = json.loads(text)
    assert {f["sha256"] for f in m["files"]} == {sha256(d) for d in FILES.values()}
    assert [r["checker"] for r in m["reviews"]] == ["chris", "dana"]
    assert len(events(db, action="export.release.downloaded", outcome="allowed")) == 2


async def test_the_request_page_shows_each_files_automated_disclosure_checks(svc, db):
    files = {
        "counts.csv": b"region,n\nnorth,120\nsouth,4\n",
        "safe.csv": CSV,
        "fig.png": png_bytes(),
        "model.txt": b"Df Residuals:   3\n",
    }
    rid = await submit_request(svc, files=files)
    page = (await svc.fetch("GET", f"checking/requests/{rid}", user="chris")).body.decode()
    statuses = re.findall(r'class="sdc (\w+)" id="checks-\d+" data-status="(\w+)"', page)
    assert [s for s, _ in statuses] == ["fail", "pass", "info", "fail"]
    assert "1 cell under the threshold of 10 (row 2: 4)" in page
    assert 'data-rule="dof"' in page and "3 residual degrees of freedom" in page
    assert "check by eye" in page

    # approving files that fail the rules needs a comment for each
    assert (await svc.form_post("chris", f"checking/requests/{rid}/claim", {})).code == 302
    page = (await svc.fetch("GET", f"checking/requests/{rid}", user="chris")).body.decode()
    ids = dict(zip(files, re.findall(r'name="decision-(\d+)" value="approve"', page), strict=True))
    fields = {"version": "1", **{f"decision-{i}": "approve" for i in ids.values()}}
    r = await svc.form_post("chris", f"checking/requests/{rid}/review", fields)
    assert r.code == 400 and b"counts.csv fails automated disclosure rules (threshold)" in r.body
    assert b"model.txt fails automated disclosure rules (dof)" in r.body
    fields[f"comment-{ids['counts.csv']}"] = "south is a published figure (ONS table 4)"
    fields[f"comment-{ids['model.txt']}"] = "a toy model on synthetic data"
    r = await svc.form_post("chris", f"checking/requests/{rid}/review", fields)
    assert r.code == 302, r.body


async def test_a_workspace_token_copied_out_of_its_container_is_refused(svc, db):
    """The spawner records the container's address; the token works from there only. From
    anywhere else (the public proxy, another host) the API would otherwise hand back what the
    workspace wrote (justification, paths) without any checker seeing it."""
    rid = await submit_request(svc)  # from 127.0.0.1, alice's recorded address
    for method, path, body in [
        ("GET", "api/exports", None),
        ("GET", f"api/exports/{rid}", None),
        ("POST", "api/exports", body_of({"a.csv": CSV})),
        ("POST", f"api/exports/{rid}/withdraw", None),
    ]:
        r = await svc.fetch(method, path, token="ws-alice", body=body, source="127.0.0.2")
        assert r.code == 403, (path, r.body)
        assert b"accepted from its own container only, not from 127.0.0.2" in r.body
    r = await svc.fetch(
        "POST",
        "api/audit/events",
        token="ws-alice",
        body={"events": [{"action": "file.saved", "details": {"path": "a.py"}}]},
        source="127.0.0.2",
    )
    assert r.code == 403 and b"own container only" in r.body
    denied = [e for e in events(db, outcome="denied") if "127.0.0.2" in (e["reason"] or "")]
    assert len(denied) == 5 and {e["actor"] for e in denied} == {"alice"}
    assert (await svc.fetch("GET", "api/exports", token="ws-alice")).code == 200


async def test_what_the_workspace_wrote_is_shown_outside_only_once_approved(svc, db):
    """The releases page is outside the workspace: a justification, file name or declared
    digest shown there before approval would be a way out that no checker saw."""
    secret = "c2VjcmV0LXBhdGllbnQtZGF0YQ"  # e.g. base64 of rows, typed into the metadata
    draft = {**body_of({f"{secret}.csv": CSV}), "justification": f"draft {secret}"}
    assert (await svc.fetch("POST", "api/exports", token="ws-alice", body=draft)).code == 201
    files = {f"out/{secret}.csv": CSV, "notes.txt": b"fine\n"}
    body = {**body_of(files), "justification": f"Table 2 {secret}"}
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=body)
    rid = json.loads(r.body)["id"]
    for up, data in zip(json.loads(r.body)["uploads"], files.values(), strict=True):
        await svc.fetch("PUT", up["url"].removeprefix(PREFIX), token="ws-alice", body=data)
    assert (await svc.fetch("POST", f"api/exports/{rid}/submit", token="ws-alice")).code == 200

    page = (await svc.fetch("GET", "releases/", user="alice")).body.decode()
    assert secret not in page and sha256(CSV) not in page
    # neither the draft nor the unclaimed request is listed: no checker has seen them
    assert 'id="request-' not in page

    await review_all(svc, "chris", rid, decision="changes")  # returned: still withheld
    await review_all(svc, "dana", rid, decision="changes")
    page = (await svc.fetch("GET", "releases/", user="alice")).body.decode()
    assert "returned" in page and secret not in page and "small cell counts" in page.lower()
    # numbered per requester when first claimed (global id 2: the draft took 1)
    assert 'id="request-1"' in page and page.count('class="withheld"') == 2
    assert f'id="request-{rid}"' not in page

    # inside the workspace the researcher still sees everything they wrote
    listed = json.loads((await svc.fetch("GET", "api/exports", token="ws-alice")).body)
    assert any(secret in (r["justification"] or "") for r in listed["requests"])


async def test_a_workspace_token_can_never_review_approve_or_download(svc, db):
    rid = await submit_request(svc)
    attempts = [
        ("GET", "checking/"),
        ("GET", f"checking/requests/{rid}"),
        ("POST", f"checking/requests/{rid}/claim"),
        ("POST", f"checking/requests/{rid}/review"),
        ("GET", "checking/files/1/render"),
        ("GET", "releases/"),
        ("GET", f"releases/{rid}/files/1"),
        ("GET", f"releases/{rid}/manifest.json"),
    ]
    for token in ("ws-alice", "personal-alice", "oauth-chris"):
        for method, path in attempts:
            r = await svc.fetch(method, path, token=token)
            assert r.code == 403, (token, path, r.code)
            assert b"browser login" in r.body
    denied = events(db, outcome="denied")
    assert len(denied) == 3 * len(attempts)
    assert {e["actor"] for e in denied} == {"alice", "chris"}
    assert all("can never review, approve or download" in e["reason"] for e in denied)
    # a token in the URL is refused the same way
    r = await svc.fetch("GET", "releases/?token=ws-alice")
    assert r.code == 403


async def test_pages_without_a_login_go_to_the_hub_and_api_needs_a_workspace_token(svc, db):
    r = await svc.fetch("GET", "checking/")
    assert r.code == 302
    assert r.headers["Location"].startswith("/hub/api/oauth2/authorize?")
    assert (await svc.fetch("POST", "checking/requests/1/claim")).code == 403
    assert (await svc.fetch("GET", "api/exports")).code == 401
    for token in ("personal-alice", "oauth-alice", "forged"):
        r = await svc.fetch("POST", "api/exports", token=token, body=body_of(FILES))
        assert r.code == 403, token
        assert b"running workspace's own token" in r.body
    assert [e["actor"] for e in events(db, action="export.created", outcome="denied")] == [
        "alice",
        "alice",
        "(unidentified)",
    ]


async def test_preview_is_sanitised_and_sandboxed(svc, db):
    rid = await submit_request(svc)
    page = await svc.fetch("GET", f"checking/requests/{rid}", user="chris")
    srcs = re.findall(rb'<iframe sandbox="" [^>]*src="([^"]+)"', page.body)
    assert len(srcs) == 2
    for src in srcs:
        r = await svc.fetch("GET", src.decode().removeprefix(PREFIX), user="chris")
        assert r.code == 200
        assert r.headers["Content-Security-Policy"] == (
            "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        )
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        # no script and no event handler in any tag (the notice shows them as escaped text)
        assert b"<script" not in r.body and not re.search(rb"<[^>]*\sonerror", r.body)
    assert b"mean HbA1c 52" in r.body  # the notebook, rendered
    assert len(events(db, action="export.file.viewed", actor="chris")) == 2
    # the requester (bob is a checker too) and other projects' checkers cannot preview
    bob_rid = await submit_request(svc, workspace="ws-bob")
    bob_page = await svc.fetch("GET", f"checking/requests/{bob_rid}", user="chris")
    bob_src = re.findall(rb'src="/services/sde/(checking/files/\d+/render)"', bob_page.body)[0]
    for user, reason in [
        ("bob", b"can never review their own request"),
        ("olga", b"not an output checker"),
    ]:
        r = await svc.fetch("GET", bob_src.decode(), user=user)
        assert r.code == 403 and reason in r.body, r.body


async def test_self_review_and_second_review_are_refused_with_a_page(svc, db):
    rid = await submit_request(svc, workspace="ws-bob")
    r = await svc.fetch("GET", f"checking/requests/{rid}", user="bob")
    assert r.code == 403 and b"a requester can never review their own request" in r.body
    await svc.fetch("GET", "checking/", user="bob")  # a page visit sets the xsrf cookie
    r = await svc.form_post("bob", f"checking/requests/{rid}/claim", {})
    assert r.code == 403 and b"can never review their own request" in r.body
    await review_all(svc, "chris", rid)
    r = await svc.form_post("chris", f"checking/requests/{rid}/review", {"version": "1"})
    assert r.code == 409 and b"one checker counts once" in r.body
    assert {e["actor"] for e in events(db, outcome="denied")} == {"bob", "chris"}


async def test_a_form_without_the_xsrf_token_is_refused(svc, db):
    rid = await submit_request(svc)
    await svc.fetch("GET", f"checking/requests/{rid}", user="chris")
    r = await svc.fetch("POST", f"checking/requests/{rid}/claim", user="chris", body=b"")
    assert r.code == 403
    assert (
        json.loads((await svc.fetch("GET", "api/exports", token="ws-alice")).body)["requests"][0][
            "state"
        ]
        == "submitted"
    )


async def test_uploads_must_match_their_declaration(svc, db):
    files = {"a.csv": CSV}
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=body_of(files))
    rid = json.loads(r.body)["id"]
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/0", token="ws-alice", body=CSV[::-1])
    assert r.code == 400 and b"does not match the declared" in r.body
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/0", token="ws-alice", body=CSV + b"x")
    assert r.code == 400
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/0", token="ws-bob", body=CSV)
    assert r.code == 404
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/5", token="ws-alice", body=CSV)
    assert r.code == 404
    r = await svc.fetch("POST", f"api/exports/{rid}/submit", token="ws-alice")
    assert r.code == 409 and b"not uploaded yet" in r.body
    bad = {**body_of(files), "requester": "bob"}
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=bad)
    assert r.code == 400 and b"unknown field(s) requester" in r.body
    assert len(events(db, action="export.file.uploaded", outcome="denied")) == 4
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/0", token="ws-alice", body=CSV)
    assert r.code == 200
    assert (await svc.fetch("POST", f"api/exports/{rid}/submit", token="ws-alice")).code == 200
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/0", token="ws-alice", body=CSV)
    assert r.code == 409 and b"its files are fixed" in r.body
    assert list((svc.settings and __import__("pathlib").Path(svc.settings.state_dir))
                .glob("exports/blobs/.upload-*")) == []  # fmt: skip


def upload_temps(svc: Service) -> list:
    return list(Path(svc.settings.state_dir).glob("exports/blobs/.upload-*"))


async def test_a_large_upload_is_stored_whole_and_a_bad_piece_anywhere_refuses_it(svc, db):
    data = text_bytes(7 * 1024 * 1024 + 5)  # several pieces of HTTP_CHUNK_SIZE, more in flight
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=body_of({"t.csv": data}))
    rid = json.loads(r.body)["id"]
    at = 5 * 1024 * 1024  # one bit flipped in a late piece
    spoiled = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/0", token="ws-alice", body=spoiled)
    assert r.code == 400 and b"does not match the declared" in r.body
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/0", token="ws-alice", body=data)
    assert r.code == 200, r.body
    assert json.loads(r.body)["sha256"] == sha256(data)
    store = BlobStore.for_state_dir(svc.settings.state_dir)
    assert store.read_verified(sha256(data), sha256(data)) == data
    assert upload_temps(svc) == []


async def test_a_workspace_that_hangs_up_mid_upload_leaves_no_partial_file(svc, db):
    data = text_bytes(3 * 1024 * 1024)
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=body_of({"t.csv": data}))
    rid = json.loads(r.body)["id"]
    _reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
    writer.write(
        f"PUT {PREFIX}api/exports/{rid}/files/0 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: token ws-alice\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data[: 2 * 1024 * 1024]
    )
    await writer.drain()
    for _ in range(200):  # the service has started the upload
        if upload_temps(svc):
            break
        await asyncio.sleep(0.01)
    assert upload_temps(svc)
    writer.close()
    await writer.wait_closed()
    for _ in range(500):
        if not upload_temps(svc):
            break
        await asyncio.sleep(0.01)
    assert upload_temps(svc) == []
    store = BlobStore.for_state_dir(svc.settings.state_dir)
    assert not store.exists(sha256(data))
    r = await svc.fetch("POST", f"api/exports/{rid}/submit", token="ws-alice")
    assert r.code == 409 and b"not uploaded yet" in r.body


async def test_the_service_survives_a_restart(tmp_path, db, hub_auth):
    first = Service(tmp_path, hub_auth)
    rid = await submit_request(first)
    await review_all(first, "chris", rid)
    key1 = json.loads((await first.fetch("GET", "api/release-key")).body)["public_key_pem"]
    await first.stop()

    second = Service(tmp_path, hub_auth)  # new app, new cookie secret: people log in again
    await review_all(second, "dana", rid)
    releases = await second.fetch("GET", "releases/", user="alice")
    links = re.findall(rb'href="/services/sde/(releases/\d+/files/\d+)"', releases.body)
    got = [(await second.fetch("GET", link.decode(), user="alice")).body for link in links]
    assert got == list(FILES.values())
    text = (await second.fetch("GET", f"releases/{rid}/manifest.json", user="alice")).body
    sig = (await second.fetch("GET", f"releases/{rid}/manifest.sig", user="alice")).body
    await second.stop()
    assert manifest.verify(key1, text, sig.decode().strip())


async def test_a_tampered_blob_is_not_released(svc, db):
    rid = await submit_request(svc, files={"a.csv": CSV})
    await review_all(svc, "chris", rid)
    await review_all(svc, "dana", rid)

    path = BlobStore.for_state_dir(svc.settings.state_dir).path(sha256(CSV))
    path.chmod(0o644)
    path.write_bytes(b"region,n\nnorth,3\n")
    releases = await svc.fetch("GET", "releases/", user="alice")
    link = re.findall(rb'href="/services/sde/(releases/\d+/files/\d+)"', releases.body)[0]
    r = await svc.fetch("GET", link.decode(), user="alice")
    assert r.code == 500 and b"integrity check failed" in r.body and b"north,3" not in r.body
    assert events(db, action="export.release.downloaded", outcome="denied")
    assert not events(db, action="export.release.downloaded", outcome="allowed")


async def test_pages_are_only_served_through_the_proxy(svc, db, monkeypatch):
    """Workspaces reach the service port from their gateway; people come via the proxy."""
    svc.app.settings["sde"].page_networks = ["10.99.0.0/16"]
    for path in ("checking/", "releases/"):
        r = await svc.fetch("GET", path, user="chris")
        assert r.code == 403 and b"only through the hub&#x27;s proxy" in r.body, r.body
    # the workspace API is unaffected
    assert (await svc.fetch("GET", "api/exports", token="ws-alice")).code == 200
    denied = events(db, outcome="denied")
    assert len(denied) == 2 and all("came from 127.0.0.1" in e["reason"] for e in denied)


async def test_a_tab_separated_token_drives_no_page(svc, db):
    """The review's finding: HubAuth reads ``token<TAB>…`` as a token; the pages refuse it
    (every page and transport: tests/unit/test_page_guards.py)."""
    rid = await submit_request(svc)
    for method, path in [
        ("GET", f"checking/requests/{rid}"),
        ("POST", f"checking/requests/{rid}/claim"),
        ("POST", f"checking/requests/{rid}/review"),
        ("GET", f"releases/{rid}/files/1"),
    ]:
        r = await svc.fetch(method, path, headers={"Authorization": "token\toauth-chris"})
        assert r.code == 403 and b"browser login" in r.body, (path, r.code)
    assert len(events(db, outcome="denied", actor="chris")) == 4
    state = json.loads((await svc.fetch("GET", "api/exports", token="ws-alice")).body)
    assert state["requests"][0]["state"] == "submitted"  # nothing was claimed or reviewed


# --- what previews leave out, and the raw view ----------------------------------------------

HIDDEN_NOTEBOOK = json.dumps(
    {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"smuggled": "NHS 943 476 5919"},
        "cells": [
            {
                "cell_type": "markdown",
                "id": "m1",
                "metadata": {"note": "CELL-METADATA-SECRET"},
                "source": "Visible.<!-- COMMENT-SECRET -->",
            }
        ],
    }
).encode()
TAGGED_TEXT = "mean 52\U000e0070\U000e0061\U000e0074\n".encode() * 20_000  # > 1 raw page


async def test_a_checker_sees_what_the_preview_leaves_out_and_the_raw_bytes(svc, db):
    from sde_spawner.checking import render

    files = {"hidden.ipynb": HIDDEN_NOTEBOOK, "notes.txt": TAGGED_TEXT}
    rid = await submit_request(svc, files=files)
    page = await svc.fetch("GET", f"checking/requests/{rid}", user="chris")
    raws = re.findall(
        rb'href="/services/sde/(checking/files/\d+/raw)\?framed=1" target="view-\d+"', page.body
    )
    assert len(raws) == 2
    previews = re.findall(rb'src="/services/sde/(checking/files/\d+/render)"', page.body)
    nb_preview = await svc.fetch("GET", previews[0].decode(), user="chris")
    for secret in (b"NHS 943 476 5919", b"CELL-METADATA-SECRET", b"&lt;!-- COMMENT-SECRET --&gt;"):
        assert secret in nb_preview.body
    txt_preview = await svc.fetch("GET", previews[1].decode(), user="chris")
    assert b"60,000 invisible or control character(s)" in txt_preview.body
    assert (
        "⟨U+E0070⟩".encode() in txt_preview.body and "\U000e0070".encode() not in txt_preview.body
    )

    nb_raw, txt_raw = raws[0].decode(), raws[1].decode()
    r = await svc.fetch("GET", nb_raw, user="chris")
    assert r.code == 200
    for name, value in render.PREVIEW_HEADERS.items():
        assert r.headers[name] == value
    assert b"COMMENT-SECRET" in r.body and b"<script" not in r.body
    first = await svc.fetch("GET", txt_raw, user="chris")
    assert b"raw bytes (text)" in first.body and b'id="raw-next"' in first.body
    assert "⟨U+E0070⟩".encode() in first.body and "\U000e0070".encode() not in first.body
    framed = await svc.fetch("GET", txt_raw + "?framed=1", user="chris")  # in the page's frame
    assert b'id="raw-next"' not in framed.body and b"the controls above this frame" in framed.body
    second = await svc.fetch("GET", txt_raw + "?page=2", user="chris")
    assert second.code == 200 and b"page 2 of" in second.body
    hexed = await svc.fetch("GET", txt_raw + "?as=hex", user="chris")
    assert b"raw bytes (hex)" in hexed.body and b"f3 a0 81 b0" in hexed.body  # U+E0070 in UTF-8
    views = events(db, action="export.file.viewed", actor="chris", outcome="allowed")
    assert len(views) >= 5  # every view of the file's content is audited

    for bad in ("?page=0", "?page=x", "?as=html"):
        r = await svc.fetch("GET", txt_raw + bad, user="chris")
        assert r.code == 400 and b"the raw view takes page=1" in r.body, bad
    r = await svc.fetch("GET", txt_raw + "?page=999", user="chris")
    assert r.code == 404 and b"there is no page 999" in r.body
    denied = events(db, action="export.file.viewed", actor="chris", outcome="denied")
    assert len(denied) == 4
    # the requester and other projects' checkers get no raw view either
    for user, reason in [
        ("alice", b"can never review their own request"),
        ("olga", b"not an output checker"),
    ]:
        r = await svc.fetch("GET", txt_raw, user=user)
        assert r.code == 403 and reason in r.body, r.body


async def test_the_raw_view_refuses_a_tampered_blob(svc, db):
    rid = await submit_request(svc, files={"notes.txt": TAGGED_TEXT})
    page = await svc.fetch("GET", f"checking/requests/{rid}", user="chris")
    (raw_path,) = re.findall(
        rb'href="/services/sde/(checking/files/\d+/raw)\?framed=1" target="view-', page.body
    )
    blob = BlobStore.for_state_dir(svc.settings.state_dir).path(sha256(TAGGED_TEXT))
    blob.chmod(0o644)
    blob.write_bytes(TAGGED_TEXT.replace(b"52", b"53"))
    r = await svc.fetch("GET", raw_path.decode(), user="chris")
    assert r.code == 500 and b"no longer matches its approved sha256" in r.body
    assert b"mean 53" not in r.body
