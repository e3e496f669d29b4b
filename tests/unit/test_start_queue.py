"""The start queue (sde_spawner.start_queue): first come, first served, at most N at once,
cancellation leaves the queue and passes the turn on, slots always come back."""

from __future__ import annotations

import asyncio

import pytest

from sde_spawner.start_queue import StartQueue


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_limit_hold_a_slot_and_the_rest_are_served_in_arrival_order():
    q = StartQueue(2)
    order: list[int] = []
    held = 0
    peak = 0
    gates = {i: asyncio.Event() for i in range(6)}

    async def start(i: int):
        nonlocal held, peak
        async with q.slot():
            held += 1
            peak = max(peak, held)
            order.append(i)
            await gates[i].wait()
            held -= 1

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(start(i)))
        await _settle()  # arrival order 0, 1, 2, ...
    assert order == [0, 1] and q.running == 2 and q.waiting == 4
    # Finishing out of order: 1 first, then 0; the longest waiter goes next each time.
    gates[1].set()
    await _settle()
    assert order == [0, 1, 2]
    gates[0].set()
    await _settle()
    assert order == [0, 1, 2, 3]
    for i in (5, 4, 3, 2):
        gates[i].set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert peak == 2 and q.running == 0 and q.waiting == 0


async def test_zero_is_no_limit():
    q = StartQueue(0)
    started = asyncio.Event()
    entered = 0

    async def start():
        nonlocal entered
        async with q.slot():
            entered += 1
            await started.wait()

    tasks = [asyncio.create_task(start()) for _ in range(30)]
    await _settle()
    assert entered == 30 and q.running == 30 and q.waiting == 0
    started.set()
    await asyncio.gather(*tasks)
    assert q.running == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_the_next_one_is_served():
    q = StartQueue(1)
    release_first = asyncio.Event()
    served: list[str] = []

    async def start(name: str, gate: asyncio.Event | None = None):
        async with q.slot():
            served.append(name)
            if gate is not None:
                await gate.wait()

    first = asyncio.create_task(start("first", release_first))
    await _settle()
    gone = asyncio.create_task(start("gone"))
    await _settle()
    last = asyncio.create_task(start("last"))
    await _settle()
    assert q.waiting == 2
    gone.cancel()  # e.g. start_timeout, or the person stopped the pending server
    await _settle()
    assert q.waiting == 1 and gone.cancelled()
    release_first.set()
    await asyncio.gather(first, last)
    assert served == ["first", "last"] and q.running == 0


async def test_a_waiter_cancelled_just_as_its_slot_came_hands_the_slot_on():
    q = StartQueue(1)
    await q.acquire()
    waiter = asyncio.create_task(q.acquire())
    await _settle()
    nxt = asyncio.create_task(q.acquire())
    await _settle()
    q.release()  # the slot goes to `waiter` (its future resolved) ...
    waiter.cancel()  # ... which is cancelled before it runs again
    await _settle()
    assert waiter.cancelled()
    assert nxt.done() and q.running == 1  # the slot went on to the next waiter, not lost
    q.release()
    assert q.running == 0


async def test_a_failed_start_gives_its_slot_back():
    q = StartQueue(1)

    async def failing():
        async with q.slot():
            raise RuntimeError("the engine said no")

    with pytest.raises(RuntimeError):
        await failing()
    assert q.running == 0
    async with q.slot():  # the next start is not stuck behind it
        assert q.running == 1


async def test_ahead_tells_a_waiter_how_many_are_before_it_and_is_silent_without_a_wait():
    q = StartQueue(1)
    told: list[int] = []
    await q.acquire(told.append)
    assert told == []  # a free slot: no waiting, nothing said
    waiters = [asyncio.create_task(q.acquire(told.append)) for _ in range(3)]
    await _settle()
    assert told == [0, 1, 2]
    for _ in range(4):
        q.release()
        await _settle()
    assert all(w.done() for w in waiters) and q.running == 0


def test_release_without_a_slot_and_a_negative_limit_are_refused():
    with pytest.raises(ValueError):
        StartQueue(-1)
    with pytest.raises(RuntimeError):
        StartQueue(1).release()
