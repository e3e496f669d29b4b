"""A checker sees in Chromium everything a file would release, and nothing in it runs.

The real ``sde`` service (tornado, SQLite registry, blob store; only the hub's "whose token is
this?" answered from a table, as in the unit tier) runs on loopback in a thread; the workspace
API is called over HTTP with alice's server token, then chris opens the request page in
Debian's Chromium: the notebook's preview lists its hidden metadata and comment, the text
file's TAG characters are shown as escapes, and both files' raw views (paged) show every byte.
Scripts in the files stay text: no dialog, no title change, no script element anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import urllib.request

import pytest
from tornado.testing import bind_unused_port
from tornado.web import create_signed_value

from sde_spawner.checking.testing import (
    PROJECT,
    FakeHubOAuth,
    browser_model,
    make_db,
    open_workspace,
    server_token_model,
)
from sde_spawner.services.app import ServiceSettings, http_server, make_app

PREFIX = "/services/sde/"
#: Elements a rendered page drops with their content: the checker is still shown them.
HIDDEN_HTML = (
    "<template>TEMPLATE-SECRET</template><noscript>NOSCRIPT-SECRET</noscript>"
    "<style>.x{content:'STYLE-SECRET'}</style>"
)
HOSTILE = "<script>document.title='pwned';alert('x')</script><img src=x onerror=alert(2)>"
NOTEBOOK = json.dumps(
    {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "P"}, "x": "NBMETA-SECRET"},
        "cells": [
            {
                "cell_type": "markdown",
                "id": "m1",
                "metadata": {"note": "CELLMETA-SECRET"},
                "source": "# Visible heading\n<!-- COMMENT-SECRET -->" + HOSTILE + HIDDEN_HTML,
            },
            {
                "cell_type": "raw",
                "id": "r1",
                "metadata": {"raw_mimetype": "text/x-python"},
                "source": "RAWCELL-SECRET",
            },
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
                            "text/html": HOSTILE + "<b>visible output</b>",
                            "application/x-custom": "CUSTOM-SECRET",
                        },
                    }
                ],
            },
        ],
    },
    indent=1,
).encode()
# TAG characters spell "pat 4" invisibly after each mean; many lines: the raw view has pages
TAGGED = "".join(chr(0xE0000 + ord(c)) for c in "pat 4")
TEXT = (f"mean 52{TAGGED}\n" * 12_000 + HOSTILE + "\n").encode()
FILES = {"hidden.ipynb": NOTEBOOK, "notes.txt": TEXT}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The sde service on loopback in its own thread and event loop."""
    tmp = tmp_path_factory.mktemp("sde")
    Session = make_db(tmp)
    open_workspace(Session, "alice", PROJECT)
    hub_auth = FakeHubOAuth(
        {"oauth-chris": browser_model("chris"), "ws-alice": server_token_model("alice", PROJECT)}
    )
    box: dict = {}
    ready = threading.Event()

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        settings = ServiceSettings.from_env(
            prefix=PREFIX,
            bind_ip="127.0.0.1",
            port=0,
            db_url=f"sqlite:///{tmp / 'registry.sqlite'}",
            state_dir=str(tmp / "state"),
        )
        app = make_app(settings, hub_auth=hub_auth)
        sock, port = bind_unused_port()
        server = http_server(app)
        server.add_sockets([sock])
        box.update(app=app, port=port, loop=loop, server=server)
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    box["base"] = f"http://127.0.0.1:{box['port']}{PREFIX}"
    yield box

    async def shut():
        box["server"].stop()
        await box["server"].close_all_connections()  # the browser's kept-alive connections

    asyncio.run_coroutine_threadsafe(shut(), box["loop"]).result(30)
    box["loop"].call_soon_threadsafe(box["loop"].stop)
    thread.join(10)
    hub_auth.close()


def call(service, method: str, path: str, body: bytes | None = None, ctype="application/json"):
    req = urllib.request.Request(  # noqa: S310 - loopback, the test's own service
        service["base"] + path,
        data=body,
        method=method,
        headers={"Authorization": "token ws-alice", "Content-Type": ctype},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
        return json.loads(resp.read())


def submit(service) -> int:
    files = [
        {
            "path": p,
            "description": f"{p} for the paper",
            "size": len(d),
            "sha256": hashlib.sha256(d).hexdigest(),
        }
        for p, d in FILES.items()
    ]
    created = call(
        service,
        "POST",
        "api/exports",
        json.dumps({"justification": "for the paper", "files": files}).encode(),
    )
    for up, data in zip(created["uploads"], FILES.values(), strict=True):
        call(service, "PUT", up["url"].removeprefix(PREFIX), data, "application/octet-stream")
    call(service, "POST", f"api/exports/{created['id']}/submit", b"")
    return created["id"]


def test_a_checker_sees_left_out_parts_invisible_characters_and_raw_bytes(service, chromium):
    rid = submit(service)
    context = chromium.new_context(viewport={"width": 1280, "height": 1000})
    cookie = create_signed_value(
        service["app"].settings["cookie_secret"], "service-sde", "oauth-chris"
    ).decode()
    context.add_cookies([{"name": "service-sde", "value": cookie, "url": service["base"]}])
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        page.goto(service["base"] + f"checking/requests/{rid}")
        title = page.title()
        assert title.startswith("Request"), page.content()[:500]
        sections = {s.locator(".path").inner_text(): s for s in page.locator("section.file").all()}

        # the notebook: its preview starts with what it leaves out, each part openable
        nb = sections["hidden.ipynb"]
        frame = nb.frame_locator("iframe")
        notice = frame.locator("#omitted")
        notice.wait_for()
        assert "are not shown in the preview below but are released" in notice.inner_text()
        assert "visible output" in frame.locator("body").inner_text()
        for secret, what in [
            ("NBMETA-SECRET", "notebook metadata"),
            ("CELLMETA-SECRET", "cell metadata"),
            ("COMMENT-SECRET", "HTML comment"),
            ("CUSTOM-SECRET", "output application/x-custom"),
            ("TEMPLATE-SECRET", "<template> element and its content"),
            ("NOSCRIPT-SECRET", "<noscript> element and its content"),
            ("STYLE-SECRET", "<style> element and its content"),
            ("RAWCELL-SECRET", "raw cell source (text/x-python, not rendered)"),
        ]:
            item = notice.locator("li.omitted-item", has_text=what).first
            assert not item.get_by_text(secret).is_visible()  # collapsed until opened
            assert re.search(r" · [\d,.]+ (bytes|KiB)$", item.locator("summary").inner_text())
            item.locator("summary").click()
            assert item.get_by_text(secret).is_visible(), what
            # shown as text, never as markup (its own element would be dropped again)
            assert secret in item.locator("pre").inner_text(), what
        # and the preview itself (everything but the notice) shows none of them
        shown = "\n".join(frame.locator("body > :not(#omitted)").all_inner_texts())
        assert "visible output" in shown
        for secret in ("TEMPLATE-SECRET", "NOSCRIPT-SECRET", "STYLE-SECRET", "RAWCELL-SECRET"):
            assert secret not in shown, secret
        # the raw view of the notebook, in the same sandboxed frame: the JSON, escaped
        nb.locator(".raw-link").click()
        frame.locator("#raw-meta").wait_for()
        assert "raw bytes (text)" in frame.locator("#raw-meta").inner_text()
        raw_text = frame.locator("pre.raw").inner_text()
        assert "COMMENT-SECRET" in raw_text and "document.title='pwned'" in raw_text

        # the text file: TAG characters shown as escapes and counted, in preview and raw view
        txt = sections["notes.txt"]
        frame = txt.frame_locator("iframe")
        frame.locator("#invisible").wait_for()
        assert (
            "60,000 invisible or control character(s)" in frame.locator("#invisible").inner_text()
        )
        first = frame.locator("span.inv").first
        assert first.inner_text() == "⟨U+E0070⟩" and first.is_visible()
        txt.locator(".raw-link").click()
        frame.locator("#raw-meta").wait_for()
        assert "page 1 of 6" in frame.locator("#raw-meta").inner_text()
        assert frame.locator("pre.raw span.inv").first.inner_text() == "⟨U+E0070⟩"
        # paging from the request page's controls (the frame's own origin is opaque)
        txt.locator('input[name="page"]').fill("6")
        txt.locator("button", has_text="show").click()
        frame.locator("#raw-meta", has_text="page 6 of 6").wait_for()
        assert "<script>document.title='pwned'" in frame.locator("pre.raw").inner_text()
        txt.locator('select[name="as"]').select_option("hex")
        txt.locator('input[name="page"]').fill("1")
        txt.locator("button", has_text="show").click()
        frame.locator("#raw-meta", has_text="raw bytes (hex)").wait_for()
        assert "f3 a0 81 b0" in frame.locator("pre.raw").inner_text()  # U+E0070 in UTF-8
        # in a tab of its own the raw view pages itself
        with context.expect_page() as opened:
            txt.get_by_text("raw view in a new tab").click()
        tab = opened.value
        tab.locator("#raw-next").click()
        tab.locator("#raw-meta", has_text="page 2 of 6").wait_for()
        assert tab.locator("script").count() == 0 and tab.title() == "notes.txt"
        tab.close()
        page.screenshot(path="/tmp/checking-raw-view.png", full_page=True)

        # nothing in either file ran
        for f in page.frames[1:]:
            assert f.title() != "pwned"
            assert f.locator("script").count() == 0
            assert f.locator("[onerror]").count() == 0
        assert page.title() == title and dialogs == []
    finally:
        context.close()
