"""The workspace server's download channels, closed; what stays open for viewing in place.

Blocked, each with a 403 that says why (an HTML page for browser navigations, JSON for the
API) and a ``download.blocked`` audit event:

* ``/files/…`` — raw file downloads (JupyterLab's *Download*, *Open in New Browser Tab*,
  *Copy Download Link*; also how JupyterLab resolves a relative ``<img src>`` in Markdown or an
  HTML file's relative resources, which therefore do not render here);
* ``/nbconvert/…`` — *Save and Export Notebook As…* (HTML, PDF, script, …);
* ``/view/…`` — a file rendered raw in its own browser tab;
* contents API reads that are downloads rather than viewing: content returned as base64
  (binary) for any file type JupyterLab does not display in place
  (:data:`VIEWABLE_BINARY_SUFFIXES`), and any read of a file over ``max_view_size``.

Notebooks, text, CSV, JSON, Markdown and images still open in JupyterLab: they travel through
the contents API as they always do. What a browser displays can be saved by its user; that
residual risk, and why the rules stop at bulk machine-readable transfer, is in
``docs/threat-model.md``.

JupyterLab's own download and export commands are also switched off (:data:`LAB_PLUGINS`,
added to ``disabledExtensions`` by the outermost ``page_config_hook``, so after any
``page_config.json`` a user writes and after JupyterHub's own hook) so that the interface does
not offer what the server refuses.
"""

from __future__ import annotations

import html
import json
import os
import stat
from typing import TYPE_CHECKING, Any

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from egress_extension.files import human_size

if TYPE_CHECKING:
    from egress_extension.app import EgressApp

#: Binary types JupyterLab renders in place (image viewer, PDF viewer) from base64 content.
VIEWABLE_BINARY_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".pdf")
DEFAULT_MAX_VIEW_SIZE = 64 * 1024 * 1024

#: JupyterLab 4 plugins whose commands download or export: Download (file browser and
#: File menu), Open in New Browser Tab (both), Save and Export Notebook As.
LAB_PLUGINS = (
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/docmanager-extension:open-browser-tab",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
    "@jupyterlab/notebook-extension:export",
)

CHANNEL_REASONS = {
    "files": "Downloading files from the workspace (/files/) is disabled in this Secure Data "
    "Environment.",
    "nbconvert": "Exporting notebooks (Save and Export Notebook As, /nbconvert/) is disabled "
    "in this Secure Data Environment.",
    "view": "Opening workspace files raw in a browser tab (/view/) is disabled in this Secure "
    "Data Environment.",
}
HOW_TO_EXPORT = (
    "Results leave only through an export request: an output checker reviews the exact bytes "
    "you submit before they are released."
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Download blocked</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;
padding:0 1rem;line-height:1.5}}h1{{font-size:1.4rem}}</style></head>
<body><h1>Download blocked</h1><p>{reason}</p><p>{how}</p>
<p><a href="{export_url}">Request an export</a> &middot; <a href="{lab_url}">Back to
JupyterLab</a></p></body></html>
"""


class DownloadBlocker:
    """The viewing rules of the contents API and the recording of every blocked attempt."""

    def __init__(self, ext: EgressApp):
        self.ext = ext

    @property
    def viewable(self) -> tuple[str, ...]:
        return tuple(s.lower() for s in self.ext.viewable_binary_suffixes)

    def record(self, handler: web.RequestHandler, channel: str, path: str, reason: str) -> None:
        self.ext.record(
            "download.blocked",
            {
                "channel": channel,
                "path": path[:1024],
                "method": handler.request.method,
                "url": handler.request.path[:1024],
                "download_flag": handler.get_query_argument("download", None) is not None,
            },
            outcome="denied",
            reason=reason,
        )
        self.ext.log.warning(
            "blocked %s %s: %s", handler.request.method, handler.request.path, reason
        )

    def refuse(self, handler: web.RequestHandler, channel: str, path: str, reason: str) -> None:
        self.record(handler, channel, path, reason)
        raise web.HTTPError(403, reason.replace("%", "%%"))

    # -- contents API ----------------------------------------------------------------------

    def _binary_refusal(self, path: str) -> str:
        name = path.rsplit("/", 1)[-1]
        _, dot, ext = name.rpartition(".")
        kind = f".{ext.lower()} files" if dot and _ else "files of this type"
        return (
            f"{path}: downloading {kind} from the workspace is blocked in this Secure Data "
            "Environment (only notebooks, text and images open in the browser). Work with the "
            "file in a notebook, or request an export. " + HOW_TO_EXPORT
        )

    def _size_refusal(self, path: str, size: int) -> str:
        return (
            f"{path} is {human_size(size)}, over the {human_size(self.ext.max_view_size)} that "
            "can be opened in the browser in this Secure Data Environment. Work with it in a "
            "notebook, or request an export. " + HOW_TO_EXPORT
        )

    def check_read_request(self, handler: Any, path: str) -> None:
        """Before reading: refuse a base64 read of a non-viewable type, or a file too big."""
        path = path.strip("/")
        fmt = handler.get_query_argument("format", None)
        typ = handler.get_query_argument("type", None)
        size = None
        get_os_path = getattr(handler.contents_manager, "_get_os_path", None)
        if get_os_path is not None:
            try:
                st = os.stat(get_os_path(path))
            except (OSError, web.HTTPError):
                return  # the contents manager gives the proper 404/403
            if stat.S_ISDIR(st.st_mode):
                return
            size = st.st_size
        notebook = typ == "notebook" or (typ is None and path.endswith(".ipynb"))
        if fmt == "base64" and typ != "directory" and not notebook and not self._viewable(path):
            self.refuse(handler, "contents", path, self._binary_refusal(path))
        if size is not None and size > self.ext.max_view_size:
            self.refuse(handler, "contents", path, self._size_refusal(path, size))

    def check_read_model(self, handler: Any, model: dict) -> None:
        """After reading: the server fell back to base64 for a binary file nobody can view."""
        path = str(model.get("path", ""))
        if (
            model.get("type") == "file"
            and model.get("format") == "base64"
            and model.get("content") is not None
            and not self._viewable(path)
        ):
            self.refuse(handler, "contents", path, self._binary_refusal(path))
        size = model.get("size")
        if (
            model.get("content") is not None
            and isinstance(size, int)
            and model.get("type") != "directory"
            and size > self.ext.max_view_size
        ):
            self.refuse(handler, "contents", path, self._size_refusal(path, size))

    def _viewable(self, path: str) -> bool:
        return path.lower().endswith(self.viewable)

    # -- JupyterLab ------------------------------------------------------------------------

    def page_config_hook(self, previous: Any = None):
        """A ``page_config_hook`` adding our plugins to ``disabledExtensions`` (chained)."""
        plugins = list(self.ext.disabled_lab_plugins)

        def hook(handler: Any, page_config: dict) -> dict:
            if previous is not None:
                page_config = previous(handler, page_config)
            disabled = page_config.get("disabledExtensions") or []
            if isinstance(disabled, dict):
                disabled = [k for k, v in disabled.items() if v]
            page_config["disabledExtensions"] = list(dict.fromkeys([*disabled, *plugins]))
            return page_config

        hook.egress_extension = True  # type: ignore[attr-defined]
        return hook


class BlockedDownloadHandler(JupyterHandler):
    """``/files/…``, ``/nbconvert/…``, ``/view/…``: always 403, recorded."""

    channel = "files"

    def initialize(self, channel: str = "files", **_ignored: Any) -> None:
        self.channel = channel

    @web.authenticated
    def get(self, *args: Any, **kwargs: Any) -> None:
        ext: EgressApp = self.settings["egress_extension"]
        base = self.base_url
        prefix = url_path_join(base, self.channel) + "/"
        path = self.request.path[len(prefix) :] if self.request.path.startswith(prefix) else ""
        reason = CHANNEL_REASONS[self.channel]
        ext.blocker.record(self, self.channel, path, f"{reason} {HOW_TO_EXPORT}")
        self.set_status(403)
        self.set_header("Cache-Control", "no-store")
        if "application/json" in self.request.headers.get("Accept", ""):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": f"{reason} {HOW_TO_EXPORT}", "blocked": True}))
            return
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            PAGE.format(
                reason=html.escape(reason),
                how=html.escape(HOW_TO_EXPORT),
                export_url=html.escape(url_path_join(base, "egress/")),
                lab_url=html.escape(url_path_join(base, "lab")),
            )
        )

    head = post = put = get


def blocked_routes() -> list[tuple[str, type, dict]]:
    """Routes (below the base URL) shadowing the server's download channels."""
    return [
        (rf"/{channel}(?:/.*)?", BlockedDownloadHandler, {"channel": channel})
        for channel in ("files", "nbconvert", "view")
    ]
