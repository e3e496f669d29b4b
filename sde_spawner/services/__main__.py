"""Entry point of the ``sde`` service: ``python -m sde_spawner.services``."""

import asyncio
import contextlib

from tornado.log import enable_pretty_logging

from sde_spawner.services.app import ServiceSettings, make_app
from sde_spawner.services.audit_pages import checkpoint_loop


async def main() -> None:
    enable_pretty_logging()
    settings = ServiceSettings.from_env()
    app = make_app(settings)
    app.listen(settings.port, address=settings.bind_ip, xheaders=False)
    await checkpoint_loop(app.settings["sessionmaker"], settings.state_dir)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
