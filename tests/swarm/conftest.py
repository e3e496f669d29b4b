"""Fixtures of the Swarm tier: a two-node swarm of this lab's own engines (tests/swarm/lab.py),
a hub stand-in on node A, a listener on "the outside test host", and a demo registry."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from sde_spawner.swarm import EXTRACTS_LABEL
from tests.support import seeded_registry
from tests.swarm import lab as lab_mod

NOTEBOOK_IMAGE = f"sde-notebook:{os.environ.get('SDE_IMAGE_TAG', 'latest')}"
HUB = "sdesw-hub"  # the hub's container (a stand-in answering HTTP on the hub API port)
HUB_PORT = 8081
OUTSIDE_PORT = 8099


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/swarm/" in str(item.fspath):
            item.add_marker(pytest.mark.swarm)


@pytest.fixture(scope="session")
def swarm_lab():
    reason = lab_mod.prerequisites()
    if reason:
        pytest.skip(f"no swarm lab on this machine: {reason}")
    res = subprocess.run(
        ["docker", "image", "inspect", NOTEBOOK_IMAGE], capture_output=True, check=False
    )
    if res.returncode != 0:
        pytest.skip(f"the machine's engine has no {NOTEBOOK_IMAGE} to load into the swarm")
    lab = lab_mod.Lab()
    # SDE_SWARM_LAB=reuse: a lab brought up by hand stays up (for working on these tests).
    reuse = os.environ.get("SDE_SWARM_LAB") == "reuse" and lab.attach()
    try:
        if reuse:
            lab.nodes["a"].docker("rm", "-f", HUB, check=False)
            lab.nodes["a"].docker("network", "rm", "sdesw-hubnet", check=False)
        else:
            t0 = time.monotonic()
            lab.up((NOTEBOOK_IMAGE,))
            lab.timings["up"] = time.monotonic() - t0
        a, b = lab.nodes["a"], lab.nodes["b"]
        for node, store in ((a, "lab-a"), (b, "lab-b")):
            a.docker("node", "update", "--label-add", f"{EXTRACTS_LABEL}={store}", node.node_id)
        # The hub's container on the manager, first on a network of its own.
        a.docker("network", "create", "--internal", "sdesw-hubnet")
        a.docker(
            "run", "-d", "--name", HUB, "--network", "sdesw-hubnet", "--user", "1000",
            NOTEBOOK_IMAGE, "python3", "-m", "http.server", str(HUB_PORT),
        )  # fmt: skip
        print(f"swarm lab timings: {lab.timings}", file=sys.stderr)
        yield lab
    finally:
        if reuse:
            lab.nodes["a"].docker("rm", "-f", HUB, check=False)
            lab.nodes["a"].docker("network", "rm", "sdesw-hubnet", check=False)
        else:
            t0 = time.monotonic()
            lab.down()
            print(f"swarm lab down: {time.monotonic() - t0:.1f}s", file=sys.stderr)


@pytest.fixture(scope="session")
def outside_listener(swarm_lab):
    """An HTTP listener on the outside test host's address (the switch namespace)."""
    proc = subprocess.Popen(
        [
            "ip", "netns", "exec", lab_mod.OUTSIDE_NS, sys.executable, "-m", "http.server",
            "--bind", lab_mod.HOST_ADDR, str(OUTSIDE_PORT),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    yield (lab_mod.HOST_ADDR, OUTSIDE_PORT)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    with seeded_registry(tmp_path_factory.mktemp("swarm-registry")) as registry:
        yield registry
