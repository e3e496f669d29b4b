"""Deletion at the data-deletion date: the pure planner, the blob rule, and certificates that
are signed, stored and verifiable (a tampered one is caught). Extracts and blobs are real files
here; volumes need the engine (tests/docker/test_deletion.py)."""

from __future__ import annotations

import hashlib
import json
from datetime import date

import pytest
from click.testing import CliRunner

from sde_spawner import deletion
from sde_spawner.checking.models import ExportFile, ExportRequest, ExportVersion
from sde_spawner.checking.storage import BlobStore
from sde_spawner.cli import main
from sde_spawner.datasets.extract import GrantSpec, build_extract
from sde_spawner.db import open_db
from sde_spawner.deletion import BlobRef, Deletion, Item, ProjectFacts, blobs_to_delete, plan
from sde_spawner.registry import ops
from sde_spawner.registry.models import DeletionCertificate

TODAY = date(2026, 12, 1)
FACTS = ProjectFacts("study-a", "DSA-1", date(2026, 11, 30))


def test_a_project_is_not_planned_before_its_deletion_date():
    later = ProjectFacts("study-a", "DSA-1", date(2026, 12, 2))
    assert plan(later, TODAY, volumes=["v"], extracts=["e"], blobs=["b"]) is None


def test_on_the_date_everything_found_is_planned_in_order():
    on = ProjectFacts("study-a", "DSA-1", TODAY)
    d = plan(on, TODAY, volumes=["v2", "v1"], extracts=["study-a/x"], blobs=["f" * 64])
    assert d == Deletion(
        "study-a",
        "DSA-1",
        TODAY,
        (
            Item("volume", "v1"),
            Item("volume", "v2"),
            Item("extract", "study-a/x"),
            Item("blob", "f" * 64),
        ),
    )


def test_nothing_left_and_certified_is_not_planned_again():
    certified = ProjectFacts("study-a", "DSA-1", date(2026, 1, 1), certified=True)
    assert plan(certified, TODAY, volumes=[], extracts=[], blobs=[]) is None
    # ...but data that came back after the certificate is found again
    assert plan(certified, TODAY, volumes=["v"], extracts=[], blobs=[]).items == (
        Item("volume", "v"),
    )
    # and a due project with nothing to delete still gets its (empty) certificate once
    assert plan(FACTS, TODAY, volumes=[], extracts=[], blobs=[]).items == ()


def test_the_latest_agreement_governs():
    assert deletion.governing([("A", date(2026, 1, 1)), ("B", date(2027, 1, 1))]) == (
        "B",
        date(2027, 1, 1),
    )
    assert deletion.governing([]) is None


def test_only_blobs_of_never_approved_requests_of_the_project_go():
    a, b, c, d = (ch * 64 for ch in "abcd")
    refs = [
        BlobRef(a, "study-a", "rejected"),
        BlobRef(b, "study-a", "released"),  # released: stays
        BlobRef(c, "study-a", "withdrawn"),
        BlobRef(c, "study-b", "draft"),  # the same bytes in another project: stays
        BlobRef(d, "study-a", "approved"),  # approved: stays
        BlobRef(d, "study-a", "returned"),
    ]
    assert blobs_to_delete(refs, "study-a") == [a]


def test_tree_digest_is_order_independent():
    f1 = {"path": "a", "size": 1, "sha256": "1" * 64}
    f2 = {"path": "b", "size": 2, "sha256": "2" * 64}
    assert deletion.tree_digest([f1, f2]) == deletion.tree_digest([f2, f1])
    assert deletion.tree_digest([f1]) != deletion.tree_digest([f2])


# ---- the executor on real files, the certificate, the CLI ---------------------------------
@pytest.fixture
def hub_state(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path}/r.sqlite"
    sm = open_db(db)
    source = tmp_path / "people.csv"
    source.write_text("pseudo_id,age\nP1,40\nP2,50\n")
    for op, args, kw in (
        (ops.add_project, ("study-a",), {"title": "A"}),
        (
            ops.add_agreement,
            ("study-a", "DSA-1"),
            {
                "signed": "2025-01-01",
                "start": "2025-01-01",
                "end": "2025-12-31",
                "delete_by": "2026-01-31",
            },
        ),
    ):
        ops.perform(sm, op, "admin", *args, **kw)
    extracts = tmp_path / "extracts"
    build_extract([GrantSpec("people", str(source), ("age",))], extracts / "study-a" / "alice")
    store = BlobStore.for_state_dir(tmp_path)
    kept, gone = store.put(b"released table"), store.put(b"rejected table")
    with sm() as s, s.begin():
        for state, key in (("released", kept), ("rejected", gone)):
            req = ExportRequest(project_slug="study-a", requester="alice", state=state)
            ver = ExportVersion(request=req, number=1)
            s.add(
                ExportFile(version=ver, position=0, path="t.csv", size=1, sha256=key, blob_key=key)
            )
    monkeypatch.setenv("SDE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SDE_EXTRACTS_DIR", str(extracts))
    return {"db": db, "sm": sm, "extracts": extracts, "store": store, "kept": kept, "gone": gone}


def run(db, *args):
    return CliRunner().invoke(main, ["--db", db, *args], env={"SDE_ADMIN": "dpo"})


def test_delete_due_deletes_certifies_and_is_idempotent(hub_state):
    h = hub_state
    alice = h["extracts"] / "study-a" / "alice"
    expected = {
        str(p.relative_to(alice)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in alice.rglob("*")
        if p.is_file()
    }

    dry = run(h["db"], "delete-due", "--dry-run", "--no-docker")
    assert dry.exit_code == 0, dry.output
    assert "would delete study-a (agreement DSA-1, delete by 2026-01-31):" in dry.output
    assert f"  extract study-a/alice\n  blob {h['gone']}\n" in dry.output
    assert alice.is_dir()  # a dry run deletes nothing

    real = run(h["db"], "delete-due", "--no-docker")
    assert real.exit_code == 0, real.output
    assert "certificate 1" in real.output
    assert not alice.exists() and not (h["extracts"] / "study-a").exists()
    assert not h["store"].exists(h["gone"]) and h["store"].exists(h["kept"])

    again = run(h["db"], "delete-due", "--no-docker")
    assert again.output == "nothing is due for deletion\n"

    shown = json.loads(run(h["db"], "certificates", "show", "1", "--json").output)
    body = json.loads(shown["certificate"])
    ext = next(i for i in body["deleted"] if i["kind"] == "extract")
    assert {f["path"]: f["sha256"] for f in ext["files"]} == expected
    assert ext["sha256"] == deletion.tree_digest(ext["files"])
    blob = next(i for i in body["deleted"] if i["kind"] == "blob")
    assert blob["sha256"] == h["gone"]
    assert body["agreement"] == {"reference": "DSA-1", "data_deletion_on": "2026-01-31"}
    assert body["run"]["actor"] == "dpo" and body["not_deleted"] == []
    # anyone with the public key can check the exported certificate
    from sde_spawner.checking import manifest

    assert manifest.verify(shown["public_key"], shown["certificate"], shown["signature"])
    assert run(h["db"], "certificates", "verify", "1").output == "certificate 1 verifies\n"
    listed = run(h["db"], "certificates", "list").output
    assert "study-a" in listed and "DSA-1" in listed


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: setattr(c, "body", c.body.replace('"size":', '"size":1', 1)),
        lambda c: setattr(c, "project_slug", "study-b"),
        lambda c: setattr(c, "run_id", "another-run"),
    ],
    ids=["content", "project-column", "run-column"],
)
def test_a_tampered_certificate_does_not_verify(hub_state, tamper):
    h = hub_state
    assert run(h["db"], "delete-due", "--no-docker").exit_code == 0
    with h["sm"]() as s, s.begin():
        tamper(s.get(DeletionCertificate, 1))
    res = run(h["db"], "certificates", "verify", "1")
    assert res.exit_code == 1
    assert "certificate 1 does NOT verify" in res.output


def test_a_certificate_signed_with_another_key_does_not_verify(hub_state, tmp_path):
    h = hub_state
    assert run(h["db"], "delete-due", "--no-docker").exit_code == 0
    from sde_spawner.checking import manifest

    other = manifest.load_or_create_key(tmp_path / "elsewhere")
    with h["sm"]() as s, s.begin():
        c = s.get(DeletionCertificate, 1)
        c.signature = manifest.sign(other, c.body)
        c.public_key = manifest.public_key_pem(other)
    res = run(h["db"], "certificates", "verify", "1")
    assert res.exit_code == 1 and "signature does not match" in res.output
    assert "not the service's signing key" in res.output


def test_an_item_that_cannot_be_deleted_is_listed_and_the_rest_still_goes(hub_state):
    from sde_spawner import audit

    h = hub_state
    site = deletion.Site(
        state_dir=str(h["store"].root.parent.parent), extracts_dir=str(h["extracts"])
    )
    d = Deletion(
        "study-a",
        "DSA-1",
        date(2026, 1, 31),
        (Item("volume", "no-engine-here"), Item("extract", "study-a/alice")),
    )
    res = deletion.execute(h["sm"], d, site, actor="dpo", run_id="r1")
    assert [i["name"] for i in res.deleted] == ["study-a/alice"]
    assert [i["name"] for i in res.not_deleted] == ["no-engine-here"]
    with h["sm"]() as s:
        ev = audit.query(s)[-1]
        assert (ev.action, ev.outcome) == ("deletion.completed", "error")
        body = json.loads(s.get(DeletionCertificate, res.certificate_id).body)
    assert body["not_deleted"][0]["name"] == "no-engine-here"
