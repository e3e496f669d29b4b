"""What the output-checking handlers share: the per-application :class:`Checking` context
(blob store, export and disclosure rules, signing key, caches of previews and of each request's
automated checks) and :class:`BaseHandler` (headers, running an operation off the event loop
through :func:`~sde_spawner.checking.errors.perform`, audited refusals).

The handlers themselves are :mod:`~sde_spawner.checking.api` (workspaces, with their own server
token) and :mod:`~sde_spawner.checking.pages` (people, with their hub login); they only
translate HTTP to :mod:`~sde_spawner.checking.actions` / :mod:`~sde_spawner.checking.queries`
calls and back. Settings (environment): the export rules ``SDE_EXPORT_*``
(:mod:`sde_airlock.rules`; uploads are checked as they stream in,
:mod:`~sde_spawner.checking.uploads`), the disclosure rules ``SDE_SDC_*``
(:mod:`sde_airlock.sdc`), ``SDE_CHECKING_PREVIEW_ROWS`` (CSV rows shown, default 1000); blobs
and the signing key live under ``SDE_STATE_DIR``. Flood limits, body limits and quotas
(``SDE_LIMIT_*``) are :mod:`~sde_spawner.checking.limits`, applied by
:mod:`~sde_spawner.checking.flood`.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from tornado import web

from sde_airlock import sdc
from sde_airlock.rules import ExportRules
from sde_spawner.checking import errors, flood, policies, queries, render
from sde_spawner.checking import manifest as manifest_mod
from sde_spawner.checking.storage import BlobError, BlobStore
from sde_spawner.db import database_unavailable

# --- per-application context ----------------------------------------------------------------


@dataclass
class Checking:
    """What the handlers share: blob store, limits, signing key, a small preview cache."""

    state_dir: str
    store: BlobStore
    export_rules: ExportRules = policies.DEFAULT_RULES
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

    def preview(self, ref: queries.BlobRef) -> render.Rendered:
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
        """The automated disclosure checks of one verified blob on its own."""
        return self._cached(
            self._checks,
            (sha256, path),
            256,
            lambda: sdc.check(path, self.store.read_verified(blob_key, sha256), self.sdc_rules),
        )

    def request_checks(
        self,
        files: list[tuple[str, str, str | None]],
        earlier: list[queries.ReleasedFile],
    ) -> list[sdc.Report]:
        """The automated checks of a request's files (``(path, sha256, blob key)``, as
        :func:`~sde_spawner.checking.queries.check_inputs` gives them), in order: each file's
        own checks, plus ``differencing`` of its tables against the other files and against
        the project's ``earlier`` releases (read from the blob store, verified). A file whose
        bytes cannot be read gets one ``manual`` finding saying why; an earlier release that
        cannot be read a ``differencing`` finding to review saying it was not compared."""
        key = (
            "request",
            tuple((p, s) for p, s, _ in files),
            tuple((e.label, e.sha256) for e in earlier),
        )
        return self._cached(self._checks, key, 64, lambda: self._request_checks(files, earlier))

    def _request_checks(self, files, earlier) -> list[sdc.Report]:
        reports, readable, against, unread = [], [], [], []
        for path, sha, blob_key in files:
            try:
                if blob_key is None:
                    raise BlobError(f"{path} was never uploaded")
                data = self.store.read_verified(blob_key, sha)
                own = self.checks(path, sha, blob_key)
            except BlobError as exc:  # the preview says the same; the page still opens
                reports.append(
                    sdc.Report(
                        "other", ["nothing"], [sdc.Finding("manual", sdc.REVIEW, "file", str(exc))]
                    )
                )
                continue
            reports.append(sdc.Report(own.kind, list(own.checked), list(own.findings)))
            readable.append((path, data))
        for release in earlier:
            try:
                data = self.store.read_verified(release.blob_key, release.sha256)
            except BlobError as exc:
                unread.append(
                    sdc.Finding(
                        "differencing",
                        sdc.REVIEW,
                        "file",
                        f"{release.label} could not be read ({exc}): not compared with it",
                    )
                )
                continue
            against.append((release.label, release.path, data))
        extra = sdc.differencing_findings(readable, against, self.sdc_rules)
        for (path, _sha, _key), report in zip(files, reports, strict=True):
            if path in extra:
                report.findings.extend(extra[path] + unread)
        return reports


def checking(handler: web.RequestHandler) -> Checking:
    settings = handler.application.settings
    ctx = settings.get("sde_checking")
    if ctx is None:
        ctx = settings["sde_checking"] = Checking.from_settings(settings)
    return ctx


# --- shared handler behaviour ---------------------------------------------------------------


def error_message(handler: web.RequestHandler, kwargs: dict) -> str:
    exc = kwargs.get("exc_info", (None, None))[1]
    if isinstance(exc, web.HTTPError) and exc.log_message:
        return exc.log_message % exc.args
    return handler._reason


#: Seconds a client is told to wait (``Retry-After``) before sending again a request that
#: failed because the database or the disk was not there for it.
FAULT_RETRY_AFTER = 5
DATABASE_UNAVAILABLE = (
    "the registry database is unavailable (restarting or unreachable); nothing of this "
    "request was saved: send it again in a few seconds"
)
STORE_FULL = (
    "the export store is out of disk space; nothing of this upload was kept: ask an "
    "administrator to free space, then send it again"
)


def fault_of(exc: BaseException | None) -> tuple[int, str] | None:
    """``(status, reason)`` for a failure of what the service stands on rather than of the
    request: the database unreachable (503) or the disk full (507)."""
    if database_unavailable(exc):
        return 503, DATABASE_UNAVAILABLE
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, STORE_FULL
    return None


class FaultAnswers(web.RequestHandler):
    """A handler whose unexpected exception that is a database outage or a full disk answers
    with its own status and a reason the user can act on (and, for the database,
    ``self._retry_after`` set for the handler's ``write_error`` to send as ``Retry-After``),
    not a bare 500."""

    def send_error(self, status_code: int = 500, **kwargs) -> None:
        fault = fault_of(kwargs.get("exc_info", (None, None, None))[1])
        if status_code == 500 and fault is not None:
            status_code, kwargs["reason"] = fault
            if status_code == 503:  # a full disk needs an administrator, not a wait
                self._retry_after = getattr(self, "_retry_after", None) or FAULT_RETRY_AFTER
        super().send_error(status_code, **kwargs)


class BaseHandler(FaultAnswers):
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
                errors.perform, self.settings["sessionmaker"], operation, *args, **kwargs
            )
        except errors.Refused as exc:
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
        exc = errors.Refused(
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
                errors.record_denial(s, exc)
                s.commit()

        await asyncio.to_thread(write)
        raise web.HTTPError(status, reason.replace("%", "%%"))

    def _bearer(self) -> str:
        auth = self.request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() in ("token", "bearer") else ""
