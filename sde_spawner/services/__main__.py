"""Entry point of the ``sde`` service: ``python -m sde_spawner.services``.

Settings: :class:`~sde_spawner.services.settings.ServiceSettings`, from the environment the
hub gives the service, then a config file or the command line; ``--help-all`` lists them.
"""

import asyncio
import contextlib
import logging
import signal
import sys

from tornado.log import enable_pretty_logging

from sde_spawner import lifecycle
from sde_spawner.services.app import ServiceSettings, http_server, make_app
from sde_spawner.services.audit_pages import checkpoint_loop


async def enforce_loop(sessionmaker, settings: ServiceSettings) -> None:
    """Close workspaces that lost their eligibility: as soon as the registry changes (looked
    for every ``registry_watch_seconds``), and every ``enforce_seconds`` in any case."""
    interval = settings.enforce_seconds
    watch = settings.registry_watch_seconds
    hub_api = settings.hub_api_url
    token = settings.api_token
    log = logging.getLogger("sde.lifecycle")

    def head() -> int:
        with sessionmaker() as s:
            return lifecycle.audit_head(s)

    def changed(after: int) -> tuple[int, bool]:
        with sessionmaker() as s:
            return lifecycle.registry_changed(s, after)

    seen = await asyncio.to_thread(head)
    loop_time = asyncio.get_running_loop().time
    last_sweep = loop_time()
    while True:
        await asyncio.sleep(min(watch, interval))
        try:
            seen, now_changed = await asyncio.to_thread(changed, seen)
            if not now_changed and loop_time() - last_sweep < interval:
                continue
            last_sweep = loop_time()
            for r in await asyncio.to_thread(
                lifecycle.enforce, sessionmaker, hub_api, token, "lifecycle"
            ):
                log.warning("closed %s", r)
        except Exception:
            log.exception("lifecycle sweep failed")


async def cull_loop(sessionmaker, settings: ServiceSettings) -> None:
    """Stop workspaces idle past their project's timeout, every ``cull_every_seconds``."""
    from sde_spawner import culling

    log = logging.getLogger("sde.culling")
    while True:
        await asyncio.sleep(settings.cull_every_seconds)
        try:
            await asyncio.to_thread(
                culling.cull,
                sessionmaker,
                settings.hub_api_url,
                settings.api_token,
                settings.idle_timeout,
            )
        except Exception:
            log.exception("idle culling failed")


async def usage_loop(sessionmaker, settings: ServiceSettings) -> None:
    """Sample running workspaces' CPU and memory every ``usage_sample_seconds`` (Docker's
    statistics, read in a thread)."""
    import docker

    from sde_spawner import usage

    log = logging.getLogger("sde.usage")
    client = None
    while True:
        await asyncio.sleep(settings.usage_sample_seconds)
        try:
            client = client or await asyncio.to_thread(docker.from_env)
            await asyncio.to_thread(
                usage.sample, sessionmaker, client, settings.usage_sample_seconds
            )
        except Exception:
            log.exception("usage sampling failed")


async def housekeeping_loop(app) -> None:
    """Remove the uploads a killed process left half-written; then write the aggregated
    ``rate.limited`` rows of closed windows every few seconds, and sweep abandoned drafts and
    unreferenced blobs every ``limit_sweep_seconds``."""
    from sde_spawner.checking import limits, sweep
    from sde_spawner.checking.storage import BlobStore

    lim = limits.for_app(app.settings)
    sessionmaker = app.settings["sessionmaker"]
    store = BlobStore.for_state_dir(app.settings["sde"].state_dir)
    log = logging.getLogger("sde.limits")
    tick = max(1.0, min(10.0, lim.settings.window_seconds / 4))
    every = lim.settings.sweep_seconds
    next_sweep = loop_time = asyncio.get_running_loop().time()
    cleared = await asyncio.to_thread(sweep.clear_interrupted_uploads, sessionmaker, store)
    if cleared.delete_temps:
        log.warning("removed %d interrupted upload(s)", len(cleared.delete_temps))
    try:
        while True:
            try:
                await asyncio.to_thread(sweep.write_aggregates, sessionmaker, lim)
                loop_time = asyncio.get_running_loop().time()
                if every and loop_time >= next_sweep:
                    next_sweep = loop_time + every
                    done = await asyncio.to_thread(sweep.sweep, sessionmaker, store, lim.settings)
                    if done.expire_drafts or done.delete_blobs or done.delete_temps:
                        log.warning("housekeeping: %s", done.summary())
            except Exception:
                log.exception("housekeeping failed")
            await asyncio.sleep(tick)
    finally:  # stopping: the counts of windows still open are written too
        with contextlib.suppress(Exception):
            sweep.write_aggregates(sessionmaker, lim, everything=True)


def load_settings(argv=None) -> ServiceSettings:
    """The settings from the environment, then the command line (``--help-all`` prints every
    setting and exits). A bad value exits with one line naming it."""
    try:
        settings = ServiceSettings.from_env()
    except ValueError as exc:
        raise SystemExit(f"sde service: {exc}") from None
    settings.initialize(argv)
    try:
        settings.check()
    except ValueError as exc:
        raise SystemExit(f"sde service: {exc}") from None
    return settings


async def main(settings: ServiceSettings) -> None:
    enable_pretty_logging()
    app = make_app(settings)
    server = http_server(app)
    server.listen(settings.port, address=settings.bind_ip)
    # JupyterHub stops a managed service with SIGINT, then SIGTERM. Handle both here: a hub
    # started in the background passes SIGINT on as *ignored*, and the service would then sit
    # out the hub's timeouts before being killed.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    loops = [
        asyncio.create_task(checkpoint_loop(app.settings["sessionmaker"], settings)),
        asyncio.create_task(enforce_loop(app.settings["sessionmaker"], settings)),
        asyncio.create_task(housekeeping_loop(app)),
        asyncio.create_task(cull_loop(app.settings["sessionmaker"], settings)),
        asyncio.create_task(usage_loop(app.settings["sessionmaker"], settings)),
    ]
    await stopping.wait()
    logging.getLogger("sde").info("stopping")
    server.stop()
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), 5)


if __name__ == "__main__":
    asyncio.run(main(load_settings(sys.argv[1:])))
