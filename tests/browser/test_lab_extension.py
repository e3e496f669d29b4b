"""The researcher's JupyterLab in Chromium, in alice's real workspace behind the real hub,
proxy and `sde` service.

alice opens JupyterLab: the welcome page greets her and no news prompt appears; "My data"
shows her extract's dictionary; she right-clicks a file, chooses "Request export…", sees the
automated checks and submits; the Exports panel shows the request, and its state changes when
chris, a checker, claims it on the checking pages. Copying from a notebook cell is blocked (the
browser's clipboard keeps what it had) and lands in the hub's audit trail as
``clipboard.copy_blocked``; pasting in still works. The rule is the project's: with
``clipboard_out = "allow"`` in its output policy her next workspace lets the copy through.
Every request the page made, HTTP and websocket, went to the hub's own origin.
"""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import urlsplit

import pytest

from sde_spawner.containers import workspace_names
from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
SERVICE = "/services/sde/"
HOME = "/home/researcher"
MENU_ITEM = "Request export…"


def details(event: dict) -> dict:
    d = event.get("details") or {}
    return json.loads(d) if isinstance(d, str) else d


@pytest.fixture(scope="module")
def alice_ws(hub, docker_client):
    alice = User(hub, "alice")
    assert alice.logged_in, hub.log_tail()
    alice.ensure_running(PROJECT)
    return docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)


def write(container, path: str, data: str) -> None:
    code = (
        "import os,sys; p=os.path.join(os.path.expanduser('~'), sys.argv[1]); "
        "os.makedirs(os.path.dirname(p), exist_ok=True); open(p,'w').write(sys.argv[2])"
    )
    res = container.exec_run(["python3", "-c", code, path, data], workdir=HOME)
    assert res.exit_code == 0, res.output


class Seen:
    """Every request and websocket a browser context opens."""

    def __init__(self, context):
        self.urls: list[str] = []
        self.failed: list[str] = []  # for the failure messages
        context.on("request", lambda request: self.urls.append(request.url))
        context.on(
            "response",
            lambda r: r.status >= 400 and self.failed.append(f"{r.status} {r.url}"),
        )
        context.on("requestfailed", lambda r: self.failed.append(f"{r.failure} {r.url}"))
        context.on("page", self.watch)

    def watch(self, page) -> None:
        page.on("websocket", lambda ws: self.urls.append(ws.url))

    def elsewhere(self, origin: str) -> list[str]:
        """URLs that left for anywhere but ``origin`` (ws:// of the same host and port is the
        same origin; data: and blob: URLs never leave the page)."""
        ok = urlsplit(origin)
        out = []
        for url in self.urls:
            u = urlsplit(url)
            if u.scheme in ("data", "blob"):
                continue
            same = u.netloc == ok.netloc and u.scheme in (
                ok.scheme,
                "ws" if ok.scheme == "http" else "wss",
            )
            if not same:
                out.append(url)
        return out


def login(chromium, hub, name: str, **context_args):
    context = chromium.new_context(viewport={"width": 1400, "height": 900}, **context_args)
    seen = Seen(context)
    page = context.new_page()
    page.goto(hub.url + "/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", "demo")
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)
    return context, page, seen


def open_lab(page, hub, path: str = "") -> None:
    page.goto(f"{hub.url}/user/alice/{PROJECT}/lab{'/tree/' + path if path else ''}")
    page.locator(".jp-DirListing-content").wait_for(timeout=60_000)


def claim(chromium, hub, checker: str, rid: int) -> None:
    context, page, _ = login(chromium, hub, checker)
    try:
        page.goto(hub.url + SERVICE + "checking/")
        page.click(f'tr[data-request="{rid}"] a')
        page.wait_for_url(f"**/checking/requests/{rid}")
        page.click("#claim")
        page.wait_for_selector("#submit-review")
    finally:
        context.close()


def test_request_an_export_from_the_file_browser_and_follow_it(hub, alice_ws, chromium):
    name = f"lab-{uuid.uuid4().hex[:6]}.csv"
    write(alice_ws, name, "region,patients\nnorth,120\nsouth,98\n")
    context, page, seen = login(chromium, hub, "alice")
    try:
        open_lab(page, hub)
        page.wait_for_timeout(1000)
        assert page.locator(".jp-Dialog").count() == 0, (
            page.locator(".jp-Dialog").inner_text(),
            seen.failed,
        )
        # a new home: the welcome page says what the room is; no news prompt from outside
        welcome = page.locator("#sde-welcome")
        welcome.wait_for()
        assert "no internet" in welcome.inner_text() and "/data" in welcome.inner_text()
        page.wait_for_timeout(2000)  # JupyterLab asks about news soon after start, if at all
        assert page.get_by_text("official Jupyter news").count() == 0

        # My data: the extract's dictionary
        page.click('.jp-SideBar li[data-id="sde-data"]')
        dataset = page.locator("#sde-data .sde-dataset").first
        dataset.wait_for()
        assert dataset.locator(".sde-columns tr[data-column]").count() >= 2
        assert "rows" in dataset.locator(".sde-rows").inner_text()
        assert page.locator("#sde-data .sde-data-files li").count() >= 1
        assert "data/" in page.locator("#sde-data .sde-browser-path").inner_text()

        # right-click the file: "Request export…"; the dialog runs the automated checks
        page.click('.jp-SideBar li[data-id="filebrowser"]')
        # ... which shows the extract too, as the (read-only) folder data/
        data_folder = page.locator('.jp-DirListing-item[data-isdir="true"]', has_text="data")
        assert data_folder.count() == 1
        item = page.locator(".jp-DirListing-item", has=page.locator(f'text="{name}"'))
        item.click()
        item.click(button="right")
        page.locator(".lm-Menu-item", has_text=MENU_ITEM).click()
        form = page.locator(".sde-request-form")
        form.wait_for()
        checks = form.locator(".sde-checks[data-status]")
        checks.wait_for()
        assert checks.get_attribute("data-status") == "pass", checks.inner_text()
        form.locator(".sde-description").fill("patients by region")
        form.locator("#sde-justification").fill("Table 1: patients by region, all cells >= 10")
        page.locator(".jp-Dialog button.jp-mod-accept").click()

        message = page.locator("#sde-exports .sde-message.sde-ok")
        message.wait_for()
        rid = int(re.search(r"Request (\d+) submitted", message.inner_text()).group(1))
        card = page.locator(f'#sde-exports .sde-request[data-request="{rid}"]')
        assert card.locator(".sde-state").inner_text() == "submitted"
        assert card.locator(f'li[data-path="{name}"]').count() == 1

        # a checker claims it; the panel (polling) shows the new state
        claim(chromium, hub, "chris", rid)
        page.locator(
            f'#sde-exports .sde-request[data-request="{rid}"] .sde-state[data-state="in_review"]'
        ).wait_for(timeout=30_000)
    finally:
        context.close()
    (created,) = [
        e for e in hub.events(action="export.submitted") if details(e).get("request") == rid
    ]
    assert created["actor"] == "alice"
    assert seen.urls and seen.elsewhere(hub.url) == [], seen.elsewhere(hub.url)


NOTEBOOK = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    "cells": [
        {
            "cell_type": "code",
            "id": "c1",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": "row_level_value = 'NHS-SECRET-4242'",
        }
    ],
}


def test_copying_out_of_a_notebook_is_blocked_and_audited(hub, alice_ws, chromium):
    name = f"copy-{uuid.uuid4().hex[:6]}.ipynb"
    write(alice_ws, name, json.dumps(NOTEBOOK))
    context, page, seen = login(
        chromium, hub, "alice", permissions=["clipboard-read", "clipboard-write"]
    )
    try:
        # control: on a hub page (no JupyterLab) the same keys do copy, and the probe sees it
        page.evaluate(
            "document.body.insertAdjacentHTML('beforeend', '<p id=probe>hub-page-text</p>')"
        )
        page.evaluate(
            "(() => { const r = document.createRange();"
            " r.selectNodeContents(document.getElementById('probe'));"
            " getSelection().removeAllRanges(); getSelection().addRange(r); })()"
        )
        page.keyboard.press("Control+c")
        assert page.evaluate("navigator.clipboard.readText()") == "hub-page-text"
        # the clipboard holds something from before (written on the hub's own page)
        page.evaluate("navigator.clipboard.writeText('from-outside')")
        open_lab(page, hub, name)
        editor = page.locator(".jp-Cell .cm-content >> visible=true").first
        editor.wait_for(timeout=60_000)
        assert page.evaluate("document.body.dataset.sdeClipboard") == "blocked"
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.press("Control+c")
        page.locator(".jp-toast-message", has_text="Copying out").first.wait_for()
        assert page.evaluate("navigator.clipboard.readText()") == "from-outside"
        # a script's copy (navigator.clipboard) is refused as well
        refused = page.evaluate(
            "navigator.clipboard.writeText('NHS-SECRET-4242').then(() => 'written', e => e.name)"
        )
        assert refused == "NotAllowedError"
        assert page.evaluate("navigator.clipboard.readText()") == "from-outside"
        # pasting in works
        page.keyboard.press("End")
        page.keyboard.press("Control+v")
        page.locator(".jp-Cell .cm-content", has_text="from-outside").wait_for()
    finally:
        context.close()

    def blocked():
        return [
            e
            for e in hub.events(action="clipboard.copy_blocked")
            if e["actor"] == "alice" and e["project"] == PROJECT
        ]

    events = wait_for(blocked, 30, "clipboard.copy_blocked in the hub's audit trail")
    kinds = {(details(e)["action"], details(e)["where"]) for e in events}
    assert ("copy", "editor") in kinds and ("write-text", "script") in kinds, kinds
    assert all(e["outcome"] == "denied" for e in events)
    assert any(details(e)["chars"] >= len("NHS-SECRET-4242") for e in events)
    assert seen.elsewhere(hub.url) == [], seen.elsewhere(hub.url)


def test_the_projects_policy_decides_the_copy_rule(hub, alice_ws, chromium, docker_client):
    """The rule comes from the hub side: the project's output policy says `allow`, alice's
    next workspace lets a copy through (and records none); put back, it blocks again."""
    from sde_spawner.db import open_db
    from sde_spawner.registry import ops
    from sde_spawner.registry.models import Project

    sm = open_db(hub.db_url)
    with sm() as s:
        policy = s.query(Project).filter_by(slug=PROJECT).one().output_policy
    alice = User(hub, "alice")

    def restart() -> object:
        alice.stop(PROJECT)
        alice.ensure_running(PROJECT)
        names = workspace_names("alice", PROJECT, hub.prefix)
        return docker_client.containers.get(names.container)

    ops.perform(
        sm, ops.add_project, "tester", PROJECT, output_policy={**policy, "clipboard_out": "allow"}
    )
    try:
        ws = restart()
        assert "SDE_CLIPBOARD_OUT=allow" in ws.attrs["Config"]["Env"]
        name = f"allowed-{uuid.uuid4().hex[:6]}.ipynb"
        write(ws, name, json.dumps(NOTEBOOK))
        before = len(hub.events(action="clipboard.copy_blocked"))
        context, page, seen = login(
            chromium, hub, "alice", permissions=["clipboard-read", "clipboard-write"]
        )
        try:
            open_lab(page, hub, name)
            editor = page.locator(".jp-Cell .cm-content >> visible=true").first
            editor.wait_for(timeout=60_000)
            assert page.evaluate("document.body.dataset.sdeClipboard") is None
            editor.click()
            page.keyboard.press("Control+a")
            page.keyboard.press("Control+c")
            wait_for(
                lambda: "NHS-SECRET-4242" in page.evaluate("navigator.clipboard.readText()"),
                10,
                "the copy to reach the clipboard",
            )
        finally:
            context.close()
        assert len(hub.events(action="clipboard.copy_blocked")) == before
        assert seen.elsewhere(hub.url) == [], seen.elsewhere(hub.url)
    finally:
        ops.perform(sm, ops.add_project, "tester", PROJECT, output_policy=policy)
        ws = restart()
        sm.kw["bind"].dispose()
    assert "SDE_CLIPBOARD_OUT=block" in ws.attrs["Config"]["Env"]
