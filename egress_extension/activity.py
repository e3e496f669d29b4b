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
import inspect
import json
import logging
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
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


def clip(value: Any, limit: int = 256) -> Any:
    """A client-chosen scalar made safe to record: strings cut to ``limit`` characters,
    other non-scalars replaced by their (cut) JSON text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if not isinstance(value, str):
        value = json.dumps(value, default=str)
    return value[:limit]


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
                return "file.saved", details | {
                    "op": "copy",
                    "from": clip(str(body["copy_from"]), 1024),
                }
            return "file.saved", details | {"op": "create"}
        if not body:
            return "file.saved", details | {"op": "create"}
        chunk = body.get("chunk")
        if chunk not in (None, -1):
            return None  # an intermediate chunk of an upload: recorded with the last one
        if chunk == -1 or (body.get("type") == "file" and body.get("format") == "base64"):
            return "file.uploaded", details | {"chunked": chunk == -1}
        return "file.saved", details | {"format": clip(body.get("format"), 32)}


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


SERVER_SCHEMAS = "https://events.jupyter.org/jupyter_server/"


def kernel_listener(ext: EgressApp):
    """A jupyter_events listener turning ``kernel_actions`` events into audit events.

    Only events about kernels this server runs (or ran) are taken as what they say: a
    ``start`` for a kernel the kernel manager does not hold, or a ``shutdown`` of one that
    was never started, is recorded as a refused event, not as a kernel action. (Clients
    cannot post server events at all: see :func:`guarded_events_handler`.)"""
    seen: set[str] = set()

    def known(kernel_id: Any) -> bool:
        km = getattr(ext.serverapp, "kernel_manager", None)
        if km is None or not isinstance(kernel_id, str):
            return False
        pending = getattr(km, "_pending_kernels", {}) or {}
        return kernel_id in km.list_kernel_ids() or kernel_id in pending

    async def listener(logger: Any, schema_id: str, data: dict) -> None:
        action = _KERNEL_ACTIONS.get(data.get("action", ""))
        if action is None:
            return  # interrupts are not recorded
        ok = data.get("status", "success") == "success"
        kernel_id = data.get("kernel_id")
        details = {
            "kernel_id": clip(kernel_id, 64),
            "kernel_name": clip(data.get("kernel_name"), 128),
            "operation": clip(data.get("action"), 32),
        }
        if ok and action == "kernel.started" and known(kernel_id):
            seen.add(kernel_id)
        elif ok and not (action == "kernel.stopped" and kernel_id in seen and not known(kernel_id)):
            ext.record(
                "event.refused",
                {**details, "schema_id": schema_id},
                outcome="denied",
                reason="a kernel event about a kernel this server does not run was ignored",
            )
            return
        ext.record(
            action,
            details,
            outcome="allowed" if ok else "error",
            reason=None if ok else str(data.get("msg", ""))[:500],
        )

    return listener


def guarded_events_handler(base: type, ext: EgressApp) -> type:
    """``base`` (jupyter_server's ``POST /api/events`` handler) refusing events in the
    server's own schemas: a client could otherwise emit a ``kernel_actions`` event for a
    kernel that never existed, and the audit trail would carry it as the server's word."""

    @web.authenticated
    @authorized
    async def post(self: Any) -> None:
        payload = self.get_json_body()
        schema = payload.get("schema_id") if isinstance(payload, dict) else None
        if isinstance(schema, str) and schema.startswith(SERVER_SCHEMAS):
            reason = "events in the server's own schemas can only be emitted by the server"
            ext.record(
                "event.refused",
                {"schema_id": clip(schema, 256), "route": "/api/events"},
                outcome="denied",
                reason=reason,
            )
            raise web.HTTPError(403, reason)
        await base.post(self)

    if getattr(base, "_egress_guarded", False):
        return base
    attrs = {"post": post, "_egress_guarded": True, "__module__": __name__}
    return type(f"Guarded{base.__name__}", (base,), attrs)


def watch_checkpoint_restores(ext: EgressApp, contents_manager: Any) -> bool:
    """Wrap ``contents_manager.restore_checkpoint`` (``POST .../checkpoints/<id>`` writes
    the file back from a checkpoint without passing the contents handler): ``file.saved``."""
    if contents_manager is None or getattr(contents_manager, "_egress_watched", False):
        return False
    original = contents_manager.restore_checkpoint

    def saved(checkpoint_id: Any, path: Any) -> None:
        ext.record(
            "file.saved",
            {
                "path": clip(str(path).strip("/"), 1024),
                "op": "restore_checkpoint",
                "checkpoint_id": clip(checkpoint_id, 128),
            },
        )

    if inspect.iscoroutinefunction(original):

        async def restore(checkpoint_id: Any, path: Any) -> Any:
            out = await original(checkpoint_id, path)
            saved(checkpoint_id, path)
            return out
    else:

        def restore(checkpoint_id: Any, path: Any) -> Any:
            out = original(checkpoint_id, path)
            saved(checkpoint_id, path)
            return out

    contents_manager.restore_checkpoint = restore
    contents_manager._egress_watched = True
    return True


def install_guards(ext: EgressApp) -> None:
    """Swap in :func:`guarded_events_handler` and :func:`watch_checkpoint_restores`."""
    from jupyter_server.services.events.handlers import EventHandler

    for rule in ext.serverapp.web_app.wildcard_router.rules:
        target = rule.target
        if isinstance(target, type) and issubclass(target, EventHandler):
            rule.target = guarded_events_handler(target, ext)
    watch_checkpoint_restores(ext, ext.serverapp.contents_manager)


# --- code sent to kernels -------------------------------------------------------------------

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
#: Message types of the Jupyter messaging protocol a client may send (ipykernel's shell and
#: control handlers, comms, stdin replies). Anything else is refused: a kernel ignores it.
CLIENT_MSG_TYPES = frozenset(
    {
        "execute_request",
        "complete_request",
        "inspect_request",
        "history_request",
        "comm_info_request",
        "kernel_info_request",
        "connect_request",
        "shutdown_request",
        "is_complete_request",
        "interrupt_request",
        "debug_request",
        "usage_request",
        "create_subshell_request",
        "delete_subshell_request",
        "list_subshell_request",
        "comm_open",
        "comm_msg",
        "comm_close",
        "input_reply",
    }
)
#: Debugger (DAP) commands that run no code of the client's: forwarded as they are.
DEBUG_PASS = frozenset(
    {
        "initialize",
        "attach",
        "configurationDone",
        "debugInfo",
        "inspectVariables",
        "richInspectVariables",  # ipykernel accepts identifiers only
        "copyToGlobals",  # ipykernel accepts identifiers only
        "modules",
        "dumpCell",  # writes the cell to a file; running it is an execute_request
        "source",
        "stackTrace",
        "scopes",
        "variables",
        "threads",
        "continue",
        "next",
        "stepIn",
        "stepOut",
        "pause",
        "disconnect",
        "exceptionInfo",
        "loadedSources",
    }
)
#: Debugger commands whose arguments the debuggee evaluates: recorded as code.
DEBUG_CODE = frozenset(
    {
        "evaluate",
        "setExpression",
        "setVariable",
        "completions",  # pydevd evaluates the text before the last dot
        "setBreakpoints",  # conditions, hit conditions and log messages are evaluated
        "setFunctionBreakpoints",
        "setExceptionBreakpoints",
    }
)
# Every other debugger command (launch, restart, goto, setDataBreakpoints, ...) is refused.


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


class KernelMessageRefused(Exception):
    """A client message the workspace does not forward to the kernel, and why."""

    def __init__(
        self,
        reason: str,
        *,
        header: dict | None = None,
        channel: str = "shell",
        content: dict | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.header = header
        self.channel = channel
        self.content = content or {}


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _unpack(part: Any) -> Any:
    # What jupyter_client's json_unpacker does in the kernel with a raw v1 part.
    if isinstance(part, memoryview):
        part = part.tobytes()
    if isinstance(part, bytes):
        part = part.decode("utf8", "replace")
    return json.loads(part)


def parse_kernel_message(subprotocol: str | None, message: Any) -> tuple[str, dict, dict]:
    """``(channel, header, content)`` of a client websocket message, read exactly as the
    server (legacy protocol) or the kernel (v1, forwarded raw) reads it. Raises
    :class:`KernelMessageRefused` for anything that is not a well-formed message."""
    try:
        if subprotocol == V1_PROTOCOL:
            if isinstance(message, str):
                message = message.encode("utf-8", "surrogateescape")
            channel, parts = deserialize_msg_from_ws_v1(message)
            if len(parts) < 4:
                raise ValueError(f"{len(parts)} part(s), a message has at least 4")
            header, content = _unpack(parts[0]), _unpack(parts[3])
        else:
            msg = (
                deserialize_binary_message(message)
                if isinstance(message, bytes)
                else json.loads(message)
            )
            if not isinstance(msg, dict):
                raise ValueError("not a JSON object")
            header, content, channel = msg.get("header"), msg.get("content", {}), msg.get("channel")
    except KernelMessageRefused:
        raise
    except Exception as exc:
        raise KernelMessageRefused(f"unreadable kernel message ({type(exc).__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise KernelMessageRefused("kernel message without a header naming its msg_type")
    channel = channel if isinstance(channel, str) and channel else "shell"
    if not isinstance(content, dict):
        raise KernelMessageRefused("kernel message content is not an object", header=header)
    return channel, header, content


def _debug_code(command: str, args: dict) -> str:
    """The text the debuggee evaluates for a code-carrying DAP command ('' if none)."""
    if command == "evaluate":
        return _as_text(args.get("expression", ""))
    if command == "setExpression":
        return f"{_as_text(args.get('expression', ''))} = {_as_text(args.get('value', ''))}"
    if command == "setVariable":
        return f"{_as_text(args.get('name', ''))} = {_as_text(args.get('value', ''))}"
    if command == "completions":
        return _as_text(args.get("text", ""))
    found, items = [], []
    for key in ("breakpoints", "filterOptions"):
        part = args.get(key) or []
        if not isinstance(part, list) or not all(isinstance(b, dict) for b in part):
            raise KernelMessageRefused(f"debugger {command} with malformed {key}")
        items += part
    for bp in items:
        for key in ("condition", "hitCondition", "logMessage"):
            if bp.get(key) not in (None, ""):
                found.append(_as_text(bp[key]))
    if args.get("exceptionOptions"):
        found.append(_as_text(args["exceptionOptions"]))
    return "\n".join(found)


def kernel_message_code(subprotocol: str | None, message: Any) -> list[dict]:
    """Every piece of code a client websocket message asks a kernel to run, as
    ``{msg_id, channel, code, silent, via}`` (an empty list for messages that run none).
    Raises :class:`KernelMessageRefused` for messages that are not forwarded: unreadable
    ones, unknown message types, malformed code-carrying requests, debugger commands that
    are not allowed."""
    channel, header, content = parse_kernel_message(subprotocol, message)
    msg_type = header["msg_type"]

    def refuse(reason: str) -> KernelMessageRefused:
        return KernelMessageRefused(reason, header=header, channel=channel, content=content)

    if msg_type not in CLIENT_MSG_TYPES:
        raise refuse(f"kernel message type {msg_type[:64]!r} is not forwarded")
    base = {"msg_id": clip(header.get("msg_id"), 128), "channel": clip(channel, 32)}
    found = []
    if msg_type == "execute_request":
        silent = bool(content.get("silent"))
        found.append(
            {**base, "code": _as_text(content.get("code", "")), "silent": silent}
            | {"via": "execute_request"}
        )
        expressions = content.get("user_expressions") or {}
        if not isinstance(expressions, dict):
            raise refuse("user_expressions must be an object of expressions")
        if expressions:
            text = "\n".join(_as_text(e) for e in expressions.values())
            found.append({**base, "code": text, "silent": silent, "via": "user_expressions"})
    elif msg_type == "debug_request":
        command = content.get("command")
        args = content.get("arguments")
        args = {} if args is None else args
        if not isinstance(command, str) or not isinstance(args, dict):
            raise refuse("debug_request without a command and an arguments object")
        if command in DEBUG_CODE:
            try:
                code = _debug_code(command, args)
            except KernelMessageRefused as exc:
                raise refuse(exc.reason) from None
            if code:
                found.append({**base, "code": code, "silent": False, "via": f"debugger_{command}"})
        elif command not in DEBUG_PASS:
            raise refuse(f"debugger command {command[:64]!r} is not allowed in this workspace")
    return found


def executed_code(subprotocol: str | None, message: Any) -> dict | None:
    """The first piece of code in a client message (see :func:`kernel_message_code`)."""
    found = kernel_message_code(subprotocol, message)
    return found[0] if found else None


def _refusal_replies(refused: KernelMessageRefused, session: Any) -> list[tuple[str, dict]]:
    """``(channel, msg)`` answers that let a waiting client finish a refused request."""
    header = refused.header or {}
    msg_type = header.get("msg_type", "")
    if not msg_type.endswith("_request"):
        return []
    if msg_type == "debug_request":
        content: dict = {
            "type": "response",
            "seq": 0,
            "request_seq": clip(refused.content.get("seq")),
            "command": clip(refused.content.get("command"), 64),
            "success": False,
            "message": refused.reason,
            "body": {},
        }
    else:
        content = {
            "status": "error",
            "ename": "RefusedByWorkspace",
            "evalue": refused.reason,
            "traceback": [refused.reason],
            "execution_count": None,
        }
    reply = session.msg(msg_type[: -len("_request")] + "_reply", content, parent=header)
    idle = session.msg("status", {"execution_state": "idle"}, parent=header)
    return [(refused.channel, reply), ("iopub", idle)]


def _send_refusal(conn: Any, refused: KernelMessageRefused) -> None:
    for channel, msg in _refusal_replies(refused, conn.session):
        msg = json.loads(json.dumps(msg, default=str))  # dates as text, like the server
        if getattr(conn, "subprotocol", None) == V1_PROTOCOL:
            data = serialize_msg_to_ws_v1(msg, channel, conn.session.pack)
            conn.write_message(data, binary=True)
        else:
            conn.write_message(json.dumps({**msg, "channel": channel, "buffers": []}))


def audited_connection_class(base: type, ext: EgressApp) -> type:
    """The server's kernel websocket connection class, recording code on its way in and
    refusing what it cannot read or may not forward (see :func:`kernel_message_code`)."""

    def handle_incoming_message(self: Any, incoming_msg: Any) -> None:
        kernel_id = clip(getattr(self, "kernel_id", None), 64)
        try:
            found = kernel_message_code(getattr(self, "subprotocol", None), incoming_msg)
        except KernelMessageRefused as refused:
            raw = incoming_msg if isinstance(incoming_msg, bytes) else str(incoming_msg).encode()
            header = refused.header or {}
            ext.record(
                "code.refused",
                {
                    "kernel_id": kernel_id,
                    "msg_id": clip(header.get("msg_id"), 128),
                    "msg_type": clip(header.get("msg_type"), 64),
                    "channel": clip(refused.channel, 32),
                    "message_sha256": hashlib.sha256(raw).hexdigest(),
                    "message_bytes": len(raw),
                },
                outcome="denied",
                reason=refused.reason,
            )
            log.warning("kernel message refused: %s", refused.reason)
            try:
                _send_refusal(self, refused)
            except Exception:  # the client may be gone; the refusal is recorded
                log.exception("could not answer a refused kernel message")
            return None
        for item in found:
            code = item.pop("code")
            ext.record(
                "code.executed",
                {"kernel_id": kernel_id, **item} | code_details(code, ext.code_max_bytes),
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
        ext.record("terminal.opened", {"cwd": clip(str(kwargs.get("cwd") or ""), 1024), "pid": pid})
        return term

    terminal_manager.new_terminal = new_terminal
    terminal_manager._egress_watched = True
    return True
