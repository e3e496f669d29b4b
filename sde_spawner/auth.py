"""Demo login: registered people only, one shared demo password; every attempt audited.

Production deployments use an OpenID Connect provider through oauthenticator; this class
exists for ``make demo`` and the test tiers, and is refused unless explicitly configured.
Whatever the authenticator, give it :class:`~sde_spawner.hub_gate.WorkspaceGateMixin` and
:class:`~sde_spawner.hub_events.AuditedLogoutMixin` first, e.g.
``class SDEOAuthenticator(WorkspaceGateMixin, AuditedLogoutMixin, GenericOAuthenticator)``.
"""

from __future__ import annotations

import asyncio
import hmac

from jupyterhub.auth import Authenticator
from traitlets import Unicode

from sde_spawner import audit
from sde_spawner.hub_events import AuditedLogoutMixin
from sde_spawner.hub_gate import WorkspaceGateMixin
from sde_spawner.registry.models import PersonStatus
from sde_spawner.registry.store import get_person
from sde_spawner.spawner import _sessionmaker


class DemoAuthenticator(WorkspaceGateMixin, AuditedLogoutMixin, Authenticator):
    """Accepts registered, active people with the shared demo password."""

    registry_url = Unicode(help="SQLAlchemy URL of the registry.").tag(config=True)
    demo_password = Unicode("demo", help="The one password of every demo account. Demo only.").tag(
        config=True
    )

    def _check(self, username: str, password: str) -> tuple[bool, str]:
        Session = _sessionmaker(self.registry_url)
        with Session() as session, session.begin():
            person = get_person(session, username)
            if person is None:
                ok, reason = False, "unknown user"
            elif not hmac.compare_digest(password.encode(), self.demo_password.encode()):
                ok, reason = False, "wrong password"
            elif person.status != PersonStatus.active:
                ok, reason = False, "account suspended"
            else:
                ok, reason = True, None
            audit.append(
                session,
                "login" if ok else "login.failed",
                actor=username[:64] or "(empty)",
                outcome="allowed" if ok else "denied",
                reason=reason,
            )
        return ok, reason or ""

    async def authenticate(self, handler, data):
        username = self.normalize_username((data or {}).get("username", ""))
        password = (data or {}).get("password", "")
        ok, reason = await asyncio.to_thread(self._check, username, password)
        if not ok:
            self.log.warning("demo login refused for %r: %s", username, reason)
            return None
        return username

    def check_allowed(self, username, authentication=None):
        return True  # authenticate() already consulted the registry
