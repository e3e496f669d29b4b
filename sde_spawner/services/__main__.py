"""Entry point of the ``sde`` service: ``python -m sde_spawner.services``."""

import asyncio
import contextlib
import logging
import os

from tornado.log import enable_pretty_logging

from sde_spawner import lifecycle
from sde_spawner.services.app import ServiceSettings, http_server, make_app
from sde_spawner.services.audit_pages import checkpoint_loop


async def enforce_loop(sessionmaker) -> None:
    """Close workspaces that lost their eligibility, every SDE_ENFORCE_SECONDS."""
    interval = float(os.environ.get("SDE_ENFORCE_SECONDS", "60"))
    hub_api = os.environ["JUPYTERHUB_API_URL"]
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    while True:
        await asyncio.sleep(interval)
        try:
            for r in await asyncio.to_thread(
                lifecycle.enforce, sessionmaker, hub_api, token, "lifecycle"
            ):
                logging.getLogger("sde.lifecycle").warning("closed %s", r)
        except Exception:
            logging.getLogger("sde.lifecycle").exception("lifecycle sweep failed")


async def main() -> None:
    enable_pretty_logging()
    settings = ServiceSettings.from_env()
    app = make_app(settings)
    http_server(app).listen(settings.port, address=settings.bind_ip)
    await asyncio.gather(
        checkpoint_loop(app.settings["sessionmaker"], settings.state_dir),
        enforce_loop(app.settings["sessionmaker"]),
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
