"""Client of the hub-side ``sde`` service's export API, authenticated with the server's token.

The service (``sde_spawner.checking.api``) stamps the requester and project from the
token; nothing here sends them. JSON calls go through tornado's async client; the bytes of a
file are streamed from its open descriptor by :func:`put_file` in a worker thread with
``socket.sendfile`` (no copy through Python, no blocking of the server's event loop), with an
exact Content-Length as the service requires.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any
from urllib.parse import urljoin, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class ServiceError(Exception):
    """The service refused or could not be reached; ``status`` is its HTTP status (or 502)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _message_of(body: bytes, fallback: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:500] or fallback
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or fallback)[:500]
    return fallback


def put_file(url: str, fd: int, size: int, token: str, timeout: float = 600.0) -> dict:
    """``PUT`` the first ``size`` bytes of the open file ``fd`` to ``url``; the JSON answer.

    Blocking: run it in a thread. Raises :class:`ServiceError` on any failure.
    """
    parts = urlsplit(url)
    conn_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    send_error: OSError | None = None
    try:
        try:
            conn.putrequest("PUT", target, skip_accept_encoding=True)
            conn.putheader("Authorization", f"token {token}")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            with open(fd, "rb", closefd=False) as fh:
                sent = conn.sock.sendfile(fh, offset=0, count=size) if size else 0
            if sent != size:
                raise ServiceError(409, f"sent {sent} of {size} bytes: the file shrank")
        except OSError as exc:
            send_error = exc
            # The service may answer (and close) before reading everything, e.g. a refusal:
            # its answer is the better error, so fall through and read it if there is one.
        try:
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceError(
                502, f"upload to the export service failed: {send_error or exc}"
            ) from None
    finally:
        conn.close()
    if response.status >= 400:
        raise ServiceError(
            response.status, _message_of(body, f"upload refused ({response.status})")
        )
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {}


class ExportService:
    """``api/exports`` of the ``sde`` service at ``base_url`` (ends with ``/``)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.token = token
        self.timeout = timeout

    def url(self, path: str) -> str:
        """Absolute URL of ``path``: relative to the service, or a server path it returned."""
        return urljoin(self.base_url, path)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"token {self.token}"}
        data = None
        if body is not None or method in ("POST", "PUT"):
            data = json.dumps(body if body is not None else {}).encode()
            headers["Content-Type"] = "application/json"
        request = HTTPRequest(
            self.url(path),
            method=method,
            body=data,
            headers=headers,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        client = AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(request)
        except HTTPClientError as exc:
            body_bytes = exc.response.body if exc.response is not None else b""
            status = exc.code if exc.code != 599 else 502
            raise ServiceError(
                status, _message_of(body_bytes, f"export service answered {exc.code}")
            ) from None
        except (TimeoutError, OSError) as exc:
            raise ServiceError(502, f"the export service cannot be reached: {exc}") from None
        finally:
            client.close()
        try:
            return json.loads(response.body or b"null")
        except ValueError:
            raise ServiceError(502, "the export service did not answer JSON") from None

    async def create(self, justification: str, files: list[dict]) -> dict:
        return await self.call(
            "POST", "api/exports", {"justification": justification, "files": files}
        )

    async def new_version(self, request_id: int, justification: str, files: list[dict]) -> dict:
        return await self.call(
            "POST",
            f"api/exports/{int(request_id)}/versions",
            {"justification": justification, "files": files},
        )

    async def upload(self, url_or_path: str, fd: int, size: int) -> dict:
        """Stream ``size`` bytes of the open file ``fd`` (from offset 0) to an upload URL."""
        return await asyncio.to_thread(put_file, self.url(url_or_path), fd, size, self.token)

    async def submit(self, request_id: int) -> dict:
        return await self.call("POST", f"api/exports/{int(request_id)}/submit")

    async def withdraw(self, request_id: int) -> dict:
        return await self.call("POST", f"api/exports/{int(request_id)}/withdraw")

    async def list(self) -> dict:
        return await self.call("GET", "api/exports")

    async def get(self, request_id: int) -> dict:
        return await self.call("GET", f"api/exports/{int(request_id)}")
