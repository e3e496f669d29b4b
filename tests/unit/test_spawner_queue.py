"""SDESpawner's start queue wiring (sde_spawner.start_queue): who waits, when, and that the
slot always comes back.

The gate and the extract are real (the demo registry in SQLite, the extract built on disk);
the engine's part is replaced by a failure, so no Docker engine is needed: the tier that
runs real starts in turns is tests/docker/test_start_queue.py.
"""

from __future__ import annotations

import asyncio
import types

import pytest

from sde_spawner.rooms import SDC_SETTINGS, SpawnRefused
from sde_spawner.spawner import SDESpawner, default_start_concurrency
from tests.support import seeded_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with seeded_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture
def make_spawner(registry, monkeypatch):
    for name in SDC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(SDESpawner, "_start_queues", {})  # this test's queues only

    def make(username: str, **traits) -> SDESpawner:
        user = types.SimpleNamespace(name=username, id=7, url=f"/user/{username}/", spawners={})
        hub = types.SimpleNamespace(
            public_host="",
            url="http://127.0.0.1:8081/hub/",
            base_url="/hub/",
            api_url="http://127.0.0.1:8081/hub/api",
        )
        spawner = SDESpawner(
            user=user,
            hub=hub,
            registry_url=registry.url,
            extracts_dir=registry.extracts,
            manage_host_firewall=False,
            **traits,
        )
        spawner.user_options = {"project": "diabetes-outcomes"}
        return spawner

    return make


async def _until(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _messages(spawner: SDESpawner) -> list[str]:
    return [e["message"] for e in spawner._events]


async def test_an_admitted_start_waits_for_its_turn_then_gives_the_slot_back(make_spawner):
    spawner = make_spawner("alice", start_concurrency=1)
    queue = spawner.start_queue
    engine_calls = []

    async def no_imports(project):
        return None

    async def engine_down():
        engine_calls.append(queue.running)
        raise RuntimeError("the engine is down")

    spawner._prepare_imports = no_imports
    spawner._ensure_network = engine_down
    await queue.acquire()  # another start holds the only slot
    task = asyncio.create_task(spawner.start())
    await _until(lambda: queue.waiting == 1)
    assert _messages(spawner) == ["Checking approvals", "Waiting for a start slot: yours is next"]
    await asyncio.sleep(0.2)
    assert not task.done() and not engine_calls  # no extract, no engine call before its turn
    queue.release()
    with pytest.raises(RuntimeError, match="engine is down"):
        await task
    assert engine_calls == [1]  # it held the slot while it used the engine
    assert "Preparing your data" in _messages(spawner)
    assert queue.running == 0 and queue.waiting == 0  # the failed start gave it back


async def test_a_refused_person_is_told_at_once_and_never_queues(make_spawner):
    held = make_spawner("alice", start_concurrency=1)
    await held.start_queue.acquire()
    eve = make_spawner("eve", start_concurrency=1)  # the demo's researcher, training expired
    with pytest.raises(SpawnRefused, match="training"):
        await asyncio.wait_for(eve.start(), 10)
    assert eve.start_queue is held.start_queue
    assert held.start_queue.waiting == 0 and held.start_queue.running == 1
    held.start_queue.release()


async def test_a_start_cancelled_in_the_queue_leaves_it(make_spawner):
    spawner = make_spawner("alice", start_concurrency=1)
    queue = spawner.start_queue
    await queue.acquire()
    task = asyncio.create_task(spawner.start())
    await _until(lambda: queue.waiting == 1)
    task.cancel()  # JupyterHub's start_timeout (asyncio.wait_for) cancels start()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.waiting == 0 and queue.running == 1
    queue.release()
    assert queue.running == 0


def test_the_default_is_the_cpus_the_hub_may_use_and_at_least_two(make_spawner, monkeypatch):
    assert make_spawner("alice").start_concurrency == default_start_concurrency()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_start_concurrency() == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_start_concurrency() == 16
    assert make_spawner("alice", start_concurrency=0).start_queue.limit == 0
