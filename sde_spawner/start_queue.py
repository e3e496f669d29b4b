"""A first-come, first-served queue of workspace starts: at most N at once on one host.

Why: starting a workspace is CPU work on the Docker host (the engine creates the network and
the container; the single-user server inside imports and starts JupyterLab). With twenty starts
at once on two cores, all twenty share the CPU, so all twenty become ready together at the end,
as late as the last one. Letting N run at a time and the rest wait in arrival order does the
same work in about the same total time, but the first arrivals are ready early: the median
wait falls to about half (``python -m benchmarks.spawn --concurrent 20``; README, "Start
queue"). Nothing about the workspace itself changes.

:class:`StartQueue` is pure asyncio (no Docker, no JupyterHub): waiters are served strictly in
the order they arrived, a waiter that gives up (its start is cancelled: timeout, or the person
stops the pending server) leaves the queue and passes its turn on, and a slot is always handed
back, however the start ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable


class StartQueue:
    """At most ``limit`` holders at a time (0: no limit); the others wait in arrival order."""

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"the start queue's limit must be 0 (none) or more: {limit}")
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        """Starts waiting for a slot."""
        return sum(not w.done() for w in self._waiters)

    def _free(self) -> bool:
        return self.limit == 0 or self.running < self.limit

    async def acquire(self, ahead: Callable[[int], None] | None = None) -> None:
        """Wait for a slot. ``ahead(n)`` is called once, before waiting, with the number of
        starts already waiting (served first); it is not called when a slot is free at once."""
        if self._free() and not self._waiters:
            self.running += 1
            return
        if ahead is not None:
            ahead(self.waiting)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # resolved by _wake, which has counted this start as running
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot came just as we gave up
                self.release()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def release(self) -> None:
        """Hand a slot back: the longest waiter (if any) gets it."""
        if self.running <= 0:
            raise RuntimeError("StartQueue.release() without a slot held")
        self.running -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._free():
            fut = self._waiters.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, ahead: Callable[[int], None] | None = None) -> AsyncIterator[None]:
        """``async with queue.slot():`` the start's work; the slot is released on any exit."""
        await self.acquire(ahead)
        try:
            yield
        finally:
            self.release()
