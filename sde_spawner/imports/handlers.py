"""Pages of imports on the ``sde`` service, mounted by :func:`routes` under ``{prefix}imports/``.

Every page is a :class:`~sde_spawner.checking.pages.PageHandler`, so the service's one page
guard (:class:`~sde_spawner.services.pages.BrowserPage`) runs first: a person's browser login
only, never a token, never from a workspace's address, and forms need their xsrf token. Imports
therefore start *outside* the workspace, as the issue asks.

* ``imports/`` — the member's page: the upload form and their requests;
* ``imports/new`` — the upload (``multipart/form-data``), streamed in up to
  ``SDE_IMPORT_MAX_REQUEST_BYTES`` plus a little for the form fields; the xsrf token rides in
  the form's action URL because the guard runs before a streamed body is read;
* ``imports/review/`` — the checkers' queue; ``imports/requests/<id>`` a request with safe
  previews (the export side's renderer, sandboxed) and the decision form;
* ``imports/files/<id>/render`` — the preview document of one file.

Handlers only translate HTTP into :mod:`sde_spawner.imports.logic` operations, which run off
the event loop through :func:`~sde_spawner.checking.errors.perform`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from jupyterhub.utils import url_path_join
from tornado import httputil, web

from sde_airlock.imports import ImportRules
from sde_spawner.checking import render
from sde_spawner.checking.pages import PageHandler
from sde_spawner.checking.storage import BlobError, BlobStore
from sde_spawner.imports import logic
from sde_spawner.imports.materialise import blob_store
from sde_spawner.imports.states import Action, Decision
from sde_spawner.services.pages import BROWSER_ONLY, TOKEN_ARGUMENTS

#: Room for the form's own fields (project, justification, description, part headers).
FORM_OVERHEAD = 1024 * 1024


@dataclass
class Imports:
    """What the import pages share: their blob store, the rules, the preview length."""

    store: BlobStore
    rules: ImportRules
    preview_rows: int = render.MAX_ROWS

    @classmethod
    def from_settings(cls, settings: dict) -> Imports:
        sde = settings["sde"]  # the service's settings object (services.settings)
        return cls(
            store=blob_store(os.path.join(sde.state_dir, "imports")),
            rules=sde.import_rules(),
            preview_rows=sde.preview_rows,
        )


class ImportPage(PageHandler):
    action = str(Action.page)

    @property
    def imports(self) -> Imports:
        ctx = self.settings.get("sde_imports")
        if ctx is None:
            ctx = self.settings["sde_imports"] = Imports.from_settings(self.settings)
        return ctx

    def go(self, path: str, done: str = "") -> None:
        url = url_path_join(self.settings["sde"].prefix, path)
        self.redirect(url + (f"?done={done}" if done else ""))


class OwnHandler(ImportPage):
    async def get(self):
        data = await self.run(logic.own_page, self.username)
        self.render_page(
            "imports/own.html",
            rules=self.imports.rules,
            done=self.get_query_argument("done", ""),
            **data,
        )


@web.stream_request_body
class UploadHandler(ImportPage):
    """The upload form's target: the guard first, then the body, bounded, then the checks."""

    action = str(Action.refused)

    async def after_guard(self):
        """The body limit, once the page guard let the person in (its refusals come before
        a byte of the body is read)."""
        self._chunks: list[bytes] = []
        limit = self.imports.rules.max_request_bytes + FORM_OVERHEAD
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            await self.deny(
                self.action,
                f"the upload is {int(length)} bytes, over the limit of {limit} bytes "
                f"(files may hold {self.imports.rules.max_request_bytes} bytes together)",
                actor=self.username,
                status=413,
            )
        self.request.connection.set_max_body_size(limit)

    def data_received(self, chunk: bytes):
        self._chunks.append(chunk)

    async def post(self):
        args: dict[str, list[bytes]] = {}
        files: dict[str, list[httputil.HTTPFile]] = {}
        httputil.parse_body_arguments(
            self.request.headers.get("Content-Type", ""), b"".join(self._chunks), args, files
        )
        self._chunks = []
        if any(name in args for name in TOKEN_ARGUMENTS):  # never read, but never taken either
            await self.refuse(
                f"{BROWSER_ONLY} (this request carried a 'token' form field)",
                actor=self.username,
            )

        def text(name: str) -> str:
            return b"".join(args.get(name, [b""])[:1]).decode("utf-8", "replace")

        uploads = [
            logic.Upload(f.filename, f.body)
            for f in files.get("files", [])
            if f.filename or f.body  # an empty file input sends one nameless, empty part
        ]
        result = await self.run(
            logic.submit_import,
            self.imports.store,
            self.imports.rules,
            self.username,
            text("project"),
            text("justification"),
            text("description"),
            uploads,
        )
        self.go("imports/", done=f"submitted-{result['id']}")


class QueueHandler(ImportPage):
    async def get(self):
        data = await self.run(logic.queue, self.username)
        self.render_page("imports/queue.html", **data)


class RequestHandler(ImportPage):
    async def get(self, request_id):
        data = await self.run(logic.request_page, self.username, int(request_id))
        self.render_page(
            "imports/request.html",
            r=data,
            done=self.get_query_argument("done", ""),
            import_decisions=list(Decision),
        )


class ReviewHandler(ImportPage):
    action = str(Action.reviewed)

    async def post(self, request_id):
        result = await self.run(
            logic.review,
            self.username,
            int(request_id),
            self.get_body_argument("decision", ""),
            self.get_body_argument("comment", ""),
        )
        self.go(f"imports/requests/{request_id}", done=result["state"])


class WithdrawHandler(ImportPage):
    action = str(Action.withdrawn)

    async def post(self, request_id):
        await self.run(logic.withdraw, self.username, int(request_id))
        self.go("imports/", done="withdrawn")


class RevokeHandler(ImportPage):
    action = str(Action.revoked)

    async def post(self, request_id):
        result = await self.run(
            logic.revoke, self.username, int(request_id), self.get_body_argument("comment", "")
        )
        self.go(f"imports/requests/{request_id}", done=result["state"])


class PreviewHandler(ImportPage):
    """The export side's safe preview of one import file (scripts removed, sandboxed)."""

    action = str(Action.viewed)

    async def get(self, file_id):
        ref = await self.run(logic.file_for_viewer, self.username, int(file_id))
        ctx = self.imports

        def make() -> str:
            data = ctx.store.read_verified(ref.sha256, ref.sha256)
            return render.render(ref.name, data, max_rows=ctx.preview_rows).html

        try:
            document = await asyncio.to_thread(make)
        except BlobError as exc:
            await self.deny(self.action, str(exc), actor=self.username, status=500)
        for name, value in render.PREVIEW_HEADERS.items():
            self.set_header(name, value)
        self.set_header("X-Frame-Options", "SAMEORIGIN")
        self.finish(document)


def routes(prefix: str) -> list[tuple]:
    def u(path: str) -> str:
        return url_path_join(prefix, path)

    return [
        (u("imports/?"), OwnHandler),
        (u("imports/new"), UploadHandler),
        (u("imports/review/?"), QueueHandler),
        (u(r"imports/requests/(\d+)"), RequestHandler),
        (u(r"imports/requests/(\d+)/review"), ReviewHandler),
        (u(r"imports/requests/(\d+)/withdraw"), WithdrawHandler),
        (u(r"imports/requests/(\d+)/revoke"), RevokeHandler),
        (u(r"imports/files/(\d+)/render"), PreviewHandler),
    ]
