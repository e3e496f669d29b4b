"""Safe outputs end to end on the real hub: alice's real workspace asks to export a CSV and a
notebook (with a hostile script output); chris and dana review them independently in Chromium;
alice downloads the release outside her workspace and checks bytes, hashes and the signed
manifest. Along the way: edits in the workspace after submission change nothing, the
workspace's token can neither approve nor download, and the notebook's script never runs."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from sde_spawner.checking import manifest
from sde_spawner.containers import workspace_names
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
SERVICE = "/services/sde/"

CSV = b"region,patients,mean_hba1c\nnorth,120,52.1\nsouth,98,49.8\neast,143,51.0\n"
EDITED_CSV = CSV + b"west,4,61.2\n"
NOTEBOOK = json.dumps(
    {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            {
                "cell_type": "markdown",
                "id": "m1",
                "metadata": {},
                "source": "# HbA1c by region\nMeans of the minimum dataset, n > 10 per cell.",
            },
            {
                "cell_type": "code",
                "id": "c1",
                "metadata": {},
                "execution_count": 1,
                "source": "summary = df.groupby('region').hba1c.mean()\ndisplay(HTML(table))",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "text/html": (
                                "<script>document.title='pwned';alert('xss')</script>"
                                "<img src=x onerror=\"document.title='pwned';alert('img')\">"
                                "<table><tr><th>region</th><th>mean</th></tr>"
                                "<tr><td>north</td><td>52.1</td></tr></table>"
                            ),
                            "application/javascript": "document.title='pwned'; alert('js')",
                            "text/plain": "<HTML>",
                        },
                    }
                ],
            },
        ],
    },
    indent=1,
).encode()
FILES = {"results/summary.csv": CSV, "analysis.ipynb": NOTEBOOK}

# Runs inside alice's container with its own environment: writes the files into her home,
# then asks the sde service for an export with the workspace's own server token.
IN_WORKSPACE = r"""
import base64, hashlib, json, os, sys, urllib.error, urllib.parse, urllib.request
base = os.environ["SDE_SERVICE_URL"]
auth = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
cmd, arg = sys.argv[1], json.loads(sys.argv[2])

def call(method, url, data=None, ctype="application/json", anonymous=False):
    headers = {"Content-Type": ctype, **({} if anonymous else auth)}
    req = urllib.request.Request(urllib.parse.urljoin(base, url), data=data, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

def write(files):
    for path, b64 in files.items():
        full = os.path.join(os.path.expanduser("~"), path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(base64.b64decode(b64))

if cmd == "export":
    write(arg)
    home = os.path.expanduser("~")
    files = []
    for path in arg:
        data = open(os.path.join(home, path), "rb").read()
        files.append({"path": path, "description": "for the paper", "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    body = {"justification": "Table 2 (HbA1c by region) and the notebook that makes it",
            "files": files}
    status, out = call("POST", "api/exports", json.dumps(body).encode())
    assert status == 201, (status, out)
    created = json.loads(out)
    for up, path in zip(created["uploads"], arg):
        data = open(os.path.join(home, path), "rb").read()
        status, out = call("PUT", up["url"], data, "application/octet-stream")
        assert status == 200, (status, out)
    status, out = call("POST", "api/exports/%d/submit" % created["id"])
    assert status == 200, (status, out)
    print(json.dumps({"id": created["id"]}))
elif cmd == "write":
    write(arg)
    print(json.dumps({"ok": True}))
elif cmd == "call":
    status, out = call(arg["method"], arg["url"], (arg.get("body") or "").encode() or None,
                       "application/x-www-form-urlencoded", arg.get("anonymous", False))
    print(json.dumps({"status": status, "body": out.decode(errors="replace")[:50000]}))
"""


def in_workspace(container, cmd: str, arg) -> dict:
    res = container.exec_run(["python3", "-c", IN_WORKSPACE, cmd, json.dumps(arg)])
    out = res.output.decode()
    assert res.exit_code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def b64(files: dict[str, bytes]) -> dict[str, str]:
    return {p: base64.b64encode(d).decode() for p, d in files.items()}


@pytest.fixture(scope="module")
def alice_ws(hub, docker_client):
    alice = User(hub, "alice")
    info = alice.server(PROJECT)
    if not (info and info["ready"]):
        assert alice.spawn_with_form(PROJECT, PROJECT).status_code == 302
        alice.wait_ready(PROJECT)
    return docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)


def login(chromium, hub, name: str):
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(hub.url + "/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", "demo")
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)
    return context, page, dialogs


def review_in_browser(chromium, hub, checker: str, rid: int, screenshot: str | None = None):
    context, page, dialogs = login(chromium, hub, checker)
    try:
        page.goto(hub.url + SERVICE + "checking/")  # HubOAuth round trip, then the queue
        assert page.url.endswith(SERVICE + "checking/"), (page.url, hub.log_tail(20))
        page.click(f'tr[data-request="{rid}"] a')
        page.wait_for_url(f"**/checking/requests/{rid}")
        page.click("#claim")
        page.wait_for_selector("#submit-review")
        title = page.title()
        assert title == f"Request {rid} · SDE"

        sections = page.locator("section.file")
        assert sections.count() == 2
        previews = {}
        for i in range(2):
            section = sections.nth(i)
            path = section.locator(".path").inner_text()
            frame = section.frame_locator("iframe")
            frame.locator("body").wait_for()
            previews[path] = frame
        # automated disclosure checks beside each preview: the CSV's counts (patients) are all
        # over 10, its means need a dominance check by a person
        checks = {
            sections.nth(i).locator(".path").inner_text(): sections.nth(i).locator(".sdc")
            for i in range(2)
        }
        assert checks["results/summary.csv"].get_attribute("data-status") == "review"
        assert "dominance" in checks["results/summary.csv"].inner_text()
        assert checks["analysis.ipynb"].is_visible()
        # the CSV is the snapshot taken at submission, not the file as edited afterwards
        csv_frame = previews["results/summary.csv"]
        assert csv_frame.locator("p.meta").inner_text().endswith("3 rows × 3 columns")
        assert csv_frame.locator("tbody tr").count() == 3
        assert "west" not in csv_frame.locator("body").inner_text()
        # the notebook renders; its script and handlers are gone and never ran
        nb_frame = previews["analysis.ipynb"]
        assert "HbA1c by region" in nb_frame.locator("body").inner_text()
        assert nb_frame.locator("table").count() >= 1
        assert nb_frame.locator("script").count() == 0
        assert nb_frame.locator("[onerror]").count() == 0
        assert nb_frame.locator("title").inner_text() == "analysis.ipynb"
        for frame in page.frames[1:]:
            assert frame.title() != "pwned"
        assert page.title() == title and dialogs == []

        if screenshot:  # a viewport tall enough that the (out-of-process) previews are painted
            page.set_viewport_size({"width": 1280, "height": 2000})
            page.wait_for_timeout(300)
            page.screenshot(path=screenshot, full_page=True)
        for i in range(2):
            sections.nth(i).locator('input[value="approve"]').check()
        # The notebook's (inert) script fails the automated `script` rule: approving it takes
        # the checker's comment, as every override does.
        assert page.locator('.sdc[data-status="fail"] [data-rule="script"]').count() == 1
        for area in page.locator("textarea[name^=comment-]").all():
            area.fill("seen in the preview: the script is inert and holds no data")
        page.click("#submit-review")
        page.wait_for_selector("#flash")
        assert page.title() == title and dialogs == []
        return page.locator("#state").inner_text()
    finally:
        context.close()


def test_export_review_release_end_to_end(hub, alice_ws, chromium):
    # 1. in alice's workspace: write the files and request their export (server token)
    rid = in_workspace(alice_ws, "export", b64(FILES))["id"]
    # 2. edit the CSV after submission: nobody must ever see or receive the edit
    in_workspace(alice_ws, "write", b64({"results/summary.csv": EDITED_CSV}))
    assert alice_ws.exec_run(["cat", "results/summary.csv"]).output == EDITED_CSV

    # 3. the workspace's token cannot act as a checker
    attempt = in_workspace(
        alice_ws,
        "call",
        {"method": "POST", "url": f"checking/requests/{rid}/review", "body": "version=1"},
    )
    assert attempt["status"] == 403 and "browser login" in attempt["body"], attempt
    # ... and a workspace gets no page at all, logged in or not (pages come via the proxy)
    attempt = in_workspace(alice_ws, "call", {"method": "GET", "url": "checking/", "anonymous": 1})
    assert attempt["status"] == 403 and "through the hub&#x27;s proxy" in attempt["body"], attempt

    # 4. two independent reviews in Chromium
    assert review_in_browser(chromium, hub, "chris", rid, "/tmp/checking-request.png") == (
        "in review"
    )
    assert review_in_browser(chromium, hub, "dana", rid) == "approved"

    # 5. the workspace token cannot download the release, even now
    releases = User(hub, "alice")
    page = releases.s.get(hub.url + SERVICE + "releases/", timeout=30)  # HubOAuth redirects
    assert page.status_code == 200 and page.url.endswith(SERVICE + "releases/"), page.url
    # outside, requests go by the requester's own number (the newest is listed first)
    number = int(re.search(r'id="request-(\d+)"', page.text).group(1))
    links = re.findall(rf'href="({SERVICE}releases/{number}/files/\d+)"', page.text)
    assert len(links) == 2
    attempt = in_workspace(alice_ws, "call", {"method": "GET", "url": links[0]})
    assert attempt["status"] == 403 and "browser login" in attempt["body"], attempt

    # 6. alice downloads outside the workspace: the approved snapshot, byte for byte
    got = {}
    for link in links:
        r = releases.s.get(hub.url + link, timeout=30)
        assert r.status_code == 200, r.text
        name = re.search(r'filename="([^"]+)"', r.headers["Content-Disposition"]).group(1)
        got[name] = r.content
        assert r.headers["X-SDE-SHA256"] == hashlib.sha256(r.content).hexdigest()
    assert got == {"summary.csv": CSV, "analysis.ipynb": NOTEBOOK}

    text = releases.s.get(hub.url + SERVICE + f"releases/{number}/manifest.json", timeout=30).text
    sig = releases.s.get(hub.url + SERVICE + f"releases/{number}/manifest.sig", timeout=30).text
    key = releases.s.get(hub.url + SERVICE + "api/release-key", timeout=30).json()
    assert manifest.verify(key["public_key_pem"], text, sig.strip())
    m = json.loads(text)
    assert (m["request"], m["project"], m["requester"]) == (number, PROJECT, "alice")
    assert {f["path"]: f["sha256"] for f in m["files"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in FILES.items()
    }
    assert [r["checker"] for r in m["reviews"]] == ["chris", "dana"]
    forged = text.replace(hashlib.sha256(CSV).hexdigest(), hashlib.sha256(EDITED_CSV).hexdigest())
    assert not manifest.verify(key["public_key_pem"], forged, sig.strip())

    # 7. the audit trail tells the story, including the refusals
    events = hub.events(project=PROJECT)
    actions = [(e["action"], e["actor"], e["outcome"]) for e in events]
    for expected in [
        ("export.created", "alice", "allowed"),
        ("export.submitted", "alice", "allowed"),
        ("export.claimed", "chris", "allowed"),
        ("export.in_review", "chris", "allowed"),
        ("export.reviewed", "chris", "allowed"),
        ("export.reviewed", "dana", "allowed"),
        ("export.approved", "system", "allowed"),
        ("export.released", "alice", "allowed"),
        ("export.release.downloaded", "alice", "allowed"),
    ]:
        assert expected in actions, expected
    denied = [
        e for e in hub.events(actor="alice", outcome="denied") if e["action"].startswith("export.")
    ]
    assert {e["action"] for e in denied} >= {"export.reviewed", "export.release.downloaded"}


def test_the_export_page_checks_files_and_submits_in_the_workspace(hub, alice_ws, chromium):
    """alice's own export page in Chromium: picking a file runs the checkers' automated
    disclosure checks on it in her workspace; a clean file is then submitted from the page."""
    files = {
        "out/small.csv": b"region,patients\nnorth,120\nsouth,4\n",
        "out/clean.csv": b"region,patients\nnorth,120\nsouth,98\n",
    }
    in_workspace(alice_ws, "write", b64(files))
    context, page, dialogs = login(chromium, hub, "alice")
    try:
        page.goto(f"{hub.url}/user/alice/{PROJECT}/egress/")
        rows = {}
        for path in files:
            page.locator("#files label", has_text=path).wait_for()
            rows[path] = page.locator("#files tr", has=page.locator("label", has_text=path))
        rows["out/small.csv"].locator("input[type=checkbox]").check()
        checks = rows["out/small.csv"].locator(".checks[data-status]")
        checks.wait_for()
        assert checks.get_attribute("data-status") == "fail"
        assert "1 cell under the threshold of 10 (row 2: 4)" in checks.inner_text()
        rows["out/small.csv"].locator("input[type=checkbox]").uncheck()

        rows["out/clean.csv"].locator("input[type=checkbox]").check()
        clean = rows["out/clean.csv"].locator(".checks[data-status]")
        clean.wait_for()
        assert clean.get_attribute("data-status") == "pass"
        rows["out/clean.csv"].locator("input[type=text]").fill("patients by region")
        page.fill("#justification", "Table 1 of the paper: patients by region, all cells >= 10")
        page.click("#submit")
        page.wait_for_selector("#message.ok")
        rid = int(re.search(r"Request (\d+) submitted", page.inner_text("#message")).group(1))
        page.locator("#requests td", has_text="out/clean.csv").wait_for()
        assert dialogs == []
    finally:
        context.close()
    status = in_workspace(alice_ws, "call", {"method": "GET", "url": "api/exports"})
    listed = {r["id"]: r for r in json.loads(status["body"])["requests"]}
    assert listed[rid]["state"] == "submitted"
    assert [f["path"] for f in listed[rid]["files"]] == ["out/clean.csv"]
