"""Container side of the TRE: a Jupyter server extension (export requests, blocked downloads)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Tell jupyter_server which module holds the extension (found via the shipped config)."""
    return [{"module": "egress_extension"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the extension's handlers on the running server's tornado application."""
    # Imported here so that `import egress_extension` (e.g. for __version__) needs no
    # jupyter_server: the hub side installs this package too.
    from egress_extension.handlers import handlers

    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", handlers(base_url))
    serverapp.log.info("egress_extension %s loaded", __version__)
