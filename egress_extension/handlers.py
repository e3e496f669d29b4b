"""HTTP handlers of the egress extension, mounted under ``<base_url>egress/``.

For now only ``GET <base_url>egress/api/status``: an authenticated probe that says the
extension is loaded and which version runs. Export requests and download blocking are added
by later work; every handler here must stay behind jupyter_server's authentication.
"""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from egress_extension import __version__

EXTENSION_NAME = "egress_extension"


class StatusHandler(APIHandler):
    """``GET egress/api/status``: JSON naming the extension and its version."""

    @web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"extension": EXTENSION_NAME, "version": __version__}))


def handlers(base_url: str) -> list[tuple[str, type[web.RequestHandler]]]:
    """The extension's (URL pattern, handler) pairs below the server's ``base_url``."""
    return [(url_path_join(base_url, "egress", "api", "status"), StatusHandler)]
