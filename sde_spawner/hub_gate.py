"""The hub as a workspace sees it: only what a single-user server needs, nothing else.

A workspace reaches two ports of the host: the ``sde`` service and the hub's own port, because
its Jupyter server must ask the hub whose a browser's token is and finish the OAuth login.
That port serves the whole hub, though: the login form, the token page, the
REST API. A researcher who brings a credential into the locked room (types their password,
pastes a token made in their browser) could otherwise use the hub from inside it: create
API tokens whose *notes* carry data out (they are listed outside), start or stop servers,
read the hub's view of people.

:class:`WorkspaceGate` is a tornado router placed before every hub handler (through the
authenticator's ``get_handlers``, which JupyterHub routes first). For a request whose TCP peer
is not trusted (not loopback: the proxy and the managed services run on the host and connect
over loopback, ``c.JupyterHub.hub_connect_ip = "127.0.0.1"``), it lets through only
:data:`WORKSPACE_ALLOWED` and answers everything else 403 with the reason, recorded in the
audit trail as ``hub.gate.denied`` naming the workspace the address belongs to. The peer is the
socket's address, not ``X-Forwarded-For`` (the hub trusts such headers; a workspace could
send them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re

from tornado import web
from tornado.routing import Router

from sde_spawner.registry import ops

#: (method, path below the hub prefix) a workspace's server may call. Not the activity
#: heartbeat (``POST api/users/NAME/activity``): its timestamps are stored to the microsecond
#: and shown outside (``GET api/users/NAME``), so writing chosen timestamps is a way out; the
#: hub takes activity from the proxy instead (the spawner does not set
#: ``JUPYTERHUB_ACTIVITY_URL``).
WORKSPACE_ALLOWED: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GET", re.compile(r"^api/?$")),  # version check at server start
    ("GET", re.compile(r"^api/user$")),  # whoami of a browser's token
    ("POST", re.compile(r"^api/oauth2/token$")),  # OAuth code exchange at login
)
DEFAULT_TRUSTED = ("127.0.0.0/8", "::1/128")


def peer_address(request) -> str | None:
    """The TCP peer of ``request`` (never a forwarded header); None for a Unix socket."""
    context = getattr(request.connection, "context", None)
    address = getattr(context, "address", None)
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None


def allowed_for_workspace(method: str, path: str) -> bool:
    return any(method == m and pattern.match(path) for m, pattern in WORKSPACE_ALLOWED)


class WorkspaceGate(Router):
    """Routes nothing itself: returns None (on to the hub's handlers) or a 403 handler."""

    def __init__(self, hub_app, hub_prefix: str, trusted: tuple[str, ...] = DEFAULT_TRUSTED):
        self.hub_app = hub_app
        self.hub_prefix = hub_prefix
        self.trusted = tuple(ipaddress.ip_network(n) for n in trusted)

    def trusts(self, peer: str | None) -> bool:
        if peer is None:
            return True  # a Unix socket: on the host
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if getattr(address, "ipv4_mapped", None):
            address = address.ipv4_mapped
        return any(address in net for net in self.trusted)

    def find_handler(self, request, **kwargs):
        peer = peer_address(request)
        if self.trusts(peer):
            return None
        path = request.path
        inner = path[len(self.hub_prefix) :] if path.startswith(self.hub_prefix) else path
        if allowed_for_workspace(request.method, inner.lstrip("/")):
            return None
        return self.hub_app.tornado_application.get_handler_delegate(
            request, GateDeniedHandler, {"peer": peer}
        )


class GateDeniedHandler(web.RequestHandler):
    """403 for a hub request from a workspace, with the reason; audited."""

    def initialize(self, peer: str) -> None:
        self.peer = peer
        self._sde_audited = True  # the hub's log_function must not record it a second time

    def check_xsrf_cookie(self):
        return

    async def prepare(self) -> None:
        reason = (
            f"the hub does not serve {self.request.method} {self.request.path} to workspaces: "
            "from inside a workspace the hub only answers its Jupyter server (identity and "
            "login). Use the hub from your own browser, outside the workspace"
        )
        writer = getattr(self.settings.get("log_function"), "writer", None)
        if writer is not None:
            who = await asyncio.to_thread(_workspace_at, writer.sessionmaker, self.peer)
            writer.submit(
                {
                    "action": "hub.gate.denied",
                    "actor": who[0] if who else "(unknown workspace)",
                    "project": who[1] if who else None,
                    "outcome": "denied",
                    "reason": reason,
                    "details": {
                        "method": self.request.method,
                        "path": self.request.path[:512],
                        "peer": self.peer,
                    },
                }
            )
        self.set_status(403)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": 403, "message": reason})


def _workspace_at(sessionmaker, address: str | None) -> tuple[str, str] | None:
    """(person, project) of the running workspace at ``address``, if any."""
    if not address:
        return None
    with sessionmaker() as s:
        rooms = ops.open_workspaces(s, address=address)
        return (rooms[0].username, rooms[0].project_slug) if rooms else None


class WorkspaceGateMixin:
    """Authenticator mixin: put :class:`WorkspaceGate` in front of every hub handler."""

    def get_handlers(self, app):
        # JupyterHub prefixes each pattern with the hub prefix; this one matches everything
        # under it and, through the gate, either falls through (None) or refuses.
        return [(r"(?:.*)", WorkspaceGate(app, app.hub_prefix)), *super().get_handlers(app)]
