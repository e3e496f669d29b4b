"""HTTP handlers of the egress extension, mounted under ``<base_url>egress/``.

* ``GET  egress/api/status`` — the extension, its version, how activity shipping is doing.
* ``GET  egress/api/requests`` — the researcher's own export requests (from the service).
* ``POST egress/api/requests`` — ``{files: [{path, description}], justification}``: snapshot,
  declare, upload and submit (:func:`egress_extension.exports.submit_export`).
* ``POST egress/api/requests/<id>/versions`` — the same body, as a new version of a
  *returned* request.
* ``POST egress/api/requests/<id>/withdraw`` — withdraw a submitted request.
* ``GET  egress/api/files`` — files under home, each with whether it may be exported and why.
* ``GET  egress/api/routes`` — every route of the server and how it is classified.
* ``POST egress/api/clipboard`` — the JupyterLab page reports a copy it blocked
  (``clipboard.copy_blocked``, denied; the project's rule is ``EgressApp.clipboard_out``).
* ``GET  egress/api/data`` — the extract's data dictionary and the names and sizes of the
  files in ``/data`` (the My data panel), never their content.
* ``GET  egress/`` — the export page (the same API, from a small script).

Every handler is behind jupyter_server's authentication; cookie-authenticated writes need the
``_xsrf`` token (the page sends it as ``X-XSRFToken``), token-authenticated ones (the command
line) do not, as everywhere in jupyter_server.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from egress_extension import __version__
from egress_extension.exports import parse_request, precheck, submit_export
from egress_extension.files import ExportRefused, human_size, list_candidates
from egress_extension.service import ServiceError

if TYPE_CHECKING:
    from egress_extension.app import EgressApp

EXTENSION_NAME = "egress_extension"
TEMPLATES = Path(__file__).parent / "templates"
_jinja = Environment(
    loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"])
)


class EgressAPIHandler(APIHandler):
    """JSON handlers of the extension."""

    @property
    def egress(self) -> EgressApp:
        return self.settings["egress_extension"]

    def reply(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(obj))

    def service_or_503(self):
        service = self.egress.service
        if service is None:
            self.reply(
                {
                    "message": "no export service is configured for this workspace "
                    "(SDE_SERVICE_URL and JUPYTERHUB_API_TOKEN are unset)"
                },
                503,
            )
        return service

    def service_failed(self, exc: ServiceError) -> None:
        status = exc.status if 400 <= exc.status < 500 else 502
        body: dict[str, Any] = {"message": exc.message}
        if getattr(exc, "request", None) is not None:
            body["request"] = exc.request  # type: ignore[attr-defined]
        self.reply(body, status)

    def refused(self, refused: ExportRefused, *, action: str = "export.refused") -> None:
        self.egress.record(
            action,
            {"path": refused.path[:1024], "code": refused.code},
            outcome="denied",
            reason=refused.message,
        )
        self.egress.log.warning("export refused: %s", refused.message)
        self.reply(
            {"message": refused.message, "code": refused.code, "path": refused.path},
            refused.status,
        )


class StatusHandler(EgressAPIHandler):
    """``GET egress/api/status``: the extension and its version (a stable probe)."""

    @web.authenticated
    def get(self) -> None:
        self.reply({"extension": EXTENSION_NAME, "version": __version__})


class ActivityStatusHandler(EgressAPIHandler):
    """``GET egress/api/activity``: is there an export service; how shipping is doing."""

    @web.authenticated
    def get(self) -> None:
        self.reply(
            {
                "export_service": self.egress.service is not None,
                "audit": self.egress.shipper.stats(),
            }
        )


class RequestsHandler(EgressAPIHandler):
    """``GET``: own requests; ``POST``: a new export request."""

    @web.authenticated
    async def get(self) -> None:
        service = self.service_or_503()
        if service is None:
            return
        try:
            self.reply(await service.list())
        except ServiceError as exc:
            self.service_failed(exc)

    @web.authenticated
    async def post(self, request_id: str | None = None) -> None:
        resubmit = int(request_id) if request_id is not None else None
        try:
            files, justification = parse_request(
                self.get_json_body(), rules=self.egress.policy.rules
            )
            service = self.service_or_503()
            if service is None:
                return
            result = await submit_export(
                service,
                self.egress.policy,
                files,
                justification,
                resubmit=resubmit,
            )
        except ExportRefused as refused:
            self.refused(refused)
            return
        except ServiceError as exc:
            self.service_failed(exc)
            return
        self.egress.log.info(
            "export request %s submitted: %s",
            result["id"],
            ", ".join(f"{f['path']} ({f['size']} bytes)" for f in result["files"]),
        )
        self.reply(result, 201)


class WithdrawHandler(EgressAPIHandler):
    @web.authenticated
    async def post(self, request_id: str) -> None:
        service = self.service_or_503()
        if service is None:
            return
        try:
            self.reply(await service.withdraw(int(request_id)))
        except ServiceError as exc:
            self.service_failed(exc)


class FilesHandler(EgressAPIHandler):
    """``GET egress/api/files``: candidates for export under home."""

    @web.authenticated
    async def get(self) -> None:
        policy = self.egress.policy
        items = await asyncio.to_thread(list_candidates, policy)
        self.reply(
            {
                "files": items,
                "allowed_suffixes": list(policy.allowed_suffixes),
                "max_file_size": policy.max_file_size,
            }
        )


class ChecksHandler(EgressAPIHandler):
    """``GET egress/api/checks?path=P``: the automated disclosure checks of one file, the
    same the output checkers will see, so the researcher can fix an output first."""

    @web.authenticated
    async def get(self) -> None:
        path = self.get_query_argument("path", "")
        try:
            report = await asyncio.to_thread(
                precheck,
                self.egress.policy,
                path,
                self.egress.sdc_rules,
                max_bytes=self.egress.max_check_size,
            )
        except ExportRefused as refused:
            self.refused(refused, action="export.check.refused")
            return
        self.reply(report)


CLIPBOARD_ACTIONS = ("copy", "cut", "drag", "write", "write-text")
CLIPBOARD_PLACES = (
    "terminal",
    "output",
    "editor",
    "notebook",
    "file-browser",
    "dialog",
    "page",
    "script",
)
CLIPBOARD_REASON = (
    "Copying out of the workspace is switched off for this project: results leave only "
    "through an export request."
)


class ClipboardHandler(EgressAPIHandler):
    """``POST egress/api/clipboard``: ``{action, where, chars}`` from the page's copy block.

    The page blocked the copy itself (it runs in the researcher's browser, so this is a
    report, not the control); the server records it for the hub side. Bad input gets a 400
    and nothing is recorded."""

    @web.authenticated
    def post(self) -> None:
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(400, "expected a JSON object {action, where, chars}")
        action, where, chars = body.get("action"), body.get("where"), body.get("chars", 0)
        if action not in CLIPBOARD_ACTIONS:
            raise web.HTTPError(400, f"action must be one of {', '.join(CLIPBOARD_ACTIONS)}")
        if where not in CLIPBOARD_PLACES:
            raise web.HTTPError(400, f"where must be one of {', '.join(CLIPBOARD_PLACES)}")
        if isinstance(chars, bool) or not isinstance(chars, int) or not 0 <= chars < 2**31:
            raise web.HTTPError(400, "chars must be a whole number of characters")
        self.egress.record(
            "clipboard.copy_blocked",
            {"action": action, "where": where, "chars": chars, "rule": self.egress.clipboard_out},
            outcome="denied",
            reason=CLIPBOARD_REASON,
        )
        self.reply({"recorded": True, "rule": self.egress.clipboard_out})


class DataHandler(EgressAPIHandler):
    """``GET egress/api/data``: what the My data panel shows."""

    @web.authenticated
    async def get(self) -> None:
        info = await asyncio.to_thread(data_info, self.egress.data_dir)
        link = os.path.join(self.egress.policy.root, self.egress.data_link or "-")
        linked = os.path.islink(link) and os.path.realpath(link) == os.path.realpath(
            self.egress.data_dir
        )
        info["browser_path"] = self.egress.data_link if linked else None
        self.reply(info)


DICTIONARY_FILE = "DATA_DICTIONARY.json"
MAX_DICTIONARY_BYTES = 1024 * 1024


def data_info(data_dir: str) -> dict:
    """The extract's data dictionary (as the hub wrote it) and its files' names and sizes."""
    out: dict[str, Any] = {"data_dir": data_dir, "files": [], "dictionary": None}
    try:
        entries = sorted(os.scandir(data_dir), key=lambda e: e.name)
    except OSError:
        out["message"] = f"No extract is mounted at {data_dir} in this workspace."
        return out
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
            name = entry.name
            if name in (DICTIONARY_FILE, "DATA_DICTIONARY.md", "MANIFEST.json"):
                continue
            out["files"].append({"name": name, "size": entry.stat(follow_symlinks=False).st_size})
    path = os.path.join(data_dir, DICTIONARY_FILE)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_DICTIONARY_BYTES + 1)
        if len(raw) > MAX_DICTIONARY_BYTES:
            out["message"] = "The data dictionary is too large to show here."
        else:
            out["dictionary"] = json.loads(raw)
    except (OSError, ValueError):
        out["message"] = "This extract has no readable data dictionary."
    return out


class RoutesHandler(EgressAPIHandler):
    """``GET egress/api/routes``: every route of this server and what it may return
    (:mod:`egress_extension.routes`)."""

    @web.authenticated
    def get(self) -> None:
        found = getattr(self.egress, "routes", None) or []
        self.reply({"routes": [f.as_dict() for f in found]})


class PageHandler(JupyterHandler):
    """``GET egress/``: the export page."""

    @web.authenticated
    def get(self) -> None:
        ext: EgressApp = self.settings["egress_extension"]
        page = _jinja.get_template("egress.html").render(
            api=url_path_join(self.base_url, "egress", "api") + "/",
            lab_url=url_path_join(self.base_url, "lab"),
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else "",
            allowed=", ".join(ext.policy.allowed_suffixes),
            max_size=human_size(ext.policy.max_file_size),
            max_files=ext.max_files,
            version=__version__,
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(page)


def handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    """The extension's own (URL pattern below the base URL, handler) pairs."""
    return [
        (r"/egress/api/status", StatusHandler),
        (r"/egress/api/activity", ActivityStatusHandler),
        (r"/egress/api/requests", RequestsHandler),
        (r"/egress/api/requests/(\d+)/versions", RequestsHandler),
        (r"/egress/api/requests/(\d+)/withdraw", WithdrawHandler),
        (r"/egress/api/files", FilesHandler),
        (r"/egress/api/checks", ChecksHandler),
        (r"/egress/api/routes", RoutesHandler),
        (r"/egress/api/clipboard", ClipboardHandler),
        (r"/egress/api/data", DataHandler),
        (r"/egress/?", PageHandler),
    ]
