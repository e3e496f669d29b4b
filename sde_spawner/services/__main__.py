"""Entry point of the ``sde`` service: ``python -m sde_spawner.services``."""

import asyncio

from tornado.log import enable_pretty_logging

from sde_spawner.services.app import ServiceSettings, make_app


async def main() -> None:
    enable_pretty_logging()
    settings = ServiceSettings.from_env()
    app = make_app(settings)
    app.listen(settings.port, address=settings.bind_ip, xheaders=False)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
