"""The output-checking pages for people, mounted on the ``sde`` service (:func:`routes`).

Checkers use ``checking/`` (queue, request page with previews and the automated disclosure
checks, claim, review); requesters use ``releases/`` (outcomes, verified downloads, the signed
manifest). People log in through the hub (HubOAuth cookie). Every page derives from
:class:`~sde_spawner.services.pages.BrowserPage`, the one guard of the service's pages: any
page request that carries a token in any form HubAuth accepts is refused (403) and audited,
and forms need their xsrf token: a workspace or API token can never review, approve or
download a release. ``SDE_CHECKING_PAGE_NETWORKS`` says where pages may be requested from (the
proxy's addresses, default loopback).
"""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import UTC, datetime
from pathlib import PurePosixPath
from urllib.parse import quote

from jupyterhub.utils import url_path_join
from tornado import web

from sde_airlock import sdc
from sde_spawner import audit
from sde_spawner.checking import actions, flood, permissions, policies, queries, render
from sde_spawner.checking import manifest as manifest_mod
from sde_spawner.checking.base import BaseHandler, error_message
from sde_spawner.checking.states import REASON_CODES, Decision, State
from sde_spawner.checking.storage import BlobError
from sde_spawner.services.pages import BrowserPage

IN_MEMORY_DOWNLOAD = 32 * 1024 * 1024
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
)


class PageHandler(BrowserPage, BaseHandler):
    """A page for a person logged in to the hub: :class:`BrowserPage` guards it first."""

    action = "export.page.viewed"

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Frame-Options", "SAMEORIGIN")

    @property
    def username(self) -> str:
        return self.current_user["name"]

    async def request_checks(self, request_id: int) -> dict[str, sdc.Report]:
        """sha256 -> the automated checks of each file of the request's current version,
        differenced against the other files and the project's earlier releases (run after a
        guarded operation: this reads no rows a checker could not see)."""

        def inputs():
            with self.settings["sessionmaker"]() as s:
                return queries.check_inputs(s, request_id)

        files, earlier = await asyncio.to_thread(inputs)
        reports = await asyncio.to_thread(self.checking.request_checks, files, earlier)
        return {sha: report for (_path, sha, _key), report in zip(files, reports, strict=True)}

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
        text = error_message(self, kwargs)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        try:
            self.render_page("error.html", status=status_code, message=text)
        except Exception:
            self.finish(f"{status_code}: {web.escape.xhtml_escape(text)}")


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
        projects = await self.run(permissions.checker_projects, self.username)
        self.render_page("index.html", projects=projects)


class QueueHandler(PageHandler):
    action = "export.queue.viewed"

    async def get(self):
        older = self.get_query_argument("older_than_days", "").strip()
        try:
            older_days = float(older) if older else None
        except ValueError:
            raise web.HTTPError(400, "older_than_days must be a number") from None
        flt = queries.QueueFilter(
            project=self.get_query_argument("project", "") or None,
            state=self.get_query_argument("state", queries.OPEN) or queries.OPEN,
            older_than_days=older_days,
        )
        data = await self.run(queries.queue, self.username, flt)
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
        data = await self.run(queries.review_page, self.username, int(request_id))
        reports = await self.request_checks(int(request_id))
        unchecked = sdc.Report(
            "other", ["nothing"], [sdc.Finding("manual", sdc.REVIEW, "file", "reload the page")]
        )
        checks = {f["id"]: reports.get(f["sha256"], unchecked) for f in data["files"]}
        flash = self.get_query_argument("done", "")
        self.render_page("request.html", flash=flash, checks=checks, sdc_labels=SDC_LABELS, **data)


class ClaimHandler(PageHandler):
    action = "export.claimed"

    async def post(self, request_id):
        await self.run(actions.claim, self.username, int(request_id))
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
            verdicts[file_id] = policies.FileVerdict(
                decision=self.get_body_argument(name, ""),
                reason_code=self.get_body_argument(f"reason-{file_id}", "") or None,
                comment=self.get_body_argument(f"comment-{file_id}", ""),
            )
        reports = await self.request_checks(int(request_id))
        checks = policies.AutomatedChecks.of(reports, self.checking.sdc_rules)
        result = await self.run(
            actions.submit_review, self.username, int(request_id), version, verdicts, checks
        )
        done = result["outcome"] or "reviewed"
        self.redirect(
            url_path_join(self.settings["sde"].prefix, f"checking/requests/{request_id}")
            + f"?done={done}"
        )


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
        ref = await self.run(queries.file_for_checker, self.username, int(file_id))
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

    def _raw(self, ref: queries.BlobRef, page: int, mode: str, framed: bool) -> str:
        from sde_spawner.checking import render_raw

        with self.checking.store.open_verified(ref.blob_key, ref.sha256) as fh:
            size = fh.seek(0, os.SEEK_END)
            return render_raw.raw_page(ref.path, fh, size, page=page, mode=mode, framed=framed).html


class ReleasesHandler(PageHandler):
    action = "export.releases.viewed"

    async def get(self):
        items = await self.run(queries.releases, self.username)
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
            queries.release_file_by_number, self.username, int(request_id), int(file_id)
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
            await self.run(actions.record_download, self.username, ref, self.client_ip)
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

    async def _stream(self, ref: queries.BlobRef, fh):
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

    def _record_error(self, ref: queries.BlobRef) -> None:
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
            queries.release_manifest_by_number, self.username, int(request_id)
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
