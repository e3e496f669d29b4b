# ruff: noqa: F811 - pytest fixtures imported from test_egress_server
"""Every route of a real jupyter_server (with JupyterLab, terminals, jupyter-lsp and the egress
extension) classified; unclassified routes closed; the ways files left through routes other
than ``/files/`` (kernelspecs, labextensions, renamed binaries, stored lab JSON), refused.

The server runs as pytest_jupyter sets it up: its data directory is a writable temporary
directory, as ``~/.local/share/jupyter`` was in the workspace image. (These tests run as
root, for whom every directory is writable: only the workspace image, tested from inside in
``tests/security/test_workspace_routes.py``, shows the read-only directories being served.)
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_path

from egress_extension import labstate, routes, sniff
from egress_extension.blocking import BlockedDownloadHandler
from tests.unit.test_egress_server import (  # noqa: F401 - fixtures
    PNG,
    RecordingSink,
    events,
    ext,
    fetch,
    run,
)

pytest_plugins = ["pytest_jupyter.jupyter_server"]

#: What images/notebook/Dockerfile writes into the image's jupyter_server_config.json.
LAB_CONFIG = {
    "extension_manager": "readonly",
    "news_url": None,
    "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
    "lock_all_plugins": True,
}
DOCKERFILE = Path(__file__).parents[2] / "images" / "notebook" / "Dockerfile"
PARQUET = b"PAR1" + bytes(range(256)) * 8 + b"PAR1"


@pytest.fixture
def jp_server_config(request):
    lab = getattr(request, "param", LAB_CONFIG)
    return {
        "ServerApp": {"jpserver_extensions": {"egress_extension": True, "jupyterlab": True}},
        "EgressApp": {"service_url": "http://127.0.0.1:9/services/sde/", "api_token": "t"},
        "LabApp": lab,
    }


@pytest.fixture
def started(ext, run):
    """The extension after its late hooks (run on the server's loop at start)."""

    async def wait():
        return None

    run(wait())
    ext._late_hooks()
    return ext


def by_handler(ext, suffix: str) -> routes.Found:
    return next(f for f in ext.routes if f.handler.endswith(suffix))


# --- the inventory ------------------------------------------------------------------------


def test_every_route_the_server_exposes_is_classified(started):
    found = started.routes
    assert len(found) > 60
    unclassified = [(f.pattern, f.handler) for f in found if f.kind not in routes.KINDS]
    assert unclassified == [], "classify these in egress_extension/routes.py: " + repr(unclassified)
    for f in found:
        if f.kind == routes.BLOCKED:
            assert f.rule.target is BlockedDownloadHandler, f
        else:
            assert f.rule.target is not BlockedDownloadHandler, f
    kinds = {f.handler.rsplit(".", 1)[-1]: f.kind for f in found}
    assert kinds["AuthenticatedFileHandler"] == kinds["NbconvertFileHandler"] == routes.BLOCKED
    assert kinds["ViewHandler"] == routes.BLOCKED
    assert kinds["AuditedContentsHandler"] == kinds["BoundedSettingsHandler"] == routes.AUDITED
    assert kinds["BoundedWorkspacesHandler"] == routes.AUDITED
    assert kinds["KernelSpecResourceHandler"] == kinds["ThemesHandler"] == routes.IMAGE


def test_the_route_list_is_served(started, fetch):
    r = fetch("egress", "api", "routes")
    listed = json.loads(r.body)["routes"]
    assert r.code == 200 and len(listed) == len(started.routes)
    assert {"pattern": "/files/(.*)", "kind": "blocked"}.items() <= next(
        x for x in listed if x["handler"].endswith("AuthenticatedFileHandler")
    ).items()


def test_a_new_route_nobody_classified_is_closed_and_audited(started, jp_serverapp, fetch, events):
    from jupyter_server.base.handlers import JupyterHandler
    from jupyter_server.utils import url_path_join

    class RawDump(JupyterHandler):
        def get(self):
            self.finish(PARQUET)

    base = jp_serverapp.base_url
    jp_serverapp.web_app.add_handlers(".*$", [(url_path_join(base, "api/rawdump"), RawDump)])
    assert fetch("api", "rawdump").body == PARQUET  # the control: it serves raw bytes
    started._late_hooks()
    new = next(f for f in started.routes if f.pattern == "/api/rawdump")
    assert new.kind == "unclassified" and new.handler.endswith("RawDump")
    r = fetch("api", "rawdump", headers={"Accept": "application/json"})
    assert r.code == 403 and PARQUET not in r.body
    assert "has not been reviewed for what it serves" in json.loads(r.body)["message"]
    (ev,) = events("download.blocked")
    assert ev["details"]["channel"] == "route" and ev["details"]["path"] == "/api/rawdump"


@pytest.mark.parametrize("jp_server_config", [{}], indirect=True)
def test_jupyterlab_defaults_that_fetch_or_install_close_their_routes(started, fetch):
    # Without the shipped LabApp settings: the PyPI extension manager, news and update checks.
    for name in ("ExtensionHandler", "NewsHandler", "CheckForUpdateHandler"):
        assert by_handler(started, name).rule.target is BlockedDownloadHandler, name
    assert fetch("lab", "api", "news").code == 403


def test_with_the_image_settings_the_extension_manager_is_read_only(started, fetch):
    text = DOCKERFILE.read_text()
    for key, value in LAB_CONFIG.items():
        assert f'"{key}": {json.dumps(value)}' in text, key
    r = fetch("lab", "api", "extensions", params={"query": "x", "page": "1", "per_page": "9"})
    assert r.code == 200
    r = fetch("lab", "api", "news")
    assert r.code == 200 and json.loads(r.body)["news"] == []
    r = fetch("lab", "api", "update")
    assert r.code == 200 and json.loads(r.body)["notification"] is None
    body = json.dumps({"cmd": "install", "extension_name": "anything"})
    r = fetch("lab", "api", "extensions", method="POST", body=body)
    assert r.code == 422 and "was blocked" in json.loads(r.body)["message"]


# --- read-only places ---------------------------------------------------------------------


def test_read_only_means_nobody_here_can_write_it_or_above_it(tmp_path):
    assert not routes.read_only(str(tmp_path / "missing" / "dir"))  # creatable
    assert not routes.read_only(str(tmp_path))
    assert routes.read_only("/proc/self/root/proc/1") in (True, False)  # no error
    link = tmp_path / "link"
    link.symlink_to("/proc")
    assert not routes.read_only(str(link))  # /proc is not writable, but the link is


def test_a_kernelspec_planted_in_the_data_dir_is_neither_listed_nor_served(
    started,
    fetch,
    jp_data_dir,
):
    spec = jp_data_dir / "kernels" / "leak"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps({"argv": ["python3", "-c", "1"], "display_name": "leak", "language": "py"})
    )
    (spec / "extract.parquet").write_bytes(PARQUET)
    # The control: jupyter_client on its own finds it (the data dir is on its path).
    assert "leak" in KernelSpecManager().find_kernel_specs()
    assert str(jp_data_dir / "kernels") not in started.serverapp.kernel_spec_manager.kernel_dirs
    r = fetch("api", "kernelspecs")
    assert r.code == 200 and "leak" not in json.loads(r.body)["kernelspecs"]
    r = fetch("kernelspecs", "leak", "extract.parquet")
    assert r.code == 404 and PARQUET not in r.body


def test_a_labextension_link_to_the_extract_serves_nothing(started, fetch, jp_data_dir, tmp_path):
    extract = tmp_path / "extract"
    extract.mkdir(exist_ok=True)
    (extract / "table.parquet").write_bytes(PARQUET)
    exts = jp_data_dir / "labextensions"
    exts.mkdir(parents=True, exist_ok=True)
    (exts / "leak").symlink_to(extract, target_is_directory=True)
    assert str(exts) in jupyter_path("labextensions")  # the control: on JupyterLab's path
    served = by_handler(started, "FileFindHandler")
    lab_ext = next(f for f in started.routes if f.pattern == "/lab/extensions/(.*)")
    assert str(exts) not in lab_ext.rule.target_kwargs["path"], served
    for params in ({}, {"headers": {"Range": "bytes=0-99"}}):
        r = fetch("lab", "extensions", "leak", "table.parquet", **params)
        assert r.code == 404 and PARQUET[:100] not in r.body


# --- binary reads, by their bytes -----------------------------------------------------------


@pytest.fixture
def planted(jp_root_dir, tmp_path):
    extract = tmp_path / "extract-planted"
    extract.mkdir()
    (extract / "cohort.parquet").write_bytes(PARQUET)
    (jp_root_dir / "table.png").write_bytes(PARQUET)  # renamed
    (jp_root_dir / "cohort.pdf").symlink_to(extract / "cohort.parquet")
    (jp_root_dir / "figure.png").write_bytes(PNG)
    (jp_root_dir / "fig-link.png").symlink_to(jp_root_dir / "figure.png")
    return jp_root_dir, extract


B64 = {"type": "file", "format": "base64", "content": "1"}


@pytest.mark.parametrize("name", ["table.png", "cohort.pdf"])
def test_a_binary_named_like_an_image_is_judged_by_its_bytes(fetch, events, planted, name):
    r = fetch("api", "contents", name, params=B64)
    assert r.code == 403 and base64.b64encode(PARQUET[:48]) not in r.body
    claimed = "PNG" if name.endswith(".png") else "PDF"
    assert f"not an image or PDF, not the {claimed} its name says" in json.loads(r.body)["message"]
    (ev,) = events("download.blocked")
    assert ev["details"]["size"] == len(PARQUET) and ev["details"]["content_type"] is None
    if name == "cohort.pdf":
        assert ev["details"]["target"] == str(planted[1] / "cohort.parquet")
    assert events("file.opened") == []


def test_real_images_open_and_the_event_has_the_size_returned(fetch, events, planted):
    for name in ("figure.png", "fig-link.png"):
        r = fetch("api", "contents", name, params=B64)
        body = json.loads(r.body)
        assert r.code == 200 and base64.b64decode(body["content"]) == PNG
        assert body["size"] == len(PNG)
    assert [e["details"]["size"] for e in events("file.opened")] == [len(PNG), len(PNG)]


def test_an_image_is_viewable_only_under_its_own_type(fetch, planted):
    root, _ = planted
    (root / "figure.pdf").write_bytes(PNG)
    assert fetch("api", "contents", "figure.pdf", params=B64).code == 403


def test_the_size_cap_counts_the_bytes_read_not_a_stat_before(fetch, events, started, jp_root_dir):
    # A file whose size on stat is not what a read returns: the pre-read check sees 0 bytes.
    (jp_root_dir / "maps.txt").symlink_to("/proc/self/maps")
    assert os.stat(jp_root_dir / "maps.txt").st_size == 0
    started.max_view_size = 1024
    r = fetch("api", "contents", "maps.txt", params={"type": "file", "format": "text"})
    assert r.code == 403 and "over the 1.0 KiB" in json.loads(r.body)["message"]
    (ev,) = events("download.blocked")
    assert ev["details"]["size"] > 1024 and ev["details"]["target"].endswith("/maps")


def test_text_reads_record_the_bytes_returned(fetch, events, jp_root_dir):
    (jp_root_dir / "notes.txt").write_text("héllo\n")
    (jp_root_dir / "notes-link.txt").symlink_to(jp_root_dir / "notes.txt")
    r = fetch("api", "contents", "notes-link.txt", params={"type": "file", "format": "text"})
    assert r.code == 200 and json.loads(r.body)["size"] == 7
    assert events("file.opened")[0]["details"]["size"] == 7


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (PNG[:16], "png"),
        (b"\xff\xd8\xff\xe0" + bytes(12), "jpeg"),
        (b"GIF89a" + bytes(10), "gif"),
        (b"BM" + bytes(14), "bmp"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"%PDF-1.7\n" + bytes(7), "pdf"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"BM", None),
        (PARQUET[:16], None),
        (b"", None),
    ],
)
def test_sniff(head, kind):
    assert sniff.sniff(head) == kind


def test_base64_helpers_count_and_peek_without_decoding_everything():
    for n in (0, 1, 2, 3, 57, 58, 1000):
        data = os.urandom(n)
        for encoded in (base64.encodebytes(data).decode(), base64.b64encode(data).decode()):
            assert sniff.base64_size(encoded) == n
            assert sniff.base64_head(encoded) == data[:16]
    assert sniff.base64_head("not base64!") == b""


# --- JupyterLab's stored JSON ---------------------------------------------------------------


def _settings_dir(ext) -> Path:
    found = next(f for f in ext.routes if f.handler.endswith("BoundedSettingsHandler"))
    return Path(found.rule.target_kwargs["settings_dir"])


def _workspaces_dir(ext) -> Path:
    found = next(f for f in ext.routes if f.handler.endswith("BoundedWorkspacesHandler"))
    return Path(found.rule.target_kwargs["manager"].workspaces_dir)


def test_stored_settings_over_the_bound_are_not_read_back(started, fetch, events):
    themes = _settings_dir(started) / "@jupyterlab" / "apputils-extension"
    themes.mkdir(parents=True, exist_ok=True)
    blob = base64.b64encode(PARQUET * 100).decode()
    (themes / "themes.jupyterlab-settings").write_text(json.dumps({"theme": blob}))
    for path in (
        ("lab", "api", "settings"),
        ("lab", "api", "settings", "@jupyterlab/apputils-extension:themes"),
    ):
        r = fetch(*path)
        assert r.code == 403 and blob[:200].encode() not in r.body, path
        assert "over the 128.0 KiB" in json.loads(r.body)["message"]
    blocked = events("download.blocked")
    assert [e["details"]["channel"] for e in blocked] == ["lab-settings", "lab-settings"]
    assert blocked[0]["details"]["size"] > 128 * 1024


def test_small_stored_settings_are_read_back_and_recorded(started, fetch, events):
    themes = _settings_dir(started) / "@jupyterlab" / "apputils-extension"
    themes.mkdir(parents=True, exist_ok=True)
    raw = json.dumps({"theme": "JupyterLab Dark"})
    (themes / "themes.jupyterlab-settings").write_text(raw)
    r = fetch("lab", "api", "settings", "@jupyterlab/apputils-extension:themes")
    assert r.code == 200 and json.loads(r.body)["raw"] == raw
    (ev,) = events("file.opened")
    assert ev["details"]["type"] == "lab-settings" and ev["details"]["size"] == len(raw)
    assert fetch("lab", "api", "settings").code == 200


def test_stored_workspaces_over_the_bound_are_not_read_back(started, fetch, events):
    wdir = _workspaces_dir(started)
    wdir.mkdir(parents=True, exist_ok=True)
    blob = base64.b64encode(PARQUET * 100).decode()
    for name, data in (("big", {"x": blob}), ("small", {"layout-restorer:data": {"main": {}}})):
        ws = {"data": data, "metadata": {"id": name}}
        r = fetch("lab", "api", "workspaces", name, method="PUT", body=json.dumps(ws))
        assert r.code == 204
    r = fetch("lab", "api", "workspaces", "big")
    assert r.code == 403 and blob[:200].encode() not in r.body
    assert fetch("lab", "api", "workspaces").code == 403  # the list holds it too
    r = fetch("lab", "api", "workspaces", "small")
    assert r.code == 200 and json.loads(r.body)["data"] == {"layout-restorer:data": {"main": {}}}
    assert [e["details"]["channel"] for e in events("download.blocked")] == ["lab-workspaces"] * 2
    (ev,) = events("file.opened")
    assert ev["details"]["type"] == "lab-workspaces" and ev["details"]["files"] == 1


def test_a_file_swapped_between_check_and_read_never_returns_more_than_the_cap(
    fetch, started, jp_root_dir, run
):
    # The reviewer's race: 7 bytes at the pre-read stat, 64 KiB by the time of the read.
    import threading

    started.max_view_size = 1024
    small, big = jp_root_dir / "small.txt", jp_root_dir / "big.txt"
    target = jp_root_dir / "swap.txt"
    target.write_text("7 bytes")
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            small.write_text("7 bytes")
            os.replace(small, target)
            big.write_text("x" * 65536)
            os.replace(big, target)

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    try:
        codes = []
        for _ in range(60):
            r = fetch("api", "contents", "swap.txt", params={"type": "file", "format": "text"})
            codes.append(r.code)
            if r.code == 200:
                assert len(json.loads(r.body)["content"]) <= 1024
    finally:
        stop.set()
        thread.join()
    assert 403 in codes


def test_the_stored_part_of_lab_responses_is_what_is_counted():
    assert labstate.settings_content({"settings": [{"raw": "{}"}, {"raw": '{"a": 1}'}]}) == [
        '{"a": 1}'
    ]
    assert labstate.settings_content({"id": "x", "raw": "{}", "settings": {}}) == []
    one = {"data": {"k": "v"}, "metadata": {"id": "/a"}}
    assert labstate.workspaces_content(one) == ['{"k": "v"}']
    listing = {"workspaces": {"ids": ["/a", "/b"], "values": [one, {"data": {}}]}}
    assert labstate.workspaces_content(listing) == ['{"k": "v"}']
