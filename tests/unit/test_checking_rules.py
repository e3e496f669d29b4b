"""The export rules enforced by the service itself, over real HTTP (tornado, in-process).

A workspace can call ``api/exports`` directly with its own token (from a terminal or a
kernel), past the extension's checks. So the service applies the airlock's rules
(:mod:`sde_airlock.rules`) at create, and checks the bytes of every upload as they arrive
(:mod:`sde_airlock.filetypes`): each refusal is a 4xx with its code and every problem, an
audited denial, and nothing of the refused bytes is stored. The controls (a real CSV the same
way) show that each probe would see a breach if the rule were gone.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from sde_spawner.checking.storage import BlobStore
from sde_spawner.checking.testing import (
    PROJECT,
    FakeHubOAuth,
    make_db,
    open_workspace,
    server_token_model,
    sha256,
)
from tests.unit.test_checking_handlers import (
    NOTEBOOK,
    Service,
    body_of,
    events,
    png_bytes,
    text_bytes,
)

CSV = b"region,n\nnorth,120\nsouth,98\n"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 2000


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("patients.csv", "nhs_number,hba1c\n9434765919,71\n")
    return out.getvalue()


@pytest.fixture
def hub_auth():
    return FakeHubOAuth({"ws-alice": server_token_model("alice", PROJECT)})


@pytest.fixture
def db(tmp_path):
    Session = make_db(tmp_path)
    open_workspace(Session, "alice", PROJECT)
    return Session


@pytest.fixture
async def svc(tmp_path, db, hub_auth):
    s = Service(tmp_path, hub_auth)
    yield s
    await s.stop()


def stored(svc: Service) -> list[Path]:
    """Every file in the blob store, kept or temporary."""
    return [p for p in Path(svc.settings.state_dir).glob("exports/blobs/**/*") if p.is_file()]


async def create(svc: Service, files: dict[str, bytes], **body) -> tuple[int, dict]:
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body={**body_of(files), **body})
    return r.code, json.loads(r.body)


async def upload(svc: Service, rid: int, index: int, data: bytes) -> tuple[int, dict]:
    r = await svc.fetch("PUT", f"api/exports/{rid}/files/{index}", token="ws-alice", body=data)
    return r.code, json.loads(r.body)


async def test_a_program_by_name_is_refused_at_create_with_its_reason_and_audited(svc, db):
    code, body = await create(svc, {"tool.exe": ELF})
    assert (code, body["code"]) == (400, "type_not_allowed"), body
    assert "tool.exe: files of type .exe may not be exported under any policy" in body["message"]
    (denied,) = events(db, action="export.created", outcome="denied")
    assert denied["actor"] == "alice" and denied["project"] == PROJECT
    assert denied["details"]["code"] == "type_not_allowed"
    assert denied["details"]["problems"][0]["path"] == "tool.exe"
    assert json.loads((await svc.fetch("GET", "api/exports", token="ws-alice")).body) == {
        "requests": []
    }
    # control: the same request with a CSV is created
    code, body = await create(svc, {"results.csv": CSV})
    assert code == 201, body


async def test_create_names_every_broken_rule_at_once(svc, db, monkeypatch):
    files = {f"t{i}.csv": CSV for i in range(21)}  # the limit is 20
    payload = body_of(files)
    payload["justification"] = ""
    payload["files"][0]["path"] = "../data/patients.csv"
    payload["files"][1]["description"] = "x" * 5001
    payload["files"][2]["size"] = 201 * 1024 * 1024
    payload["files"][3]["path"] = "cohort.sqlite"
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=payload)
    body = json.loads(r.body)
    assert r.code == 400
    assert [(p["code"], p["path"]) for p in body["problems"]] == [
        ("justification", ""),
        ("too_many_files", ""),
        ("bad_path", "../data/patients.csv"),
        ("description", "t1.csv"),
        ("too_large", "t2.csv"),
        ("type_not_allowed", "cohort.sqlite"),
    ]
    assert body["message"].startswith("6 problems: a justification is required")
    (denied,) = events(db, action="export.created", outcome="denied")
    assert denied["reason"] == body["message"]


async def test_an_elf_uploaded_as_results_csv_is_refused_and_never_stored(svc, db):
    code, created = await create(svc, {"results.csv": ELF})
    assert code == 201, created  # the name and size are fine: the bytes decide
    code, body = await upload(svc, created["id"], 0, ELF)
    assert (code, body["code"]) == (422, "type_mismatch"), body
    assert [p["code"] for p in body["problems"]] == ["type_mismatch", "executable"]
    assert "the bytes are an ELF executable" in body["message"]
    (denied,) = events(db, action="export.file.uploaded", outcome="denied")
    details = denied["details"]
    assert (details["code"], details["detected"], details["path"]) == (
        "type_mismatch",
        "elf",
        "results.csv",
    )
    assert stored(svc) == []
    r = await svc.fetch("POST", f"api/exports/{created['id']}/submit", token="ws-alice")
    assert r.code == 409 and b"not uploaded yet" in r.body


async def test_a_zip_uploaded_as_table_png_is_refused(svc, db):
    data = zip_bytes()
    code, created = await create(svc, {"table.png": data})
    assert code == 201
    code, body = await upload(svc, created["id"], 0, data)
    assert (code, [p["code"] for p in body["problems"]]) == (422, ["type_mismatch", "archive"])
    assert stored(svc) == []
    (denied,) = events(db, action="export.file.uploaded", outcome="denied")
    assert denied["details"]["detected"] == "zip"


async def test_a_notebook_that_is_not_json_is_refused_at_completion(svc, db):
    data = NOTEBOOK[:-5]  # valid UTF-8 all along; only the whole shows it does not parse
    code, created = await create(svc, {"analysis.ipynb": data})
    code, body = await upload(svc, created["id"], 0, data)
    assert (code, body["code"]) == (422, "type_mismatch"), body
    assert "the bytes are not valid JSON" in body["message"]
    assert stored(svc) == []  # checked before the blob was kept
    # control: the whole notebook goes in
    code, created = await create(svc, {"analysis.ipynb": NOTEBOOK})
    assert (await upload(svc, created["id"], 0, NOTEBOOK))[0] == 200


async def test_a_large_program_is_refused_from_its_first_bytes(svc, db):
    data = ELF + text_bytes(6 * 1024 * 1024)  # several pieces after the magic number
    code, created = await create(svc, {"big.csv": data})
    code, body = await upload(svc, created["id"], 0, data)
    assert (code, body["code"]) == (422, "type_mismatch")
    assert stored(svc) == []


async def test_the_control_real_files_are_accepted_and_submitted(svc, db):
    files = {"out/results.csv": CSV, "fig.png": png_bytes(), "analysis.ipynb": NOTEBOOK}
    code, created = await create(svc, files)
    assert code == 201
    for index, data in enumerate(files.values()):
        code, body = await upload(svc, created["id"], index, data)
        assert (code, body["sha256"]) == (200, sha256(data)), body
    r = await svc.fetch("POST", f"api/exports/{created['id']}/submit", token="ws-alice")
    assert r.code == 200 and json.loads(r.body)["state"] == "submitted"
    store = BlobStore.for_state_dir(svc.settings.state_dir)
    assert all(store.exists(sha256(d)) for d in files.values())
    assert events(db, outcome="denied") == []


async def test_the_rules_are_the_services_settings(tmp_path, db, hub_auth, monkeypatch):
    monkeypatch.setenv("SDE_EXPORT_ALLOWED_TYPES", ".csv")
    monkeypatch.setenv("SDE_EXPORT_MAX_FILES", "1")
    svc = Service(tmp_path, hub_auth)
    try:
        code, body = await create(svc, {"fig.png": png_bytes(), "a.csv": CSV})
        assert code == 400
        assert [p["code"] for p in body["problems"]] == ["too_many_files", "type_not_allowed"]
        assert "(allowed: .csv)" in body["message"]
        assert (await create(svc, {"a.csv": CSV}))[0] == 201
    finally:
        await svc.stop()


async def test_a_type_the_settings_stopped_allowing_is_refused_at_upload(tmp_path, db, hub_auth):
    first = Service(tmp_path, hub_auth)
    try:
        code, created = await create(first, {"fig.png": png_bytes()})
        assert code == 201
    finally:
        await first.stop()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDE_EXPORT_ALLOWED_TYPES", ".csv")
        svc = Service(tmp_path, hub_auth)
        try:
            code, body = await upload(svc, created["id"], 0, png_bytes())
            assert (code, body["code"]) == (422, "type_not_allowed"), body
            assert stored(svc) == []
        finally:
            await svc.stop()
