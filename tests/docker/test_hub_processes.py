"""A stopped test hub leaves no process behind: its proxy and managed services (the `sde`
service, the idle culler) end with it, also when the hub itself is killed.

Found by the spawn benchmark: every run left a ``configurable-http-proxy`` and, often, the
two managed services running, parented to init, after ``tests.support.Hub.stop``. They
answered nothing but held ports and memory, and ran on through later tests and benchmarks.
``Hub.stop`` now ends whatever the hub started and left running, by PID
(:func:`tests.support.end_processes`); these tests are its control.
"""

from __future__ import annotations

import signal
import uuid

import psutil
import pytest

from tests.support import Hub, retire_hub

pytestmark = pytest.mark.docker


def _start(tmp_path) -> tuple[Hub, list[psutil.Process]]:
    h = Hub(tmp_path / "hub", f"sdep{uuid.uuid4().hex[:6]}")
    h.seed()
    h.start()
    children = psutil.Process(h.proc.pid).children(recursive=True)
    cmdlines = [" ".join(c.cmdline()) for c in children]
    # the hub's own: the proxy and both managed services (what must not outlive it)
    assert any("configurable-http-proxy" in c for c in cmdlines), cmdlines
    assert any("sde_spawner.services" in c for c in cmdlines), cmdlines
    assert any("jupyterhub_idle_culler" in c for c in cmdlines), cmdlines
    return h, children


def _alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return left


def test_a_stopped_hub_leaves_no_child_running(tmp_path, docker_client):
    h, children = _start(tmp_path)
    try:
        h.stop()
        assert _alive(children) == []
    finally:
        retire_hub(h, docker_client)


def test_a_killed_hub_leaves_no_child_running(tmp_path, docker_client):
    """SIGKILL gives the hub no cleanup at all: its proxy and services are orphaned (the
    first assertion shows they are), and ``Hub.stop`` ends them."""
    h, children = _start(tmp_path)
    try:
        h.proc.send_signal(signal.SIGKILL)
        h.proc.wait(10)
        assert len(_alive(children)) == len(children)  # orphaned, still running
        h.stop()
        assert _alive(children) == []
    finally:
        retire_hub(h, docker_client)
