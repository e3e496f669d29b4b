"""What the researcher does in the workspace, captured in the server and queued for the hub.

Where each kind of activity is observed (all of it ends in :meth:`EgressApp.record`):

* **files** (``file.opened/saved/uploaded/renamed/deleted``): a subclass of the server's own
  contents API handler (:func:`audited_contents_handler`), swapped into the route table. At
  the HTTP layer the meaning of a request is known: an *open* is a ``GET`` with content (not a
  directory listing, not the metadata poll JupyterLab makes, not the re-read that follows
  every save), an *upload* is a ``PUT`` of base64 file content (the last chunk of a chunked
  one). jupyter_server's ``contents_service`` events cannot tell these apart: they emit
  ``get`` for listings and after every save and ``save`` for uploads. The same handler
  enforces the viewing rules of :mod:`egress_extension.blocking`.
* **kernels** (``kernel.started/stopped``): jupyter_server's own ``kernel_actions`` events,
  through a listener on the server's event bus.
* **code** (``code.executed``): every ``execute_request`` (and debugger ``evaluate``) a client
  sends through the server's kernel websocket, read in the server *before* it is forwarded to
  the kernel (:func:`audited_connection_class`). The kernel is not asked: it runs the user's
  code and could be told to lie.
* **terminals** (``terminal.opened``): the terminal manager's ``new_terminal``.

The capture runs in the user's own server process; what that does and does not prove is in
``docs/threat-model.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from tornado import web

if TYPE_CHECKING:
    from egress_extension.app import EgressApp

log = logging.getLogger("egress_extension.activity")

KERNEL_ACTIONS_SCHEMA = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
#: The service replaces details over 64 KiB by a digest; code is cut to stay under it.
MAX_DETAILS_CHARS = 60_000
_UNSET = object()


def _ext(handler: web.RequestHandler) -> EgressApp:
    return handler.settings["egress_extension"]


# --- contents API ---------------------------------------------------------------------------


class AuditedContentsMixin:
    """Records file activity of the contents API and applies the viewing rules on reads."""

    _egress_op: str | None = None
    _egress_path: str = ""
    _egress_body: Any = _UNSET

    def get_json_body(self) -> Any:
        # Parsed once: the base class reads the body, so do we (to tell uploads from saves).
        if self._egress_body is _UNSET:
            self._egress_body = super().get_json_body()  # type: ignore[misc]
        return self._egress_body

    @web.authenticated
    @authorized
    async def get(self, path: str = "") -> None:
        self._egress_op = "get"
        self._egress_path = path.strip("/")
        if self.get_query_argument("content", "1") == "1":  # type: ignore[attr-defined]
            _ext(self).blocker.check_read_request(self, path)  # type: ignore[arg-type]
        await super().get(path)  # type: ignore[misc]

    @web.authenticated
    @authorized
    async def put(self, path: str = "") -> None:
        self._egress_op = "put"
        self._egress_path = path.strip("/")
        await super().put(path)  # type: ignore[misc]

    @web.authenticated
    @authorized
    async def post(self, path: str = "") -> None:
        self._egress_op = "post"
        self._egress_path = path.strip("/")
        await super().post(path)  # type: ignore[misc]

    @web.authenticated
    @authorized
    async def patch(self, path: str = "") -> None:
        self._egress_op = "patch"
        self._egress_path = path.strip("/")
        await super().patch(path)  # type: ignore[misc]

    @web.authenticated
    @authorized
    async def delete(self, path: str = "") -> None:
        self._egress_op = "delete"
        self._egress_path = path.strip("/")
        await super().delete(path)  # type: ignore[misc]
        _ext(self).record("file.deleted", {"path": self._egress_path[:1024]})  # type: ignore[arg-type]

    def _finish_model(self, model: dict, location: bool = True) -> None:
        ext = _ext(self)  # type: ignore[arg-type]
        op = self._egress_op
        event = None
        if op == "get":
            ext.blocker.check_read_model(self, model)
            if model.get("type") in ("file", "notebook") and model.get("content") is not None:
                event = ("file.opened", _file_details(model))
        elif op in ("put", "post"):
            event = self._write_event(model)
        elif op == "patch":
            event = (
                "file.renamed",
                {
                    "from": self._egress_path[:1024],
                    "to": str(model.get("path", ""))[:1024],
                    "type": model.get("type"),
                },
            )
        if event is not None:
            ext.record(*event)
        super()._finish_model(model, location)  # type: ignore[misc]

    def _write_event(self, model: dict) -> tuple[str, dict] | None:
        body = self._egress_body if isinstance(self._egress_body, dict) else {}
        details = _file_details(model)
        if self._egress_op == "post":
            if body.get("copy_from"):
                return "file.saved", details | {"op": "copy", "from": str(body["copy_from"])}
            return "file.saved", details | {"op": "create"}
        if not body:
            return "file.saved", details | {"op": "create"}
        chunk = body.get("chunk")
        if chunk not in (None, -1):
            return None  # an intermediate chunk of an upload: recorded with the last one
        if chunk == -1 or (body.get("type") == "file" and body.get("format") == "base64"):
            return "file.uploaded", details | {"chunked": chunk == -1}
        return "file.saved", details | {"format": body.get("format")}


def _file_details(model: dict) -> dict:
    return {
        "path": str(model.get("path", ""))[:1024],
        "type": model.get("type"),
        "format": model.get("format"),
        "size": model.get("size"),
    }


def audited_contents_handler(base: type) -> type:
    """``base`` (the server's contents handler class) with activity recording mixed in."""
    return type(f"Audited{base.__name__}", (AuditedContentsMixin, base), {"__module__": __name__})


# --- kernels --------------------------------------------------------------------------------

_KERNEL_ACTIONS = {
    "start": "kernel.started",
    "restart": "kernel.started",
    "shutdown": "kernel.stopped",
}


def kernel_listener(ext: EgressApp):
    """A jupyter_events listener turning ``kernel_actions`` events into audit events."""

    async def listener(logger: Any, schema_id: str, data: dict) -> None:
        action = _KERNEL_ACTIONS.get(data.get("action", ""))
        if action is None:
            return  # interrupts are not recorded
        ok = data.get("status", "success") == "success"
        ext.record(
            action,
            {
                "kernel_id": data.get("kernel_id"),
                "kernel_name": data.get("kernel_name"),
                "operation": data.get("action"),
            },
            outcome="allowed" if ok else "error",
            reason=None if ok else str(data.get("msg", ""))[:500],
        )

    return listener


# --- code sent to kernels -------------------------------------------------------------------


def code_details(code: str, max_bytes: int) -> dict:
    """Details of one executed cell: the code (cut to ``max_bytes`` and to what the service
    keeps per event) and the SHA-256 and size of the whole text."""
    raw = code.encode("utf-8", "surrogatepass")
    kept = raw[:max_bytes].decode("utf-8", "ignore")
    while len(json.dumps(kept)) > MAX_DETAILS_CHARS:  # JSON escaping can grow text 6x
        kept = kept[: int(len(kept) * 0.8)]
    return {
        "code": kept,
        "code_sha256": hashlib.sha256(raw).hexdigest(),
        "code_bytes": len(raw),
        "truncated": len(kept) < len(code),
    }


def _json(part: Any) -> Any:
    if isinstance(part, memoryview):
        part = part.tobytes()
    return json.loads(part)


def executed_code(subprotocol: str | None, message: Any) -> dict | None:
    """``{msg_id, code, ...}`` if a websocket message from the client asks a kernel to run
    code (``execute_request``, or a debugger ``evaluate``), else None."""
    from jupyter_server.services.kernels.connection.base import (
        deserialize_binary_message,
        deserialize_msg_from_ws_v1,
    )

    if subprotocol == "v1.kernel.websocket.jupyter.org":
        channel, parts = deserialize_msg_from_ws_v1(message)
        if len(parts) < 4:
            return None
        header = _json(parts[0])
        msg_type = header.get("msg_type")
        if msg_type not in ("execute_request", "debug_request"):
            return None
        content = _json(parts[3])
    else:
        if isinstance(message, bytes):
            msg = deserialize_binary_message(message)
        else:
            if "execute_request" not in message and "debug_request" not in message:
                return None  # most traffic: no need to parse it
            msg = json.loads(message)
        header = msg.get("header") or {}
        msg_type = header.get("msg_type")
        content = msg.get("content") or {}
        channel = msg.get("channel")
    if msg_type == "execute_request":
        code = content.get("code")
        extra = {"silent": bool(content.get("silent")), "via": "execute_request"}
    elif msg_type == "debug_request" and content.get("command") == "evaluate":
        code = (content.get("arguments") or {}).get("expression")
        extra = {"silent": False, "via": "debugger_evaluate"}
    else:
        return None
    if not isinstance(code, str):
        return None
    return {"msg_id": header.get("msg_id"), "channel": channel, "code": code, **extra}


def audited_connection_class(base: type, ext: EgressApp) -> type:
    """The server's kernel websocket connection class, recording code on its way in."""

    def handle_incoming_message(self: Any, incoming_msg: Any) -> None:
        try:
            found = executed_code(getattr(self, "subprotocol", None), incoming_msg)
        except Exception:  # never let auditing break a kernel connection
            log.exception("could not inspect a kernel message")
            found = None
        if found is not None:
            code = found.pop("code")
            ext.record(
                "code.executed",
                {"kernel_id": getattr(self, "kernel_id", None), **found}
                | code_details(code, ext.code_max_bytes),
            )
        return base.handle_incoming_message(self, incoming_msg)

    return type(
        f"Audited{base.__name__}",
        (base,),
        {"handle_incoming_message": handle_incoming_message, "__module__": __name__},
    )


# --- terminals ------------------------------------------------------------------------------


def watch_terminals(ext: EgressApp, terminal_manager: Any) -> bool:
    """Wrap ``terminal_manager.new_terminal`` (every new terminal goes through it)."""
    if terminal_manager is None or getattr(terminal_manager, "_egress_watched", False):
        return False
    original = terminal_manager.new_terminal

    def new_terminal(**kwargs: Any) -> Any:
        term = original(**kwargs)
        pid = getattr(getattr(term, "ptyproc", None), "pid", None)
        ext.record("terminal.opened", {"cwd": str(kwargs.get("cwd") or ""), "pid": pid})
        return term

    terminal_manager.new_terminal = new_terminal
    terminal_manager._egress_watched = True
    return True
