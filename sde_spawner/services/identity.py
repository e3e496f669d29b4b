"""Who is calling: a workspace (its server token) or a person (their browser login).

A workspace's ``$JUPYTERHUB_API_TOKEN`` carries exactly one server-access scope,
``access:servers!server=USER/SERVER``; the hub's whoami answer for it is the only thing we
trust. (USER, SERVER) is then looked up in the ``workspace`` table the spawner keeps, which
names the project. The actor is therefore always stamped hub side, never read from a body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from sde_spawner.registry import ops

_SERVER_SCOPE = re.compile(r"^access:servers!server=([^/]+)/(.*)$")


def _server_token_scopes(user: str, server: str) -> frozenset[str]:
    """Everything a workspace's server token may hold (JupyterHub's `server` role, expanded).

    A token with any other scope is a person's own token (or a service's), not a workspace's.
    """
    return frozenset(
        {
            f"access:servers!server={user}/{server}",
            f"users:activity!user={user}",
            f"read:users:activity!user={user}",
            f"read:users:groups!user={user}",
            f"read:users:name!user={user}",
        }
    )


@dataclass(frozen=True)
class WorkspaceIdentity:
    username: str
    server_name: str
    project: str
    workspace_id: int
    address: str | None = None  # the container's IP (None: recorded before it was kept)

    def accepts(self, remote_ip: str | None) -> bool:
        """Is this request from the workspace's own container? A server token copied out
        of the room (read off the screen, say) must not work from anywhere else: through
        the public proxy the export API would otherwise hand back what the workspace wrote.
        """
        return self.address is not None and remote_ip == self.address

    def refusal(self, remote_ip: str | None) -> str:
        if self.address is None:
            return (
                f"workspace {self.username}/{self.server_name} was started before its address "
                "was recorded: stop and start it again"
            )
        return (
            f"the token of workspace {self.username}/{self.server_name} is accepted from its "
            f"own container only, not from {remote_ip or 'an unknown address'}"
        )


def server_of_scopes(scopes: list[str]) -> tuple[str, str] | None:
    """(user, server) when the scopes are those of a server token, else None."""
    servers = [m.groups() for s in scopes if (m := _SERVER_SCOPE.match(s))]
    if len(servers) != 1 or not set(scopes) <= _server_token_scopes(*servers[0]):
        return None
    return servers[0]


def workspace_for(session: Session, username: str, server_name: str) -> WorkspaceIdentity | None:
    """The open workspace of (user, server), if the spawner recorded one."""
    rooms = ops.open_workspaces(session, username=username, server_name=server_name)
    if not rooms:
        return None
    ws = rooms[0]
    return WorkspaceIdentity(ws.username, ws.server_name, ws.project_slug, ws.id, ws.address)


def identify_workspace(session: Session, whoami: dict | None) -> WorkspaceIdentity | None:
    """Turn the hub's whoami model of a token into a workspace identity, or None."""
    if not whoami or str(whoami.get("kind", "user")).lower() != "user":
        return None
    pair = server_of_scopes(list(whoami.get("scopes") or []))
    if pair is None or pair[0] != whoami.get("name"):
        return None
    return workspace_for(session, *pair)
