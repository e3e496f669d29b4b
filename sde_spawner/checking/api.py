"""The workspaces' export API, mounted on the ``sde`` service (:func:`routes`).

Workspaces call ``{prefix}api/exports…`` with their own server token (``Authorization: token
…``); the requester and project come from
:func:`~sde_spawner.services.identity.identify_workspace`, never from the body. Bodies are
streamed and limited; uploads are streamed to the blob store while hashed and inspected
(:mod:`~sde_spawner.checking.uploads`). ``api/release-key`` serves the public half of the
release-signing key.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from jupyterhub.utils import url_path_join
from tornado import web

from sde_spawner.checking import actions, flood, queries, uploads
from sde_spawner.checking import limits as limits_mod
from sde_spawner.checking import manifest as manifest_mod
from sde_spawner.checking.base import BaseHandler, error_message, fault_of
from sde_spawner.checking.storage import BlobError, BlobWriter
from sde_spawner.services.identity import WorkspaceIdentity, identify_workspace


@web.stream_request_body
class WorkspaceApiHandler(flood.Limited, BaseHandler):
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
        body = {"status": status_code, "message": error_message(self, kwargs)}
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
        items = await self.run(queries.list_own, ident.username, ident.project)
        self.send({"requests": items})

    async def post(self):
        self.action = "export.created"
        ident = await self.identify()
        body = await self.json_body(ident)
        result = await self.run(
            actions.create_request,
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
        self.send(await self.run(queries.get_own, ident.username, ident.project, int(request_id)))


class VersionsHandler(WorkspaceApiHandler):
    """``POST``: a new snapshot version of a returned request."""

    async def post(self, request_id):
        self.action = "export.version.created"
        ident = await self.identify()
        body = await self.json_body(ident)
        result = await self.run(
            actions.new_version,
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
        self.send(await self.run(actions.submit, ident.username, ident.project, int(request_id)))


class WithdrawHandler(WorkspaceApiHandler):
    async def post(self, request_id):
        self.action = "export.withdrawn"
        ident = await self.identify()
        self.send(await self.run(actions.withdraw, ident.username, ident.project, int(request_id)))


def _free_bytes(*directories: str | os.PathLike) -> int:
    """Free bytes of the fullest filesystem holding ``directories`` (the state directory with
    the database and keys, and the blob store, which may be a filesystem of its own)."""
    for directory in directories:
        os.makedirs(directory, exist_ok=True)
    return min(shutil.disk_usage(directory).free for directory in directories)


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
    _target: actions.UploadTarget | None = None
    _pipe: ThreadPoolExecutor | None = None
    _failed: Exception | None = None

    async def prepare(self):
        if self.request.method != "PUT":
            raise web.HTTPError(405)
        await self.gate()
        await self.check_ids()
        self._ident = await self.identify()
        request_id, index = (int(x) for x in self.path_args)
        free = await asyncio.to_thread(
            _free_bytes, self.checking.state_dir, self.checking.store.root
        )
        target = await self.run(
            actions.upload_target,
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
                self._failed = exc

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
            if isinstance(self._failed, OSError):
                raise self._failed
            if self._failed is not None:
                raise BlobError(str(self._failed))
            key, content = await asyncio.wrap_future(self._pipe.submit(self._upload.finish))
        except OSError as exc:  # the disk failed the writer (full): aborted, nothing kept
            fault = fault_of(exc)
            await self.deny(
                self.action,
                fault[1] if fault else f"the upload could not be stored: {exc.strerror}",
                actor=self._ident.username,
                project=self._ident.project,
                status=fault[0] if fault else 500,
            )
        except BlobError as exc:
            await self.deny(
                self.action,
                str(exc),
                actor=self._ident.username,
                project=self._ident.project,
                status=400,
            )
        result = await self.run(
            actions.accept_upload,
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


class ReleaseKeyHandler(BaseHandler):
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
    ]
