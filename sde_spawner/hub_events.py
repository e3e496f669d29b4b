"""Hub activity into the audit trail: token creation, spawn and stop requests, admin API calls,
logout.

JupyterHub calls its ``log_function`` once per finished request; ours keeps JupyterHub's own
logging and hands the requests that matter to a background writer thread, so the event loop
never waits on the database. Which requests matter, and as what, is the pure
:func:`classify`. If the writer ever falls behind by more than ``MAX_QUEUE`` events it counts
what it dropped and records an ``audit.lost`` event, rather than losing them silently.
A stop asked for by the hub-wide ``idle-culler`` service is recorded as ``workspace.culled``.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from datetime import UTC, datetime

from jupyterhub.handlers.login import LogoutHandler
from jupyterhub.log import log_request

from sde_spawner import audit
from sde_spawner.db import make_engine, make_sessionmaker

log = logging.getLogger(__name__)
MAX_QUEUE = 10_000
#: The JupyterHub service running jupyterhub-idle-culler (see jupyterhub_config.py).
IDLE_CULLER = "idle-culler"
CULLER_REASON = "idle longer than the hub-wide limit (the idle-culler service)"

_USER_PATH = re.compile(r"^api/users/([^/]+)(/.*)?$")


def classify(
    method: str, path: str, status: int, username: str | None, kind: str = "user"
) -> dict | None:
    """The audit event for one hub request (path relative to the hub's base URL), or None.
    ``kind``: what made it, ``user`` or ``service`` (a stop by the idle culler is a cull)."""
    path = path.lstrip("/")
    outcome = "allowed" if status < 400 else "denied"
    base = {"actor": username or "(anonymous)", "outcome": outcome}
    reason = None if status < 400 else f"HTTP {status}"
    details = {"method": method, "path": "/hub/" + path, "status": status}
    if method == "POST" and path.startswith("spawn/"):
        return {**base, "action": "spawn.requested", "reason": reason, "details": details}
    if not path.startswith("api/") or method in ("HEAD", "OPTIONS"):
        return None
    m = _USER_PATH.match(path)
    target, rest = (m.group(1), m.group(2) or "") if m else (None, "")
    if target:
        details["target"] = target
    if method == "POST" and rest.startswith("/tokens"):
        action = "token.created"
    elif method == "DELETE" and rest.startswith("/tokens"):
        action = "token.revoked"
    elif method == "POST" and rest.startswith(("/server", "/servers")):
        action = "spawn.requested"
    elif method == "DELETE" and rest.startswith(("/server", "/servers")):
        if (kind, username, outcome) == ("service", IDLE_CULLER, "allowed"):
            return {**base, "action": "workspace.culled", "reason": CULLER_REASON,
                    "details": details}  # fmt: skip
        action = "stop.requested"
    elif method == "POST" and rest == "/activity":
        return None  # servers' own heartbeat, not an admin action
    elif method != "GET":
        action = "hub.api.changed"
    elif path.startswith(("api/users", "api/groups", "api/services", "api/proxy")) and (
        target is None or target != username
    ):
        action = "hub.api.read"  # looking at other people or the hub's configuration
    else:
        return None
    return {**base, "action": action, "reason": reason, "details": details}


class AuditWriter:
    """A daemon thread that appends queued events to the audit trail in batches."""

    def __init__(self, db_url: str):
        self.sessionmaker = make_sessionmaker(make_engine(db_url))
        self.queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUE)
        self.lost = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="sde-audit-writer", daemon=True)
        self.thread.start()

    def submit(self, event: dict) -> None:
        try:
            self.queue.put_nowait({**event, "at": datetime.now(UTC)})
        except queue.Full:
            with self._lock:
                self.lost += 1

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < 500:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                lost, self.lost = self.lost, 0
            if lost:
                batch.append(
                    {
                        "action": "audit.lost",
                        "actor": "hub",
                        "outcome": "error",
                        "details": {"dropped": lost},
                    }
                )
            try:
                with self.sessionmaker() as s, s.begin():
                    audit.append_many(s, batch)
            except Exception:
                log.exception("could not write %d hub audit events", len(batch))
                with self._lock:
                    self.lost += len(batch)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the queue is empty (tests and shutdown)."""
        import time

        deadline = time.monotonic() + timeout
        while not self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)


def make_log_function(db_url: str, hub_prefix: str = "/hub/"):
    """A tornado ``log_function`` that keeps JupyterHub's logging and audits what matters."""
    writer = AuditWriter(db_url)

    def log_function(handler) -> None:
        log_request(handler)
        path = handler.request.path
        if not path.startswith(hub_prefix) or getattr(handler, "_sde_audited", False):
            return
        user = getattr(handler, "_jupyterhub_user", None)
        name = getattr(user, "name", None)
        event = classify(
            handler.request.method,
            path[len(hub_prefix) :],
            handler.get_status(),
            name,
            getattr(user, "kind", "user"),
        )
        if event is not None:
            writer.submit(event)

    log_function.writer = writer
    return log_function


class AuditedLogoutHandler(LogoutHandler):
    """JupyterHub's logout, plus a ``logout`` audit event naming who logged out."""

    async def default_handle_logout(self):
        user = self.current_user
        await super().default_handle_logout()
        if user is not None:
            writer = getattr(self.settings.get("log_function"), "writer", None)
            if writer is not None:
                writer.submit({"action": "logout", "actor": user.name})


class AuditedLogoutMixin:
    """Authenticator mixin: serve logout through :class:`AuditedLogoutHandler`."""

    def get_handlers(self, app):
        return [("/logout", AuditedLogoutHandler), *super().get_handlers(app)]
