"""Entry point of the ``sde`` service: ``python -m sde_spawner.services``."""

import asyncio
import contextlib
import logging
import os
import signal

from tornado.log import enable_pretty_logging

from sde_spawner import lifecycle
from sde_spawner.services.app import ServiceSettings, http_server, make_app
from sde_spawner.services.audit_pages import checkpoint_loop


async def enforce_loop(sessionmaker) -> None:
    """Close workspaces that lost their eligibility: as soon as the registry changes (looked
    for every SDE_REGISTRY_WATCH_SECONDS), and every SDE_ENFORCE_SECONDS in any case."""
    interval = float(os.environ.get("SDE_ENFORCE_SECONDS", "60"))
    watch = float(os.environ.get("SDE_REGISTRY_WATCH_SECONDS", "1"))
    hub_api = os.environ["JUPYTERHUB_API_URL"]
    token = os.environ["JUPYTERHUB_API_TOKEN"]
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


async def housekeeping_loop(app) -> None:
    """Remove the uploads a killed process left half-written; then write the aggregated
    ``rate.limited`` rows of closed windows every few seconds, and sweep abandoned drafts and
    unreferenced blobs every ``SDE_LIMIT_SWEEP_SECONDS``."""
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


async def main() -> None:
    enable_pretty_logging()
    settings = ServiceSettings.from_env()
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
        asyncio.create_task(checkpoint_loop(app.settings["sessionmaker"], settings.state_dir)),
        asyncio.create_task(enforce_loop(app.settings["sessionmaker"])),
        asyncio.create_task(housekeeping_loop(app)),
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
    asyncio.run(main())
