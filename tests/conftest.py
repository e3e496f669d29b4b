"""Fixtures shared by the Docker and security tiers (the unit tier needs none of them)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.support import REPO, Hub, OutsideHost, retire_hub

#: ``SDE_IMAGE_TAG`` picks images built with the same variable (scripts/build-images.sh); the
#: test hubs inherit the environment, so their spawner uses the same workspace image.
NOTEBOOK_IMAGE = f"sde-notebook:{os.environ.get('SDE_IMAGE_TAG', 'latest')}"
os.environ.setdefault("SDE_WORKSPACE_IMAGE", NOTEBOOK_IMAGE)


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a running Docker engine: {exc}")
        pytest.skip(f"no Docker engine answers: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def notebook_image(docker_client):
    import docker

    try:
        docker_client.images.get(NOTEBOOK_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(["bash", str(REPO / "scripts" / "build-images.sh")], check=True)
    return NOTEBOOK_IMAGE


@pytest.fixture(scope="session")
def hub(tmp_path_factory, docker_client, notebook_image):
    prefix = f"sdet{uuid.uuid4().hex[:6]}"
    h = Hub(tmp_path_factory.mktemp("hub"), prefix)
    h.seed()
    h.start()
    yield h
    retire_hub(h, docker_client)


@pytest.fixture(scope="session")
def outside_host():
    host = OutsideHost(uuid.uuid4().hex[:6]).start()
    yield host
    host.stop()


@pytest.fixture(autouse=True)
def _close_fake_hub_auths():
    """HubOAuth makes a background event loop for sync token lookups and never closes it;
    close those of the test doubles after each test."""
    yield
    from sde_spawner.checking.testing import close_all_fake_auths

    close_all_fake_auths()
