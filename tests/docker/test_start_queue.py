"""The start queue against a real hub and engine (SDESpawner.start_concurrency).

Three researchers start at once on a hub that lets one start run at a time: all three
become ready, their containers are created in the order the starts arrived, and each is
created only after the one before it listens (Docker's own event and log times). Without the
queue (``SDE_START_CONCURRENCY=0``) all three are created before any listens, so this fails.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest

from benchmarks.spawn import DockerEvents, container_log_times
from sde_spawner.containers import workspace_names
from tests.support import Hub, User, retire_hub

pytestmark = pytest.mark.docker

PROJECT = "queue-study"
PEOPLE = ["quinn", "rowan", "sasha"]


class QueueHub(Hub):
    @property
    def env(self) -> dict:
        return {**super().env, "SDE_START_CONCURRENCY": "1"}


@pytest.fixture(scope="module")
def queue_hub(tmp_path_factory, docker_client, notebook_image):

    prefix = f"sdeq{uuid.uuid4().hex[:6]}"
    h = QueueHub(tmp_path_factory.mktemp("queue-hub"), prefix)
    h.seed()
    h.add_project(PROJECT, PEOPLE)
    h.start()
    yield h
    retire_hub(h, docker_client)


def test_starts_take_turns_in_arrival_order(queue_hub, docker_client):
    hub = queue_hub
    people = [User(hub, name) for name in PEOPLE]
    assert all(p.logged_in for p in people), hub.log_tail()
    for p in people:
        assert p.token
    events = DockerEvents(docker_client).start()
    try:
        posted: dict[str, float] = {}

        def post(p: User) -> None:
            posted[p.name] = time.time()
            r = p.api("POST", f"/users/{p.name}/servers/{PROJECT}", json={"project": PROJECT})
            assert r.status_code in (201, 202), r.text

        threads = []
        for p in people:  # one second apart: the order of arrival is known
            t = threading.Thread(target=post, args=(p,))
            t.start()
            threads.append(t)
            time.sleep(1.0)
        for t in threads:
            t.join()
        with ThreadPoolExecutor(len(people)) as pool:
            list(pool.map(lambda p: p.wait_ready(PROJECT, timeout=300), people))
        time.sleep(0.5)  # the last events arrive
        names = {p: workspace_names(p, PROJECT, hub.prefix).container for p in PEOPLE}
        t0 = min(posted.values())
        created = {p: events.first("container", "create", names[p], t0) for p in PEOPLE}
        listening = {p: container_log_times(docker_client, names[p])[1] for p in PEOPLE}
    finally:
        events.close()
    assert all(created.values()) and all(listening.values()), (created, listening)
    by_creation = sorted(PEOPLE, key=lambda p: created[p])
    assert by_creation == PEOPLE, f"created out of arrival order: {by_creation}"
    for before, after in pairwise(PEOPLE):
        assert created[after] > listening[before], (
            f"{after}'s container was created {listening[before] - created[after]:.2f}s "
            f"before {before}'s workspace listened: the starts did not take turns"
        )
    log = hub.log_path.read_text(errors="replace")
    assert "start(s) ahead of yours" in log or "yours is next" in log, hub.log_tail()
    for p in people:
        p.stop(PROJECT)
