"""Deletion at the data-deletion date on the real engine: a project whose deletion date has
passed loses its home volume and extracts; the signed certificate lists them with the hashes of
what was there; a tampered certificate is caught. The spawn page shows an expiry notice."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

import docker
import pytest

from sde_spawner.containers import WORKSPACE_HOME, escape, workspace_names
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "old-study"
NOTE = "results I worked on\n"


def admin(hub, *args):
    res = hub.admin(*args)
    assert res.returncode == 0, res.stderr + res.stdout
    return res


@pytest.fixture(scope="module")
def dora(hub):
    for args in (
        ["person", "add", "dora", "--name", "Dora", "--training-expires", "2030-01-01"],
        [
            "project",
            "add",
            PROJECT,
            "--title",
            "Old study",
            "--ethics-ref",
            "REC-9",
            "--lay-summary",
            "s",
            "--public-benefit",
            "b",
            "--organisation",
            "Org",
            "--organisation-kind",
            "nhs",
        ],
        [
            "agreement",
            "add",
            PROJECT,
            "DSA-OLD",
            "--signed",
            "2026-01-01",
            "--start",
            "2026-01-01",
            "--end",
            "2030-12-31",
            "--delete-by",
            "2031-01-31",
        ],
        [
            "project",
            "approve",
            PROJECT,
            "--dac-ref",
            "DAC-OLD",
            "--dac-date",
            "2026-01-01",
            "--lay-member",
            "L",
            "--lay-member-date",
            "2026-01-01",
        ],
        ["member", "add", PROJECT, "dora", "--role", "researcher"],
        ["grant", "add", PROJECT, "dora", "patients", "--columns", "pseudonym,age"],
    ):
        admin(hub, *args)
    user = User(hub, "dora")
    assert user.logged_in, hub.log_tail()
    return user


def test_data_past_its_deletion_date_is_deleted_and_certified(hub, dora, docker_client):
    names = workspace_names("dora", PROJECT, hub.prefix)
    dora.ensure_running(PROJECT)
    ws = docker_client.containers.get(names.container)
    code = f"open({WORKSPACE_HOME + '/note.txt'!r}, 'w').write({NOTE!r})"
    assert ws.exec_run(["python3", "-c", code]).exit_code == 0
    dora.stop(PROJECT)
    extract = hub.state_dir / "extracts" / PROJECT / escape("dora")
    before = {
        str(p.relative_to(extract)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in extract.rglob("*")
        if p.is_file()
    }
    assert any(name.endswith("/patients.parquet") for name in before), before
    assert docker_client.volumes.get(names.home_volume)

    # Not due yet: nothing to delete (another project's data is never touched either).
    assert PROJECT not in admin(hub, "delete-due", "--dry-run").stdout
    admin(
        hub,
        "agreement",
        "add",
        PROJECT,
        "DSA-OLD",
        "--signed",
        "2025-01-01",
        "--start",
        "2025-01-01",
        "--end",
        "2025-12-31",
        "--delete-by",
        "2026-01-31",
    )
    dry = admin(hub, "delete-due", "--dry-run").stdout
    assert f"would delete {PROJECT} (agreement DSA-OLD, delete by 2026-01-31):" in dry
    assert f"  volume {names.home_volume}\n" in dry and f"  extract {PROJECT}/dora\n" in dry
    assert "diabetes-outcomes" not in dry

    run = admin(hub, "delete-due").stdout
    cert = re.search(rf"deleted {PROJECT} .*: certificate (\d+)", run)
    assert cert, run
    cert = cert.group(1)
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(names.home_volume)
    assert not extract.exists()
    assert PROJECT not in admin(hub, "delete-due").stdout  # a second run finds nothing

    shown = json.loads(admin(hub, "certificates", "show", cert, "--json").stdout)
    body = json.loads(shown["certificate"])
    items = {(i["kind"], i["name"]): i for i in body["deleted"]}
    vol = items[("volume", names.home_volume)]
    files = {f["path"]: f["sha256"] for f in vol["files"]}
    assert files["note.txt"] == hashlib.sha256(NOTE.encode()).hexdigest()
    ext = items[("extract", f"{PROJECT}/dora")]
    assert {f["path"]: f["sha256"] for f in ext["files"]} == before
    assert body["agreement"]["reference"] == "DSA-OLD" and body["not_deleted"] == []
    assert admin(hub, "certificates", "verify", cert).stdout == f"certificate {cert} verifies\n"
    ev = hub.events(action="deletion.completed")[-1]
    assert ev["project"] == PROJECT and ev["details"]["certificate"] == int(cert)

    # Tamper with the stored certificate: claim a different hash for the note.
    db = sqlite3.connect(hub.db_url.removeprefix("sqlite:///"))
    with db:
        db.execute(
            "UPDATE deletion_certificate SET body = replace(body, ?, ?) WHERE id = ?",
            (files["note.txt"], "0" * 64, int(cert)),
        )
    db.close()
    res = hub.admin("certificates", "verify", cert)
    assert res.returncode == 1 and "does NOT verify" in res.stderr


def test_the_spawn_page_warns_of_training_ending_soon(hub):
    from datetime import date, timedelta

    soon = (date.today() + timedelta(days=10)).isoformat()
    admin(hub, "person", "add", "gina", "--training-expires", soon)
    admin(hub, "member", "add", "diabetes-outcomes", "gina", "--role", "researcher")
    page = User(hub, "gina").spawn_page("diabetes-outcomes").text
    assert 'id="sde-notices"' in page
    assert f"Your data protection training expires in 10 days, on {soon}." in page


def test_the_registry_overview_is_for_admins_only(hub):
    page = User(hub, "admin").s.get(f"{hub.url}/services/sde/admin/", timeout=30)
    assert page.status_code == 200, page.text[:500]
    assert "<td>diabetes-outcomes</td>" in page.text and "<td>DSA-017</td>" in page.text
    r = User(hub, "alice").s.get(f"{hub.url}/services/sde/admin/", timeout=30)
    assert r.status_code == 403
    ev = hub.events(action="admin.page.refused")[-1]
    assert (ev["actor"], ev["outcome"]) == ("alice", "denied")
