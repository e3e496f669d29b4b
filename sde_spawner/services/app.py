"""The ``sde`` JupyterHub service: one tornado app for the output-checking pages and APIs and
the audit-ingestion API, reached by people through the proxy and by workspaces directly
through the one extra port the host firewall opens for them.

Run by JupyterHub as a managed service (``python -m sde_spawner.services``); its settings are
the one :class:`~sde_spawner.services.settings.ServiceSettings` object (``app.settings["sde"]``).
"""

from __future__ import annotations

import json
import os

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer

from sde_spawner.db import make_engine, make_sessionmaker
from sde_spawner.services.settings import ServiceSettings

__all__ = ["ServiceSettings", "http_server", "make_app"]


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """Completes the OAuth login with the app's own ``hub_auth`` (where the login redirect
    stored the OAuth state and PKCE verifier), not a separate ``HubOAuth.instance()``."""

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]


class HealthHandler(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"service": "sde", "ok": True}))


def make_app(settings: ServiceSettings, *, hub_auth: HubOAuth | None = None) -> web.Application:
    from sde_spawner.audit import api as audit_api
    from sde_spawner.checking import api as checking_api
    from sde_spawner.checking import pages as checking_pages
    from sde_spawner.imports import handlers as imports
    from sde_spawner.services import admin_pages, audit_pages, metrics

    hub_auth = hub_auth or HubOAuth(api_token=settings.api_token, cache_max_age=60)
    sessionmaker = make_sessionmaker(make_engine(settings.db_url))
    p = settings.prefix
    routes = [
        (url_path_join(p, "api/health"), HealthHandler),
        (url_path_join(p, "oauth_callback"), OAuthCallbackHandler),
        *audit_api.routes(p),
        *audit_pages.routes(p),
        *admin_pages.routes(p),
        *metrics.routes(p),
    ]
    routes += checking_api.routes(p) + checking_pages.routes(p)
    routes += imports.routes(p)
    return web.Application(
        routes,
        hub_auth=hub_auth,
        sessionmaker=sessionmaker,
        sde=settings,
        cookie_secret=os.urandom(32),
        xsrf_cookies=False,
        template_path=os.path.join(os.path.dirname(__file__), "..", "checking", "templates"),
    )


#: Bytes tornado reads from a socket at once and hands to a streaming handler: export uploads
#: arrive in pieces of this size (tornado's 64 KiB default means 16 times as many trips
#: through the event loop for the same file).
HTTP_CHUNK_SIZE = 1024 * 1024


def http_server(app: web.Application) -> HTTPServer:
    """The service's HTTP server for ``app`` (not yet listening; ``listen`` or ``add_sockets``).

    Bodies are limited to ``SDE_LIMIT_DEFAULT_BODY_BYTES`` (4 MiB, not tornado's 100 MiB);
    streaming routes set their own limit before the body is read."""
    from sde_spawner.checking.limits import for_app

    limit = for_app(app.settings).settings.default_body_bytes
    return HTTPServer(app, xheaders=False, chunk_size=HTTP_CHUNK_SIZE, max_body_size=limit)
