"""Who may log in to the hub: choosing the authenticator, and the demo login.

:func:`choose_login` is the one place the authenticator is picked (``jupyterhub_config.py``
calls it with the environment). Production names its authenticator class in
``SDE_AUTHENTICATOR``: ``oidc`` is :class:`sde_spawner.oidc.SDEOAuthenticator` (OpenID Connect
with MFA, configured by ``SDE_OIDC_*``, see :func:`sde_spawner.oidc.oidc_settings`). Any class
must carry :class:`~sde_spawner.hub_gate.WorkspaceGateMixin` and
:class:`~sde_spawner.hub_events.AuditedLogoutMixin`, e.g.
``class SDEOAuthenticator(WorkspaceGateMixin, AuditedLogoutMixin, GenericOAuthenticator)``,
or the hub refuses to start. :class:`DemoAuthenticator` (one shared password) runs only when
demo mode is asked for explicitly (``SDE_DEMO=1``, as ``make demo`` and the test tiers do),
with a password given in ``SDE_DEMO_PASSWORD`` (never defaulted), and only while the public
bind address is loopback. Anything else refuses to start with one message.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlparse

from jupyterhub.auth import Authenticator
from traitlets import Unicode

from sde_spawner import audit
from sde_spawner.hub_events import AuditedLogoutMixin
from sde_spawner.hub_gate import WorkspaceGateMixin
from sde_spawner.registry.models import PersonStatus
from sde_spawner.registry.store import get_person
from sde_spawner.rooms import _sessionmaker

DEMO_CLASS = "sde_spawner.auth.DemoAuthenticator"
OIDC_CLASS = "sde_spawner.oidc.SDEOAuthenticator"
#: Short names for SDE_AUTHENTICATOR.
ALIASES = {"oidc": OIDC_CLASS}
DEFAULT_PUBLIC_BIND = "http://127.0.0.1:8000"
TRUTHY = {"1", "true", "yes", "on"}


class LoginRefused(Exception):
    """The login settings are unsafe or incomplete: the hub must not start."""


@dataclass(frozen=True)
class LoginChoice:
    authenticator_class: str
    demo_password: str | None = None  # demo mode only
    #: Traits of the authenticator class read from the environment (its config section).
    settings: dict = field(default_factory=dict)

    @property
    def section(self) -> str:
        """The class's name: its section of the hub's config (``c[section]``)."""
        return self.authenticator_class.rpartition(".")[2]


def is_loopback_bind(url: str) -> bool:
    """Is the hub's public bind URL a loopback address (127.0.0.0/8 or ::1) literal?"""
    host = urlparse(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or all interfaces) may be, or become, reachable from the LAN


def choose_login(environ) -> LoginChoice:
    """The authenticator for these settings, or :class:`LoginRefused` saying what to set."""
    demo = environ.get("SDE_DEMO", "").strip().lower() in TRUTHY
    named = environ.get("SDE_AUTHENTICATOR", "").strip()
    named = ALIASES.get(named, named)
    bind = environ.get("SDE_PUBLIC_BIND", "").strip() or DEFAULT_PUBLIC_BIND
    if demo:
        if named and named != DEMO_CLASS:
            raise LoginRefused(
                f"SDE_DEMO=1 uses the demo login, but SDE_AUTHENTICATOR names {named}: "
                "unset one of them"
            )
        if not is_loopback_bind(bind):
            raise LoginRefused(
                f"the demo login (one shared password) is served on loopback only, and "
                f"SDE_PUBLIC_BIND is {bind}: bind 127.0.0.1 or ::1, or configure a real "
                "authenticator in SDE_AUTHENTICATOR and unset SDE_DEMO"
            )
        password = environ.get("SDE_DEMO_PASSWORD", "")
        if not password:
            raise LoginRefused("demo mode (SDE_DEMO=1) needs its password in SDE_DEMO_PASSWORD")
        return LoginChoice(DEMO_CLASS, password)
    if not named:
        raise LoginRefused(
            "no authenticator configured: set SDE_AUTHENTICATOR to the login class of this "
            "deployment (e.g. an OpenID Connect authenticator with WorkspaceGateMixin and "
            "AuditedLogoutMixin), or SDE_DEMO=1 for the demo login on loopback"
        )
    if named == DEMO_CLASS:
        raise LoginRefused(
            "the demo login (one shared password) runs only in demo mode: set SDE_DEMO=1 "
            "(loopback only), or name a real authenticator in SDE_AUTHENTICATOR"
        )
    module, _, name = named.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError) as exc:
        raise LoginRefused(f"SDE_AUTHENTICATOR={named} cannot be imported: {exc}") from None
    if not isinstance(cls, type) or not issubclass(cls, Authenticator):
        raise LoginRefused(f"SDE_AUTHENTICATOR={named} is not a JupyterHub authenticator class")
    missing = [
        m.__name__ for m in (WorkspaceGateMixin, AuditedLogoutMixin) if not issubclass(cls, m)
    ]
    if missing:
        raise LoginRefused(
            f"SDE_AUTHENTICATOR={named} lacks {' and '.join(missing)} (sde_spawner): without "
            "them workspaces reach the whole hub and logouts go unaudited"
        )
    if named == OIDC_CLASS:
        from sde_spawner.oidc import oidc_settings

        try:
            return LoginChoice(named, settings=oidc_settings(environ))
        except ValueError as exc:
            raise LoginRefused(str(exc)) from None
    return LoginChoice(named)


class DemoAuthenticator(WorkspaceGateMixin, AuditedLogoutMixin, Authenticator):
    """Accepts registered, active people with the shared demo password."""

    registry_url = Unicode(help="SQLAlchemy URL of the registry.").tag(config=True)
    demo_password = Unicode(
        "",
        help="The one password of every demo account (SDE_DEMO_PASSWORD). Demo only; "
        "while empty, every login is refused.",
    ).tag(config=True)

    def _check(self, username: str, password: str) -> tuple[bool, str]:
        Session = _sessionmaker(self.registry_url)
        with Session() as session, session.begin():
            person = get_person(session, username)
            if person is None:
                ok, reason = False, "unknown user"
            elif not self.demo_password:
                ok, reason = False, "no demo password configured"
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
