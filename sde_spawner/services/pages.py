"""The one guard of every page of the ``sde`` service: a person's browser session, nothing else.

Pages (checking, releases and downloads, manifests, the audit page and its export) are for a
person logged in to the hub in a browser: the service's HubOAuth cookie, with the form's
``_xsrf`` token on anything but GET/HEAD. Every page handler derives from
:class:`BrowserPage`, whose ``prepare`` runs :meth:`BrowserPage.guard` before any method: so a
page cannot be added without it (``tests/unit/test_page_guards.py`` checks every route).

HubAuth, which resolves the cookie, also accepts tokens: an ``Authorization`` header
(``token``/``bearer`` and *any* whitespace), and ``token`` as a URL or form argument
(websocket requests, or ``allow_token_in_url``). A token is what a workspace holds, and what a
person may paste into one; with it a page would be driven from inside the locked room. So a
page request carrying *any* of these (:func:`token_transport`) is refused (403) and audited
before HubAuth is asked anything, and a user HubAuth still reports as token-authenticated is
refused too. Pages are also served only to the proxy's addresses
(``SDE_CHECKING_PAGE_NETWORKS``, default loopback): workspaces reach the service port directly
from their gateway and get no page even with a login.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

from sde_spawner import audit
from sde_spawner.services.identity import server_of_scopes

BROWSER_ONLY = (
    "this page needs a person's browser login: API and workspace tokens can never review, "
    "approve or download releases"
)
STALE_FORM = "the form's xsrf token is missing or stale: reload the page and try again"
SAFE_METHODS = ("GET", "HEAD")
#: Where the configurable-http-proxy connects from (it runs on the hub host).
DEFAULT_PAGE_NETWORKS = ("127.0.0.0/8", "::1/128")
#: Arguments HubAuth reads a token from (``get_argument``: the query and a form body).
TOKEN_ARGUMENTS = ("token",)


def parse_networks(text: str) -> tuple[str, ...]:
    nets = tuple(n.strip() for n in text.split(",") if n.strip())
    for net in nets:
        ipaddress.ip_network(net)  # a typo raises ValueError naming it
    return nets


def allowed_from(remote_ip: str | None, networks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(remote_ip or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in networks)


def token_transport(request) -> str | None:
    """How ``request`` carries a token, if it does: any ``Authorization`` header (whatever its
    scheme or spacing), or a ``token`` argument in the query or the form body."""
    if "Authorization" in request.headers:
        return "an Authorization header"
    for name in TOKEN_ARGUMENTS:
        if name in request.query_arguments:
            return f"a {name!r} query argument"
        if name in request.body_arguments:
            return f"a {name!r} form field"
    return None


class BrowserPage(HubOAuthenticated, web.RequestHandler):
    """Base of every page: :meth:`guard` runs first; the person is ``self.current_user``.

    ``action`` names refusals in the audit trail; subclasses set their own.
    """

    action = "page.viewed"

    @property
    def hub_auth(self):
        # the app's one HubOAuth: the login redirect and the callback must share its state
        return self.settings["hub_auth"]

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")  # pages that frame their own say SAMEORIGIN

    async def prepare(self):
        await self.before_guard()
        await self.guard()
        if not self._finished:  # not redirected to the login
            await self.after_guard()

    async def before_guard(self) -> None:
        """Checks that come before the guard (a flood gate: before any other work)."""

    async def after_guard(self) -> None:
        """Checks that need the guarded, signed-in person."""

    async def refuse(self, reason: str, *, actor: str | None, status: int = 403):
        """Audit a refused page request, then answer it with ``reason``. Beyond the caller's
        refusal budget the refusal is counted into its ``rate.limited`` row instead
        (:mod:`sde_spawner.checking.limits`): refusals cannot flood the audit trail."""
        from sde_spawner.checking import flood, limits

        budget = limits.for_app(self.settings)
        if not budget.audit_refusal([("addr", flood.client_ip(self))], f"{status} {self.action}"):
            raise web.HTTPError(status, reason.replace("%", "%%"))
        await asyncio.to_thread(
            audit.append_committed,
            self.settings["sessionmaker"],
            self.action,
            actor=(actor or "(unidentified)")[:64],
            outcome="denied",
            reason=reason[:2000],
            details={
                "path": self.request.path,
                "method": self.request.method,
                "remote": self.request.remote_ip,
            },
        )
        raise web.HTTPError(status, reason.replace("%", "%%"))

    async def _token_owner(self) -> str | None:
        """Best effort: whose token was sent (for the audit trail only; never trusted)."""
        m = self.hub_auth.auth_header_pat.match(self.request.headers.get("Authorization", ""))
        token = m.group(1).strip() if m else self.get_argument("token", "")
        if not token:
            return None
        try:
            whoami = await self.hub_auth.user_for_token(token, sync=False)
        except Exception:  # naming the owner is best effort
            return None
        name = (whoami or {}).get("name")
        return str(name) if name else None

    def _xsrf_ok(self) -> bool:
        sent = (
            self.get_body_argument("_xsrf", None)
            or self.get_query_argument("_xsrf", None)
            or self.request.headers.get("X-Xsrftoken")
            or self.request.headers.get("X-Csrftoken")
        )
        if not sent:
            return False
        return hmac.compare_digest(sent.encode("utf-8", "replace"), self.xsrf_token)

    def page_networks(self) -> tuple[str, ...]:
        return tuple(self.settings["sde"].page_networks)

    async def guard(self) -> None:
        """Refuse anything but a person's browser session; redirect a GET without one."""
        transport = token_transport(self.request)
        if transport:
            await self.refuse(
                f"{BROWSER_ONLY} (this request carried {transport}; pages take the browser "
                "session cookie only)",
                actor=await self._token_owner(),
            )
        if not allowed_from(self.request.remote_ip, self.page_networks()):
            await self.refuse(
                "pages are served only through the hub's proxy, not to workspaces "
                f"(this request came from {self.request.remote_ip})",
                actor=None,
            )
        if self.request.method not in SAFE_METHODS and not self._xsrf_ok():
            await self.refuse(STALE_FORM, actor=None)
        model = await self.hub_auth.get_user(self, sync=False)
        if model and getattr(self, "_token_authenticated", False):
            # HubAuth found a token some way token_transport does not know: still no page
            await self.refuse(BROWSER_ONLY, actor=model.get("name"))
        if model:
            try:
                model = self.check_hub_user(model)
            except UserNotAllowed:
                await self.refuse(
                    f"{model.get('name')} may not use the sde service", actor=model.get("name")
                )
            if model.get("kind", "user") != "user" or server_of_scopes(
                list(model.get("scopes") or [])
            ):
                await self.refuse(BROWSER_ONLY, actor=model.get("name"))
        self._hub_auth_user_cache = model or None
        self.current_user = model or None
        if not model:
            if self.request.method in SAFE_METHODS:
                self.redirect(self.get_login_url())
                return
            await self.refuse(
                "not logged in, or the form is stale (xsrf): reload the page and try again",
                actor=None,
            )

    def write_error(self, status_code, **kwargs):
        """The reason of a refusal, as a minimal page (pages with templates override this)."""
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args
        else:
            message = self._reason
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(f"<!doctype html><p>{status_code}: {web.escape.xhtml_escape(message)}</p>\n")

    def get_current_user(self):
        """Set by :meth:`guard` (asynchronously); never a blocking call to the hub here."""
        return getattr(self, "_hub_auth_user_cache", None)
