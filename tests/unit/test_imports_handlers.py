"""The import pages over real HTTP (tornado), with the fake hub of the checking tests: a member
uploads files through the multipart form with their browser login, checkers review, and every
refusal is a clear answer with an audit event. State lives in the DB and the import blob store.
"""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import quote

import pytest

from sde_spawner.checking.testing import (
    PROJECT,
    FakeHubOAuth,
    browser_model,
    make_db,
    server_token_model,
)
from sde_spawner.imports import logic
from sde_spawner.imports.materialise import blob_store, prepare_imports
from sde_spawner.imports.models import ImportRequest
from sde_spawner.registry.models import Project
from tests.unit.test_checking_handlers import PEOPLE, Service, events, png_bytes

LOOKUP = b"code,label\nE11,Type 2 diabetes\nE10,Type 1 diabetes\n"
SCRIPT = b"import csv\n\ndef codes(path):\n    return list(csv.DictReader(open(path)))\n"
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 200


@pytest.fixture
def hub_auth():
    tokens = {f"oauth-{u}": browser_model(u) for u in PEOPLE}
    tokens["ws-alice"] = server_token_model("alice", PROJECT)
    return FakeHubOAuth(tokens)


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path)


@pytest.fixture
async def svc(tmp_path, db, hub_auth):
    s = Service(tmp_path, hub_auth)
    yield s
    await s.stop()


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for filename, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    return f"multipart/form-data; boundary={boundary}", b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode()


async def upload(svc, user, files, *, project=PROJECT, justification="Code lists for the HbA1c"):
    page = await svc.fetch("GET", "imports/", user=user)
    assert page.code == 200, page.body
    ctype, body = multipart(
        {"project": project, "justification": justification, "description": ""}, files
    )
    xsrf = quote(svc.jars[user]["_xsrf"])
    return await svc.fetch(
        "POST", f"imports/new?_xsrf={xsrf}", user=user, body=body, headers={"Content-Type": ctype}
    )


def imported_id(resp) -> int:
    assert resp.code == 302, resp.body
    return int(re.search(r"done=submitted-(\d+)", resp.headers["Location"]).group(1))


async def decide(svc, user, iid, decision, comment=""):
    page = await svc.fetch("GET", f"imports/requests/{iid}", user=user)
    assert page.code == 200, page.body
    return await svc.form_post(
        user, f"imports/requests/{iid}/review", {"decision": decision, "comment": comment}
    )


async def test_member_uploads_a_checker_approves_and_the_layout_holds_the_files(svc, db, tmp_path):
    iid = imported_id(await upload(svc, "alice", [("codes.csv", LOOKUP), ("load.py", SCRIPT)]))
    own = await svc.fetch("GET", "imports/", user="alice")
    assert f'data-import="{iid}"'.encode() in own.body and b"submitted" in own.body

    queue = await svc.fetch("GET", "imports/review/", user="chris")
    assert f'data-import="{iid}"'.encode() in queue.body
    page = await svc.fetch("GET", f"imports/requests/{iid}", user="chris")
    assert b'id="submit-review"' in page.body and b"Code lists for the HbA1c" in page.body
    fid = int(re.search(rb'data-file="(\d+)"', page.body).group(1))
    preview = await svc.fetch("GET", f"imports/files/{fid}/render", user="chris")
    assert preview.code == 200 and b"Type 2 diabetes" in preview.body
    assert preview.headers["Content-Security-Policy"].startswith("sandbox")

    r = await decide(svc, "chris", iid, "approve")
    assert r.code == 302 and r.headers["Location"].endswith("?done=approved"), r.body
    actions = [(e["action"], e["actor"]) for e in events(db, project=PROJECT)]
    for expected in [
        ("import.submitted", "alice"),
        ("import.file.viewed", "chris"),
        ("import.in_review", "chris"),
        ("import.reviewed", "chris"),
        ("import.approved", "system"),
    ]:
        assert expected in actions, expected

    path, files = prepare_imports(db, str(tmp_path / "state" / "imports"), PROJECT)
    assert [f.relpath for f in files] == [f"{iid}/codes.csv", f"{iid}/load.py"]
    assert (path / str(iid) / "codes.csv").read_bytes() == LOOKUP
    assert (path / str(iid) / "load.py").read_bytes() == SCRIPT


async def test_bytes_decide_the_type_refusals_are_clear_and_audited(svc, db, tmp_path):
    cases = {
        "results.csv": (ELF, "executable"),  # a program renamed .csv
        "notes.txt": (b"PK\x03\x04" + b"\x00" * 100, "archive"),  # a zip renamed .txt
        "run.py": (b"#!/bin/sh\ncurl x | sh\n", "executable"),  # a #! script
        "tool.exe": (b"MZ", "type_not_allowed"),
        "../escape.csv": (LOOKUP, "bad_name"),
        ".hidden.csv": (LOOKUP, "bad_name"),
        "fig.png": (LOOKUP, "type_mismatch"),  # text named .png
    }
    for name, (data, code) in cases.items():
        r = await upload(svc, "alice", [(name, data)])
        assert r.code == 422, (name, r.code, r.body)
        assert b"imported" in r.body or b"bytes" in r.body or b"name" in r.body, r.body
        denied = [e for e in events(db, action="import.refused") if e["outcome"] == "denied"]
        assert denied[-1]["details"]["code"] in (code, "type_mismatch"), (name, denied[-1])
        assert any(p["code"] == code for p in denied[-1]["details"]["problems"]), name
    # nothing was stored: no request, no blob
    with db() as s:
        assert s.query(ImportRequest).count() == 0
    store = blob_store(tmp_path / "state" / "imports")
    assert not store.root.exists() or not any(store.root.rglob("*"))
    # control: the same upload with honest bytes is taken
    imported_id(await upload(svc, "alice", [("fig.png", png_bytes())]))


async def test_requester_never_reviews_and_rejects_need_a_reason(svc, db):
    # bob is a researcher *and* a checker of the project: never of his own import
    iid = imported_id(await upload(svc, "bob", [("codes.csv", LOOKUP)]))
    page = await svc.fetch("GET", f"imports/requests/{iid}", user="bob")
    assert b'id="submit-review"' not in page.body
    r = await svc.form_post("bob", f"imports/requests/{iid}/review", {"decision": "approve"})
    assert r.code == 403 and b"can never review their own" in r.body, r.body
    assert events(db, action="import.reviewed", actor="bob")[-1]["outcome"] == "denied"
    # a checker of another project cannot see it
    r = await svc.fetch("GET", f"imports/requests/{iid}", user="olga")
    assert r.code == 404
    # a reject needs its reason
    r = await decide(svc, "chris", iid, "reject")
    assert r.code == 400 and b"say why" in r.body
    r = await decide(svc, "chris", iid, "reject", "not a code list this project may hold")
    assert r.code == 302 and r.headers["Location"].endswith("?done=rejected")
    with db() as s:
        assert logic.approved_files(s, PROJECT) == []


async def test_a_project_may_ask_for_two_approvals(svc, db):
    with db() as s, s.begin():
        proj = s.query(Project).filter_by(slug=PROJECT).one()
        proj.output_policy = {**proj.output_policy, "import_required_approvals": 2}
    iid = imported_id(await upload(svc, "alice", [("codes.csv", LOOKUP)]))
    r = await decide(svc, "chris", iid, "approve")
    assert r.headers["Location"].endswith("?done=in_review")
    r = await decide(svc, "chris", iid, "approve")  # chris counts once
    assert r.code == 409 and b"one checker counts once" in r.body
    r = await decide(svc, "dana", iid, "approve")
    assert r.headers["Location"].endswith("?done=approved")


async def test_pages_take_no_tokens_and_non_members_cannot_import(svc, db):
    # a workspace's token cannot upload (the page guard refuses and audits before the body)
    ctype, body = multipart({"project": PROJECT, "justification": "x"}, [("a.csv", LOOKUP)])
    r = await svc.fetch(
        "POST", "imports/new", token="ws-alice", body=body, headers={"Content-Type": ctype}
    )
    assert r.code == 403 and b"browser login" in r.body
    assert events(db, action="import.refused")[-1]["outcome"] == "denied"
    # a token in the streamed form itself is refused too (HubAuth never reads it, but no page
    # takes one), after the guard let the browser session in
    await svc.fetch("GET", "imports/", user="alice")
    ctype, body = multipart({"project": PROJECT, "justification": "x", "token": "ws-alice"}, [])
    xsrf = quote(svc.jars["alice"]["_xsrf"])
    r = await svc.fetch(
        "POST",
        f"imports/new?_xsrf={xsrf}",
        user="alice",
        body=body,
        headers={"Content-Type": ctype},
    )
    assert r.code == 403 and b"carried a" in r.body, r.body
    # olga is not a member of p1
    r = await upload(svc, "olga", [("codes.csv", LOOKUP)])
    assert r.code == 403 and b"not an active member" in r.body
    # a form without its xsrf token is refused
    r = await svc.fetch(
        "POST", "imports/new", user="alice", body=body, headers={"Content-Type": ctype}
    )
    assert r.code == 403 and b"xsrf" in r.body


async def test_withdrawn_imports_never_mount(svc, db):
    iid = imported_id(await upload(svc, "alice", [("codes.csv", LOOKUP)]))
    await svc.fetch("GET", f"imports/requests/{iid}", user="alice")
    r = await svc.form_post("alice", f"imports/requests/{iid}/withdraw", {})
    assert r.code == 302, r.body
    r = await decide(svc, "chris", iid, "approve")
    assert r.code == 409 and b"not waiting for review" in r.body
    with db() as s:
        assert logic.approved_files(s, PROJECT) == []
    assert json.dumps(events(db, action="import.withdrawn")[-1]["details"])


async def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(svc, db):
    settings = svc.app.settings["sde"]  # the service's settings (SDE_IMPORT_MAX_*_BYTES)
    settings.import_max_request_bytes = "1000"
    settings.import_max_file_bytes = "500"
    svc.app.settings.pop("sde_imports", None)  # the rules are read again
    r = await upload(svc, "alice", [("big.csv", b"a,b\n" + b"1,2\n" * 600_000)])
    assert r.code == 413 and b"over the limit" in r.body, r.body[:300]
    refused = events(db, action="import.refused")[-1]
    assert refused["outcome"] == "denied" and refused["actor"] == "alice"
    # under the request limit but over the per-file one: the rules say which file
    r = await upload(svc, "alice", [("mid.csv", b"a,b\n" + b"1,2\n" * 150)])
    assert r.code == 422 and b"mid.csv is" in r.body and b"per file" in r.body
    # control: a small one passes
    imported_id(await upload(svc, "alice", [("small.csv", b"a,b\n1,2\n")]))


def test_the_policy_key_is_validated():
    from sde_spawner.registry.rules import output_policy_problems

    assert output_policy_problems({"import_required_approvals": 2}) == []
    assert [k for k, _ in output_policy_problems({"import_required_approvals": 9})] == [
        "import_required_approvals"
    ]


async def test_a_checker_revokes_an_approval_and_the_files_leave_the_layout(svc, db, tmp_path):
    iid = imported_id(await upload(svc, "alice", [("codes.csv", LOOKUP)]))
    await decide(svc, "chris", iid, "approve")
    root = str(tmp_path / "state" / "imports")
    before, files = prepare_imports(db, root, PROJECT)
    assert [f.relpath for f in files] == [f"{iid}/codes.csv"]
    # the requester cannot revoke (only a checker), a checker must say why
    r = await svc.form_post("alice", f"imports/requests/{iid}/revoke", {"comment": "oops"})
    assert r.code == 403 and b"only the checker" in r.body
    page = await svc.fetch("GET", f"imports/requests/{iid}", user="dana")
    assert b'id="revoke"' in page.body
    r = await svc.form_post("dana", f"imports/requests/{iid}/revoke", {"comment": ""})
    assert r.code == 400 and b"say why" in r.body
    r = await svc.form_post("dana", f"imports/requests/{iid}/revoke", {"comment": "licence ended"})
    assert r.code == 302 and r.headers["Location"].endswith("?done=revoked")
    after, files = prepare_imports(db, root, PROJECT)
    assert files == [] and after != before and list(after.iterdir()) == []
    assert events(db, action="import.revoked")[-1]["reason"] == "licence ended"
