"""The workspace server's download channels, closed; what stays open for viewing in place.

Blocked, each with a 403 that says why (an HTML page for browser navigations, JSON for the
API) and a ``download.blocked`` audit event:

* ``/files/…`` — raw file downloads (JupyterLab's *Download*, *Open in New Browser Tab*,
  *Copy Download Link*; also how JupyterLab resolves a relative ``<img src>`` in Markdown or an
  HTML file's relative resources, which therefore do not render here);
* ``/nbconvert/…`` — *Save and Export Notebook As…* (HTML, PDF, script, …);
* ``/view/…`` — a file rendered raw in its own browser tab;
* contents API reads that are downloads rather than viewing: content returned as base64
  (binary) unless its bytes are an image or PDF JupyterLab displays in place and its name
  says the same type (:data:`VIEWABLE_BINARY_SUFFIXES`, :mod:`egress_extension.sniff`; a
  renamed extract or a link named ``x.pdf`` into ``/data`` is refused), and any read whose
  returned bytes, counted on the content itself after the read, exceed ``max_view_size``
  (a file swapped between a check and the read cannot slip through). The ``file.opened``
  event of an allowed read records the size of the bytes returned.

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

from egress_extension import sniff
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

#: Plugins that would reach for the internet from the page: the news and update-check prompt
#: ("Would you like to get notified about official Jupyter news?") and the extension manager's
#: listings. The server routes behind them are closed or inert too (egress_extension.routes).
QUIET_PLUGINS = (
    "@jupyterlab/apputils-extension:announcements",
    "@jupyterlab/extensionmanager-extension:plugin",
)

#: The TRE's own JupyterLab extension (egress_extension/labextension): never disabled.
OWN_LAB_EXTENSION = "@sde-tre/jupyterlab"

CHANNEL_REASONS = {
    "files": "Downloading files from the workspace (/files/) is disabled in this Secure Data "
    "Environment.",
    "nbconvert": "Exporting notebooks (Save and Export Notebook As, /nbconvert/) is disabled "
    "in this Secure Data Environment.",
    "view": "Opening workspace files raw in a browser tab (/view/) is disabled in this Secure "
    "Data Environment.",
    "lsp": "Language servers (/lsp/) are not offered in this Secure Data Environment: they "
    "read workspace files outside the audited contents API.",
    "route": "This workspace server route has not been reviewed for what it serves, so it is "
    "closed in this Secure Data Environment.",
    "lab": "This JupyterLab route is closed in this Secure Data Environment.",
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

    def record(
        self,
        handler: web.RequestHandler,
        channel: str,
        path: str,
        reason: str,
        extra: dict | None = None,
    ) -> None:
        self.ext.record(
            "download.blocked",
            {
                "channel": channel,
                "path": path[:1024],
                "method": handler.request.method,
                "url": handler.request.path[:1024],
                "download_flag": handler.get_query_argument("download", None) is not None,
                **(extra or {}),
            },
            outcome="denied",
            reason=reason,
        )
        self.ext.log.warning(
            "blocked %s %s: %s", handler.request.method, handler.request.path, reason
        )

    def refuse(
        self,
        handler: web.RequestHandler,
        channel: str,
        path: str,
        reason: str,
        extra: dict | None = None,
    ) -> None:
        self.record(handler, channel, path, reason, extra)
        raise web.HTTPError(403, reason.replace("%", "%%"))

    # -- contents API ----------------------------------------------------------------------

    def _binary_refusal(self, path: str, found: str | None = None) -> str:
        name = path.rsplit("/", 1)[-1]
        _, dot, ext = name.rpartition(".")
        kind = f".{ext.lower()} files" if dot and _ else "files of this type"
        claimed = sniff.suffix_type(name)
        if claimed is not None and name.lower().endswith(self.viewable) and found != claimed:
            what = f"a {found.upper()} file" if found else "not an image or PDF"
            return (
                f"{path}: its content is {what}, not the {claimed.upper()} its name says; "
                "downloading it from the workspace is blocked in this Secure Data Environment "
                "(images and PDFs open in the browser only when their bytes are that type). "
                "Work with the file in a notebook, or request an export. " + HOW_TO_EXPORT
            )
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

    def _target(self, handler: Any, path: str) -> str | None:
        """The resolved file behind ``path`` when it is reached through a link, else None."""
        get_os_path = getattr(handler.contents_manager, "_get_os_path", None)
        if get_os_path is None:
            return None
        try:
            os_path = os.path.abspath(get_os_path(path))
        except web.HTTPError:
            return None
        real = os.path.realpath(os_path)
        return real if real != os_path else None

    def check_read_request(self, handler: Any, path: str) -> None:
        """Before reading: refuse a base64 read of a type never viewable, or a file whose
        target is already too big (the read itself is checked again in
        :meth:`check_read_model`, on the bytes it returns)."""
        path = path.strip("/")
        fmt = handler.get_query_argument("format", None)
        typ = handler.get_query_argument("type", None)
        size = None
        get_os_path = getattr(handler.contents_manager, "_get_os_path", None)
        if get_os_path is not None:
            try:
                st = os.stat(get_os_path(path))  # follows links: the target's size
            except (OSError, web.HTTPError):
                return  # the contents manager gives the proper 404/403
            if stat.S_ISDIR(st.st_mode):
                return
            size = st.st_size
        notebook = typ == "notebook" or (typ is None and path.endswith(".ipynb"))
        if fmt == "base64" and typ != "directory" and not notebook and not self._viewable(path):
            self.refuse(handler, "contents", path, self._binary_refusal(path))
        if size is not None and size > self.ext.max_view_size:
            self.refuse(handler, "contents", path, self._size_refusal(path, size), {"size": size})

    def check_read_model(self, handler: Any, model: dict) -> None:
        """After reading, on what is about to be returned: base64 content must *be* a type
        JupyterLab displays (by its magic number, and the name must agree), and the bytes
        returned must fit ``max_view_size``. Sets ``model["size"]`` to the bytes returned,
        so the ``file.opened`` event records what left, not the size of a link."""
        path = str(model.get("path", ""))
        content = model.get("content")
        if model.get("type") == "directory" or content is None:
            return
        size = read_size(model)
        found = None
        if model.get("format") == "base64" and model.get("type") == "file":
            head = sniff.base64_head(content)
            found = sniff.sniff(head)
            if sniff.viewable_type(path, head, self.viewable) is None:
                self.refuse(
                    handler,
                    "contents",
                    path,
                    self._binary_refusal(path, found),
                    self._read_details(handler, path, size, found),
                )
        if size > self.ext.max_view_size:
            self.refuse(
                handler,
                "contents",
                path,
                self._size_refusal(path, size),
                self._read_details(handler, path, size, found),
            )
        model["size"] = size

    def _read_details(self, handler: Any, path: str, size: int, found: str | None) -> dict:
        details: dict[str, Any] = {"size": size, "content_type": found}
        target = self._target(handler, path)
        if target is not None:
            details["target"] = target[:1024]
        return details

    def _viewable(self, path: str) -> bool:
        return path.lower().endswith(self.viewable)

    # -- JupyterLab ------------------------------------------------------------------------

    def page_config_hook(self, previous: Any = None):
        """A ``page_config_hook`` (chained, outermost) adding our plugins to
        ``disabledExtensions``, keeping the TRE's own extension enabled, and telling the page
        the project's copy-out rule (``sdeClipboardOut``), the project and whom to ask (the
        welcome page's ``sdeProject`` and ``sdeSupport``)."""
        plugins = list(self.ext.disabled_lab_plugins)
        room = {
            "sdeClipboardOut": self.ext.clipboard_out,
            "sdeProject": os.environ.get("SDE_PROJECT", ""),
            "sdeSupport": getattr(self.ext, "support_contact", ""),
        }

        def hook(handler: Any, page_config: dict) -> dict:
            if previous is not None:
                page_config = previous(handler, page_config)
            disabled = page_config.get("disabledExtensions") or []
            if isinstance(disabled, dict):
                disabled = [k for k, v in disabled.items() if v]
            disabled = [d for d in disabled if not str(d).startswith(OWN_LAB_EXTENSION)]
            page_config["disabledExtensions"] = list(dict.fromkeys([*disabled, *plugins]))
            page_config.update(room)
            return page_config

        hook.egress_extension = True  # type: ignore[attr-defined]
        return hook


def read_size(model: dict) -> int:
    """Bytes a contents model returns: decoded base64, UTF-8 text, or the notebook's JSON."""
    content = model.get("content")
    if model.get("format") == "base64" and isinstance(content, str):
        return sniff.base64_size(content)
    if isinstance(content, str):
        return sniff.text_size(content)
    return len(json.dumps(content, default=str).encode("utf-8"))


class BlockedDownloadHandler(JupyterHandler):
    """``/files/…``, ``/nbconvert/…``, ``/view/…`` and every route
    :mod:`egress_extension.routes` closes: always 403, recorded."""

    channel = "files"
    reason: str | None = None

    def initialize(self, channel: str = "files", reason: str | None = None, **_: Any) -> None:
        self.channel = channel
        self.reason = reason

    @web.authenticated
    def get(self, *args: Any, **kwargs: Any) -> None:
        ext: EgressApp = self.settings["egress_extension"]
        base = self.base_url
        prefix = url_path_join(base, self.channel) + "/"
        path = self.request.path[len(prefix) :] if self.request.path.startswith(prefix) else ""
        if not path and self.channel not in ("files", "nbconvert", "view"):
            path = self.request.path[len(base.rstrip("/")) :]
        reason = self.reason or CHANNEL_REASONS[self.channel]
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

    head = post = put = patch = delete = get


def blocked_routes() -> list[tuple[str, type, dict]]:
    """Routes (below the base URL) shadowing the server's download channels."""
    return [
        (rf"/{channel}(?:/.*)?", BlockedDownloadHandler, {"channel": channel})
        for channel in ("files", "nbconvert", "view")
    ]
