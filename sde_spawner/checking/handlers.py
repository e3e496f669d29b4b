"""Tornado handlers of output checking, mounted on the ``sde`` service by :func:`routes`.

Two kinds of caller, never mixed:

* **workspaces** call ``{prefix}api/exports…`` with their own server token
  (``Authorization: token …``); the requester and project come from
  :func:`~sde_spawner.services.identity.identify_workspace`, never from the body;
* **people** use the pages (``checking/``, ``releases/``) with their hub login (HubOAuth
  cookie). Every page derives from :class:`~sde_spawner.services.pages.BrowserPage`, the one
  guard of the service's pages: any page request that carries a token in any form HubAuth
  accepts is refused (403) and audited, and forms need their xsrf token: a workspace or API
  token can never review, approve or download a release.

Handlers only translate HTTP to :mod:`~sde_spawner.checking.logic` calls (run off the event
loop through :func:`~sde_spawner.checking.logic.perform`) and back. Settings (environment):
the export rules ``SDE_EXPORT_*`` (:mod:`sde_airlock.rules`; uploads are checked as they
stream in, :mod:`~sde_spawner.checking.uploads`), ``SDE_CHECKING_PREVIEW_ROWS`` (CSV rows
shown, default 1000), ``SDE_CHECKING_PAGE_NETWORKS`` (where people's pages may be requested from:
the proxy's addresses, default loopback; workspaces reach the service port directly from their
gateway and get no page even with a login); blobs and the signing key live under
``SDE_STATE_DIR``. Flood limits, body limits and quotas (``SDE_LIMIT_*``) are
:mod:`~sde_spawner.checking.limits`, applied by :mod:`~sde_spawner.checking.flood`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from urllib.parse import quote

from jupyterhub.utils import url_path_join
from tornado import web

from sde_airlock import sdc
from sde_airlock.rules import ExportRules
from sde_spawner import audit
from sde_spawner.checking import flood, logic, render, uploads
from sde_spawner.checking import limits as limits_mod
from sde_spawner.checking import manifest as manifest_mod
from sde_spawner.checking.states import REASON_CODES, Decision, State
from sde_spawner.checking.storage import BlobError, BlobStore, BlobWriter
from sde_spawner.services.identity import WorkspaceIdentity, identify_workspace
from sde_spawner.services.pages import BrowserPage

MAX_JSON_BODY = 1024 * 1024
IN_MEMORY_DOWNLOAD = 32 * 1024 * 1024
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
)


# --- per-application context ----------------------------------------------------------------


@dataclass
class Checking:
    """What the handlers share: blob store, limits, signing key, a small preview cache."""

    state_dir: str
    store: BlobStore
    export_rules: ExportRules = logic.DEFAULT_RULES
    preview_rows: int = render.MAX_ROWS
    sdc_rules: sdc.Rules = field(default_factory=sdc.Rules)
    _key: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _previews: OrderedDict = field(default_factory=OrderedDict)
    _checks: OrderedDict = field(default_factory=OrderedDict)

    @classmethod
    def from_settings(cls, settings: dict) -> Checking:
        sde = settings["sde"]  # the service's settings object (services.settings)
        return cls(
            state_dir=sde.state_dir,
            store=BlobStore.for_state_dir(sde.state_dir),
            export_rules=sde.export_rules(),
            preview_rows=sde.preview_rows,
            sdc_rules=sde.sdc_rules(),
        )

    @property
    def max_file_bytes(self) -> int:
        return self.export_rules.max_file_bytes

    def signing_key(self):
        with self._lock:
            if self._key is None:
                self._key = manifest_mod.load_or_create_key(self.state_dir)
            return self._key

    def _cached(self, cache: OrderedDict, key: tuple, limit: int, make):
        """``make()`` once per key (blobs never change), keeping the ``limit`` latest."""
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        value = make()
        with self._lock:
            cache[key] = value
            while len(cache) > limit:
                cache.popitem(last=False)
        return value

    def preview(self, ref: logic.BlobRef) -> render.Rendered:
        """The preview of a verified blob."""
        # the rendered page names the file: keyed by path too, so one project's preview never
        # names another project's file with the same bytes
        key = (ref.sha256, ref.path, self.preview_rows)
        return self._cached(
            self._previews,
            key,
            32,
            lambda: render.render(
                ref.path,
                self.store.read_verified(ref.blob_key, ref.sha256),
                max_rows=self.preview_rows,
            ),
        )

    def checks(self, path: str, sha256: str, blob_key: str) -> sdc.Report:
        """The automated disclosure checks of a verified blob."""
        return self._cached(
            self._checks,
            (sha256, path),
            256,
            lambda: sdc.check(path, self.store.read_verified(blob_key, sha256), self.sdc_rules),
        )


def checking(handler: web.RequestHandler) -> Checking:
    settings = handler.application.settings
    ctx = settings.get("sde_checking")
    if ctx is None:
        ctx = settings["sde_checking"] = Checking.from_settings(settings)
    return ctx


# --- shared handler behaviour ---------------------------------------------------------------


def _message(handler: web.RequestHandler, kwargs: dict) -> str:
    exc = kwargs.get("exc_info", (None, None))[1]
    if isinstance(exc, web.HTTPError) and exc.log_message:
        return exc.log_message % exc.args
    return handler._reason


class _Base(web.RequestHandler):
    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    @property
    def checking(self) -> Checking:
        return checking(self)

    async def run(self, operation, /, *args, **kwargs):
        """A logic operation in its own transaction off the event loop; refusals -> HTTP."""
        try:
            return await asyncio.to_thread(
                logic.perform, self.settings["sessionmaker"], operation, *args, **kwargs
            )
        except logic.Refused as exc:
            self._refused = exc  # its code and problems go into the error body
            raise web.HTTPError(exc.status, exc.reason.replace("%", "%%")) from None

    async def deny(
        self,
        action: str,
        reason: str,
        *,
        actor: str | None,
        project: str | None = None,
        status: int = 403,
    ):
        """Audit a refusal decided in the handler (not in logic), then raise it."""
        exc = logic.Refused(
            action,
            reason,
            actor=actor,
            project=project,
            details={"path": self.request.path, "remote": self.request.remote_ip},
            status=status,
        )
        if not flood.admit_denial(self, exc):  # over the caller's refusal budget: counted
            raise web.HTTPError(status, reason.replace("%", "%%"))

        def write():
            with self.settings["sessionmaker"]() as s:
                logic.record_denial(s, exc)
                s.commit()

        await asyncio.to_thread(write)
        raise web.HTTPError(status, reason.replace("%", "%%"))

    def _bearer(self) -> str:
        auth = self.request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() in ("token", "bearer") else ""


# --- workspace API --------------------------------------------------------------------------


@web.stream_request_body
class WorkspaceApiHandler(flood.Limited, _Base):
    """Token-authenticated with a running workspace's own server token. Bodies are streamed
    in and limited (``SDE_LIMIT_JSON_BODY_BYTES``) before they are buffered."""

    action = "export.api"

    def check_xsrf_cookie(self):  # token-authenticated API, no cookies
        return

    async def prepare(self):
        self._body: list[bytes] = []
        await self.gate()
        await self.check_ids()
        await self.limit_body(self.limits.settings.json_body_bytes)

    def data_received(self, chunk: bytes):
        self._body.append(chunk)

    async def identify(self) -> WorkspaceIdentity:
        token = self._bearer()
        if not token:
            await self.deny(self.action, "a workspace token is required", actor=None, status=401)
        whoami = await self.settings["hub_auth"].user_for_token(token, sync=False)

        def lookup():
            with self.settings["sessionmaker"]() as s:
                return identify_workspace(s, whoami)

        ident = await asyncio.to_thread(lookup)
        if ident is None:
            who = (whoami or {}).get("name")
            await self.deny(
                self.action,
                "only a running workspace's own token may use the export API",
                actor=str(who)[:64] if who else None,
            )
        if not ident.accepts(self.request.remote_ip):
            await self.deny(
                self.action,
                ident.refusal(self.request.remote_ip),
                actor=ident.username,
                project=ident.project,
            )
        await self.gate([("user", ident.username)])
        return ident

    async def json_body(self, ident: WorkspaceIdentity) -> object:
        try:
            return limits_mod.parse_json(b"".join(self._body))
        except ValueError as exc:
            problem = str(exc)
        await self.deny(
            self.action, problem, actor=ident.username, project=ident.project, status=400
        )

    def send(self, obj, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def write_error(self, status_code, **kwargs):
        self.set_retry_after()
        self.set_header("Content-Type", "application/json")
        body = {"status": status_code, "message": _message(self, kwargs)}
        refused = getattr(self, "_refused", None)
        if refused is not None and "code" in refused.details:
            body["code"] = refused.details["code"]
            body["problems"] = refused.details.get("problems", [])
        self.finish(json.dumps(body))

    def upload_urls(self, result: dict) -> dict:
        prefix = self.settings["sde"].prefix
        return {
            **result,
            "uploads": [
                {
                    "index": f["index"],
                    "path": f["path"],
                    "url": url_path_join(prefix, f"api/exports/{result['id']}/files/{f['index']}"),
                    "uploaded": f["uploaded"],
                }
                for f in result.pop("files")
            ],
        }


class ExportsHandler(WorkspaceApiHandler):
    """``GET``: the caller's requests on its project. ``POST``: a new draft request."""

    async def get(self):
        self.action = "export.listed"
        ident = await self.identify()
        items = await self.run(logic.list_own, ident.username, ident.project)
        self.send({"requests": items})

    async def post(self):
        self.action = "export.created"
        ident = await self.identify()
        body = await self.json_body(ident)
        result = await self.run(
            logic.create_request,
            ident.username,
            ident.project,
            ident.server_name,
            body,
            rules=self.checking.export_rules,
            quotas=self.limits.settings,
        )
        self.send(self.upload_urls(result), 201)


class ExportHandler(WorkspaceApiHandler):
    async def get(self, request_id):
        self.action = "export.viewed"
        ident = await self.identify()
        self.send(await self.run(logic.get_own, ident.username, ident.project, int(request_id)))


class VersionsHandler(WorkspaceApiHandler):
    """``POST``: a new snapshot version of a returned request."""

    async def post(self, request_id):
        self.action = "export.version.created"
        ident = await self.identify()
        body = await self.json_body(ident)
        result = await self.run(
            logic.new_version,
            ident.username,
            ident.project,
            int(request_id),
            body,
            rules=self.checking.export_rules,
            quotas=self.limits.settings,
        )
        self.send(self.upload_urls(result), 201)


class SubmitHandler(WorkspaceApiHandler):
    async def post(self, request_id):
        self.action = "export.submitted"
        ident = await self.identify()
        self.send(await self.run(logic.submit, ident.username, ident.project, int(request_id)))


class WithdrawHandler(WorkspaceApiHandler):
    async def post(self, request_id):
        self.action = "export.withdrawn"
        ident = await self.identify()
        self.send(await self.run(logic.withdraw, ident.username, ident.project, int(request_id)))


def _free_bytes(directory: str) -> int:
    """Free bytes of the filesystem holding ``directory`` (the database, keys and blobs)."""
    os.makedirs(directory, exist_ok=True)
    return shutil.disk_usage(directory).free


#: Pieces of an upload handed to its writer thread and not yet hashed and written: bounds the
#: memory one upload holds (pieces are at most the service's ``HTTP_CHUNK_SIZE``).
UPLOAD_INFLIGHT = 4


@web.stream_request_body
class UploadHandler(WorkspaceApiHandler):
    """``PUT`` the raw bytes of one declared file; streamed to the blob store while hashed.

    The body arrives on the event loop piece by piece; each piece is handed, in order, to the
    upload's own writer thread, which hashes it and appends it to the blob's temporary file.
    Receiving the next piece therefore overlaps hashing and writing the previous ones (up to
    ``UPLOAD_INFLIGHT`` pieces), and the loop never waits on the disk.
    """

    action = "export.file.uploaded"
    _writer: BlobWriter | None = None
    _upload: uploads.CheckedUpload | None = None
    _ident: WorkspaceIdentity | None = None
    _target: logic.UploadTarget | None = None
    _pipe: ThreadPoolExecutor | None = None
    _failed: str | None = None

    async def prepare(self):
        if self.request.method != "PUT":
            raise web.HTTPError(405)
        await self.gate()
        await self.check_ids()
        self._ident = await self.identify()
        request_id, index = (int(x) for x in self.path_args)
        free = await asyncio.to_thread(_free_bytes, self.checking.state_dir)
        target = await self.run(
            logic.upload_target,
            self._ident.username,
            self._ident.project,
            request_id,
            index,
            quotas=self.limits.settings,
            free_bytes=free,
        )
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != target.size:
            await self.deny(
                self.action,
                f"Content-Length {length} differs from the declared size {target.size}",
                actor=self._ident.username,
                project=self._ident.project,
                status=400,
            )
        self.request.connection.set_max_body_size(target.size)
        try:
            self._writer = self.checking.store.writer(
                target.size, target.sha256, self.checking.max_file_bytes
            )
        except BlobError as exc:
            await self.deny(
                self.action,
                str(exc),
                actor=self._ident.username,
                project=self._ident.project,
                status=400,
            )
        self._upload = uploads.CheckedUpload(self._writer, target.path, self.checking.export_rules)
        self._target = target
        self._pipe = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sde-upload")
        self._inflight: deque[asyncio.Future] = deque()

    async def _settle(self) -> None:
        """Wait for the oldest piece in flight; keep the first failure for :meth:`put`."""
        try:
            await self._inflight.popleft()
        except (BlobError, OSError, ValueError) as exc:
            if self._failed is None:
                self._failed = str(exc)

    async def data_received(self, chunk: bytes):
        if self._failed is not None:
            return  # the rest of the body is read and dropped; put() reports the failure
        self._inflight.append(asyncio.wrap_future(self._pipe.submit(self._upload.write, chunk)))
        while self._inflight and (
            len(self._inflight) > UPLOAD_INFLIGHT or self._inflight[0].done()
        ):
            await self._settle()

    async def put(self, request_id, index):
        while self._inflight:
            await self._settle()
        if self._pipe is None:
            return  # the workspace hung up meanwhile: the upload was aborted
        try:
            if self._failed is not None:
                raise BlobError(self._failed)
            key, content = await asyncio.wrap_future(self._pipe.submit(self._upload.finish))
        except BlobError as exc:
            await self.deny(
                self.action,
                str(exc),
                actor=self._ident.username,
                project=self._ident.project,
                status=400,
            )
        result = await self.run(
            logic.accept_upload,
            self._ident.username,
            self._ident.project,
            self._target,
            key,
            content=content,
        )
        self.send(result)

    def _close_pipe(self) -> None:
        """Abort the upload after any piece still in flight (a no-op after ``finish``)."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:  # once: on_finish and on_connection_close may both come
            pipe.submit(self._writer.abort)
            pipe.shutdown(wait=False)

    def on_finish(self):
        self._close_pipe()

    def on_connection_close(self):
        self._close_pipe()


class ReleaseKeyHandler(_Base):
    """The public half of the release-signing key (anyone may verify a manifest)."""

    async def get(self):
        key = await asyncio.to_thread(self.checking.signing_key)
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "algorithm": "Ed25519",
                    "public_key_pem": manifest_mod.public_key_pem(key),
                    "manifest_format": manifest_mod.FORMAT,
                }
            )
        )


# --- pages for people -----------------------------------------------------------------------


class PageHandler(BrowserPage, _Base):
    """A page for a person logged in to the hub: :class:`BrowserPage` guards it first."""

    action = "export.page.viewed"

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Frame-Options", "SAMEORIGIN")

    @property
    def username(self) -> str:
        return self.current_user["name"]

    def render_page(self, template: str, **ctx):
        prefix = self.settings["sde"].prefix
        if self.current_user:
            _ = self.xsrf_token  # every page sets the xsrf cookie its forms (and later ones) need
        self.render(
            template,
            prefix=prefix,
            url=lambda path="": url_path_join(prefix, path),
            user=self.current_user["name"] if self.current_user else None,
            fmt_time=_fmt_time,
            fmt_size=_fmt_size,
            reason_codes=REASON_CODES,
            decisions=list(Decision),
            State=State,
            **ctx,
        )

    def write_error(self, status_code, **kwargs):
        message = _message(self, kwargs)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        try:
            self.render_page("error.html", status=status_code, message=message)
        except Exception:
            self.finish(f"{status_code}: {web.escape.xhtml_escape(message)}")


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class IndexHandler(PageHandler):
    async def get(self):
        projects = await self.run(logic.checker_projects, self.username)
        self.render_page("index.html", projects=projects)


class QueueHandler(PageHandler):
    action = "export.queue.viewed"

    async def get(self):
        older = self.get_query_argument("older_than_days", "").strip()
        try:
            older_days = float(older) if older else None
        except ValueError:
            raise web.HTTPError(400, "older_than_days must be a number") from None
        flt = logic.QueueFilter(
            project=self.get_query_argument("project", "") or None,
            state=self.get_query_argument("state", logic.OPEN) or logic.OPEN,
            older_than_days=older_days,
        )
        data = await self.run(logic.queue, self.username, flt)
        self.render_page("queue.html", states=[s.value for s in State], **data)


SDC_LABELS = {
    sdc.FAIL: "rules failed",
    sdc.NOT_FULLY_CHECKED: "not fully checked: look at the raw file",
    sdc.REVIEW: "needs review",
    sdc.INFO: "nothing to check automatically",
    sdc.PASS: "no findings",
}


class RequestPageHandler(PageHandler):
    action = "export.request.viewed"

    async def get(self, request_id):
        data = await self.run(logic.review_page, self.username, int(request_id))
        checks = {}
        for f in data["files"]:
            try:
                checks[f["id"]] = await asyncio.to_thread(
                    self.checking.checks, f["path"], f["sha256"], f["blob_key"]
                )
            except BlobError as exc:  # the preview says the same; the page still opens
                checks[f["id"]] = sdc.Report(
                    "other",
                    ["nothing"],
                    [sdc.Finding("manual", sdc.REVIEW, "file", str(exc))],
                )
        flash = self.get_query_argument("done", "")
        self.render_page("request.html", flash=flash, checks=checks, sdc_labels=SDC_LABELS, **data)


class ClaimHandler(PageHandler):
    action = "export.claimed"

    async def post(self, request_id):
        await self.run(logic.claim, self.username, int(request_id))
        self.redirect(url_path_join(self.settings["sde"].prefix, f"checking/requests/{request_id}"))


class ReviewHandler(PageHandler):
    action = "export.reviewed"

    async def post(self, request_id):
        try:
            version = int(self.get_body_argument("version"))
        except (ValueError, web.MissingArgumentError):
            raise web.HTTPError(400, "the review form is missing its version") from None
        verdicts = {}
        for name in self.request.body_arguments:
            if not name.startswith("decision-"):
                continue
            try:
                file_id = int(name.removeprefix("decision-"))
            except ValueError:
                continue
            verdicts[file_id] = logic.FileVerdict(
                decision=self.get_body_argument(name, ""),
                reason_code=self.get_body_argument(f"reason-{file_id}", "") or None,
                comment=self.get_body_argument(f"comment-{file_id}", ""),
            )
        failed = await self._failed_checks(int(request_id))
        result = await self.run(
            logic.submit_review, self.username, int(request_id), version, verdicts, failed
        )
        done = result["outcome"] or "reviewed"
        self.redirect(
            url_path_join(self.settings["sde"].prefix, f"checking/requests/{request_id}")
            + f"?done={done}"
        )

    async def _failed_checks(self, request_id: int) -> dict[str, str]:
        """sha256 -> the automated rules each file of the current version fails."""

        def files():
            with self.settings["sessionmaker"]() as s:
                return logic.current_files(s, request_id)

        failed = {}
        for path, sha, key in await asyncio.to_thread(files):
            if key is None:
                continue
            try:
                report = await asyncio.to_thread(self.checking.checks, path, sha, key)
            except BlobError:
                continue  # the preview and the release re-check the blob and refuse
            # A rule failed, or part of the file could not be checked: approving needs a comment.
            rules = sorted(
                {f.rule for f in report.findings if f.status in (sdc.FAIL, sdc.NOT_FULLY_CHECKED)}
            )
            if rules:
                failed[sha] = ", ".join(rules)
        return failed


class PreviewHandler(PageHandler):
    """The safe preview document of one file, framed by the request page; on the ``raw``
    route (``view="raw"``) the file's exact bytes escaped, a page at a time
    (``?page=N&as=text|hex``, ``framed=1`` from the request page's frame), same headers."""

    action = "export.file.viewed"

    def initialize(self, view: str = "preview"):
        self.view = view

    async def get(self, file_id):
        from sde_spawner.checking import render_raw  # here: keeps this class's edits local

        page, mode = 1, "auto"
        framed = self.get_query_argument("framed", "") == "1"
        if self.view == "raw":
            page_arg = self.get_query_argument("page", "1")
            mode = self.get_query_argument("as", "auto") or "auto"
            if not page_arg.isdigit() or int(page_arg) < 1 or mode not in render_raw.MODES:
                await self.deny(
                    self.action,
                    "the raw view takes page=1, 2, … and as=text or as=hex",
                    actor=self.username,
                    status=400,
                )
            page = int(page_arg)
        ref = await self.run(logic.file_for_checker, self.username, int(file_id))
        try:
            if self.view == "raw":
                document = await asyncio.to_thread(self._raw, ref, page, mode, framed)
            else:
                document = (await asyncio.to_thread(self.checking.preview, ref)).html
        except BlobError as exc:
            await self.deny(self.action, str(exc), actor=self.username, status=500)
        except render_raw.RawError as exc:
            await self.deny(self.action, str(exc), actor=self.username, status=404)
        for name, value in render.PREVIEW_HEADERS.items():
            self.set_header(name, value)
        self.set_header("X-Frame-Options", "SAMEORIGIN")
        self.finish(document)

    def _raw(self, ref: logic.BlobRef, page: int, mode: str, framed: bool) -> str:
        from sde_spawner.checking import render_raw

        with self.checking.store.open_verified(ref.blob_key, ref.sha256) as fh:
            size = fh.seek(0, os.SEEK_END)
            return render_raw.raw_page(ref.path, fh, size, page=page, mode=mode, framed=framed).html


class ReleasesHandler(PageHandler):
    action = "export.releases.viewed"

    async def get(self):
        items = await self.run(logic.releases, self.username)
        self.render_page("releases.html", items=items)


class DownloadHandler(flood.Limited, PageHandler):
    """Approved bytes, verified before the first byte is served; every download audited with
    the person's address (the proxy's last X-Forwarded-For hop), within the flood limits."""

    action = "export.release.downloaded"

    async def before_guard(self):
        await self.gate()

    async def after_guard(self):
        await self.check_ids(actor=self.current_user and self.current_user.get("name"))

    def write_error(self, status_code, **kwargs):
        self.set_retry_after()
        super().write_error(status_code, **kwargs)

    async def get(self, request_id, file_id):
        ref = await self.run(
            logic.release_file_by_number, self.username, int(request_id), int(file_id)
        )
        store = self.checking.store
        data = fh = None
        try:
            if ref.size <= IN_MEMORY_DOWNLOAD:
                data = await asyncio.to_thread(store.read_verified, ref.blob_key, ref.sha256)
            else:  # hashed whole through the descriptor it is then served from
                fh = await asyncio.to_thread(store.open_verified_handle, ref.blob_key, ref.sha256)
        except BlobError as exc:
            await self.deny(
                self.action,
                f"integrity check failed, nothing was released: {exc}",
                actor=self.username,
                status=500,
            )
        try:
            await self.run(logic.record_download, self.username, ref, self.client_ip)
            name = PurePosixPath(ref.path).name
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header(
                "Content-Disposition",
                f"attachment; filename=\"{_ascii_name(name)}\"; filename*=UTF-8''{quote(name)}",
            )
            self.set_header("Content-Length", str(ref.size))
            digest = base64.b64encode(bytes.fromhex(ref.sha256)).decode()
            self.set_header("Repr-Digest", f"sha-256=:{digest}:")
            self.set_header("X-SDE-SHA256", ref.sha256)
            if data is not None:
                self.finish(data)
                return
            await self._stream(ref, fh)
        finally:
            if fh is not None:
                fh.close()

    async def _stream(self, ref: logic.BlobRef, fh):
        """Serve the verified descriptor; hashing again as it goes is a second line (a blob
        changed in place meanwhile breaks the download instead of completing it)."""
        import hashlib

        h = hashlib.sha256()
        while chunk := await asyncio.to_thread(fh.read, 1024 * 1024):
            h.update(chunk)
            self.write(chunk)
            await self.flush()
        if h.hexdigest() != ref.sha256:
            await asyncio.to_thread(self._record_error, ref)
            self.request.connection.close()
            return
        self.finish()

    def _record_error(self, ref: logic.BlobRef) -> None:
        with self.settings["sessionmaker"]() as s:
            audit.append(
                s,
                self.action,
                actor=self.username,
                project=ref.project,
                outcome="error",
                reason="blob changed while it was served; download aborted",
                details={"request": ref.request_id, "file": ref.file_id},
            )
            s.commit()


def _ascii_name(name: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)


class ManifestHandler(PageHandler):
    action = "export.manifest.viewed"

    async def get(self, request_id, kind):
        _rid, _project, text = await self.run(
            logic.release_manifest_by_number, self.username, int(request_id)
        )
        if kind == "json":
            self.set_header("Content-Type", "application/json")
            self.finish(text.encode("utf-8"))
            return
        key = await asyncio.to_thread(self.checking.signing_key)
        self.set_header("Content-Type", "text/plain; charset=us-ascii")
        self.finish(manifest_mod.sign(key, text) + "\n")


def routes(prefix: str) -> list[tuple]:
    def u(path: str) -> str:
        return url_path_join(prefix, path)

    return [
        (u("api/exports"), ExportsHandler),
        (u(r"api/exports/(\d+)"), ExportHandler),
        (u(r"api/exports/(\d+)/files/(\d+)"), UploadHandler),
        (u(r"api/exports/(\d+)/versions"), VersionsHandler),
        (u(r"api/exports/(\d+)/submit"), SubmitHandler),
        (u(r"api/exports/(\d+)/withdraw"), WithdrawHandler),
        (u("api/release-key"), ReleaseKeyHandler),
        (prefix, IndexHandler),
        (u("checking/?"), QueueHandler),
        (u(r"checking/requests/(\d+)"), RequestPageHandler),
        (u(r"checking/requests/(\d+)/claim"), ClaimHandler),
        (u(r"checking/requests/(\d+)/review"), ReviewHandler),
        (u(r"checking/files/(\d+)/render"), PreviewHandler),
        (u(r"checking/files/(\d+)/raw"), PreviewHandler, {"view": "raw"}),
        (u("releases/?"), ReleasesHandler),
        (u(r"releases/(\d+)/files/(\d+)"), DownloadHandler),
        (u(r"releases/(\d+)/manifest\.(json|sig)"), ManifestHandler),
    ]
