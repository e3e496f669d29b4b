"""Imports end to end on the real hub: bob uploads files in Chromium on the service's page
(outside any workspace), a program renamed ``.csv`` is refused on the spot; chris, a different
person and a checker of the project, approves one import and rejects another in Chromium; bob's
real workspace container then shows the approved file under ``/imports``, read-only, and
neither the rejected nor the unreviewed import (the controls)."""

from __future__ import annotations

import re

import pytest

from sde_spawner.containers import workspace_names
from tests.browser.test_checking_e2e import login
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
SERVICE = "/services/sde/"
CODES = b"code,label\nE11,Type 2 diabetes mellitus\nE10,Type 1 diabetes mellitus\n"
HELPER = (
    b"import csv\n\n\ndef codes(path):\n"
    b"    return {r['code']: r['label'] for r in csv.DictReader(open(path))}\n"
)
REJECTED = b"code,label\nZ99,not for this project\n"
PENDING = b"code,label\nX01,still waiting\n"
# From inside the room: the workspace's own token and address cannot reach the upload page.
FROM_INSIDE = r"""
import os, urllib.error, urllib.request
req = urllib.request.Request(os.environ["SDE_SERVICE_URL"] + "imports/new", data=b"x=1",
    method="POST", headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
try:
    print(urllib.request.urlopen(req, timeout=20).status)
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode(errors="replace")[-1500:])
"""
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 500


def upload_in_browser(page, hub, files: dict[str, bytes], justification: str):
    page.goto(hub.url + SERVICE + "imports/")
    assert page.url.endswith(SERVICE + "imports/"), page.url  # after the HubOAuth round trip
    page.select_option("#project", PROJECT)
    page.set_input_files(
        "#files",
        files=[
            {"name": n, "mimeType": "application/octet-stream", "buffer": d}
            for n, d in files.items()
        ],
    )
    page.fill("#justification", justification)
    with page.expect_navigation():
        page.click("#submit-import")
    return page


def submitted_id(page) -> int:
    m = re.search(r"done=submitted-(\d+)", page.url)
    assert m, (page.url, page.content()[:2000])
    assert page.locator("#flash").is_visible()
    return int(m.group(1))


def decide_in_browser(chromium, hub, checker: str, iid: int, decision: str, comment: str = ""):
    context, page, dialogs = login(chromium, hub, checker)
    try:
        page.goto(hub.url + SERVICE + "imports/review/")
        page.click(f'tr[data-import="{iid}"] a')
        page.wait_for_url(f"**/imports/requests/{iid}")
        # the safe preview of each file, sandboxed, beside the decision form
        frame = page.frame_locator("section.file iframe").first
        frame.locator("body").wait_for()
        page.check(f'input[name="decision"][value="{decision}"]')
        page.fill('textarea[name="comment"]', comment)
        with page.expect_navigation():
            page.click("#submit-review")
        assert dialogs == []
        return page.locator("#state").inner_text()
    finally:
        context.close()


def test_upload_approve_and_see_it_read_only_under_imports(hub, chromium, docker_client):
    bob = User(hub, "bob")
    bob.ensure_stopped(PROJECT)  # approved files appear at the next start

    context, page, _dialogs = login(chromium, hub, "bob")
    try:
        # a program renamed .csv: refused at once, with the reason, and nothing is stored
        upload_in_browser(page, hub, {"tool.csv": ELF}, "a tool")
        assert "an ELF executable" in page.content() and "programs are never" in page.content()
        approved = submitted_id(
            upload_in_browser(
                page, hub, {"codes.csv": CODES, "codes.py": HELPER}, "ICD-10 diabetes code list"
            )
        )
        rejected = submitted_id(upload_in_browser(page, hub, {"other.csv": REJECTED}, "others"))
        pending = submitted_id(upload_in_browser(page, hub, {"pending.csv": PENDING}, "later"))
        # bob (also on the page as the requester) is offered no decision form on his own
        page.goto(hub.url + SERVICE + f"imports/requests/{approved}")
        assert page.locator("#submit-review").count() == 0
    finally:
        context.close()

    assert decide_in_browser(chromium, hub, "chris", approved, "approve") == "approved"
    assert decide_in_browser(chromium, hub, "chris", rejected, "reject", "not needed") == (
        "rejected"
    )

    r = bob.spawn_with_form(PROJECT, PROJECT)
    assert r.status_code == 302, r.text[-1500:]
    bob.wait_ready(PROJECT)
    ws = docker_client.containers.get(workspace_names("bob", PROJECT, hub.prefix).container)
    try:
        listing = ws.exec_run(["find", "/imports", "-mindepth", "1"]).output.decode().split()
        assert sorted(listing) == sorted(
            [
                f"/imports/{approved}",
                f"/imports/{approved}/codes.csv",
                f"/imports/{approved}/codes.py",
            ]
        )  # the control: neither the rejected nor the unreviewed import is there
        assert f"/imports/{rejected}" not in listing and f"/imports/{pending}" not in listing
        assert ws.exec_run(["cat", f"/imports/{approved}/codes.csv"]).output == CODES
        assert ws.exec_run(["cat", f"/imports/{approved}/codes.py"]).output == HELPER
        # code in the room can use it ...
        out = ws.exec_run(
            [
                "python3",
                "-c",
                f"import sys; sys.path.insert(0, '/imports/{approved}'); "
                f"import codes; print(codes.codes('/imports/{approved}/codes.csv')['E11'])",
            ]
        )
        assert out.exit_code == 0 and out.output.strip() == b"Type 2 diabetes mellitus", out
        # ... but never change it: the mount is read-only
        for cmd in (
            f"echo tampered > /imports/{approved}/codes.csv",
            f"touch /imports/{approved}/new.csv",
            "mkdir /imports/mine",
            f"rm -f /imports/{approved}/codes.py",
            f"mv /imports/{approved}/codes.csv /tmp/x",
        ):
            res = ws.exec_run(["sh", "-c", cmd])
            assert res.exit_code != 0 and b"Read-only file system" in res.output, (cmd, res)
        assert ws.exec_run(["cat", f"/imports/{approved}/codes.csv"]).output == CODES
        attempt = ws.exec_run(["python3", "-c", FROM_INSIDE]).output.decode()
        assert attempt.startswith("403") and "browser login" in attempt, attempt
        mounts = ws.exec_run(["cat", "/proc/mounts"]).output.decode().splitlines()
        imports = [m for m in mounts if m.split()[1] == "/imports"]
        assert len(imports) == 1 and "ro" in imports[0].split()[3].split(","), imports
    finally:
        bob.stop(PROJECT)

    events = hub.events(project=PROJECT)
    actions = [(e["action"], e["actor"], e["outcome"]) for e in events]
    for expected in [
        ("import.refused", "bob", "denied"),
        ("import.submitted", "bob", "allowed"),
        ("import.in_review", "chris", "allowed"),
        ("import.reviewed", "chris", "allowed"),
        ("import.approved", "system", "allowed"),
        ("import.rejected", "system", "allowed"),
        ("import.mounted", "bob", "allowed"),
    ]:
        assert expected in actions, expected
    mounted = [e for e in events if e["action"] == "import.mounted"][-1]
    assert mounted["details"]["files"] == [f"{approved}/codes.csv", f"{approved}/codes.py"]
