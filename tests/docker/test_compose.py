"""docker-compose.yml end to end: PostgreSQL and the hub in containers, as an operator runs them.

Brought up with `docker-compose` on its own ports, object prefix and host directory; seeded
with `sde-admin demo-seed` inside the hub container; then alice logs in through the proxy,
opens her project and gets a sealed workspace (no default route, no IPv6, `/files/` refused);
the registry and audit trail live in the compose PostgreSQL and verify. Torn down with
`docker-compose down -v` and the workspace objects removed by their prefix.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import types
import uuid

import pytest
import requests
import yaml

from tests.support import REPO, User, free_port, remove_prefixed, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if os.environ.get("CI"):
        pytest.fail("CI needs docker-compose (scripts/ensure-system.sh --test installs it)")
    pytest.skip("neither docker-compose nor the compose plugin is installed")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client, notebook_image):
    from sde_spawner import firewall

    image_tag = os.environ.get("SDE_IMAGE_TAG", "latest")  # docker-compose.yml takes it too
    for image in (f"sde-hub:{image_tag}", f"sde-postgres:{image_tag}"):
        docker_client.images.get(image)  # built by `make test` (IMAGES includes postgres)
    tag = uuid.uuid4().hex[:6]
    host_dir = tmp_path_factory.mktemp("compose")
    env = {
        **os.environ,
        "SDE_HOST_DIR": str(host_dir),
        "SDE_DB_PASSWORD": secrets.token_hex(12),
        "SDE_DB_PORT": str(free_port()),
        "SDE_HUB_PORT": str(free_port()),
        "SDE_SERVICE_PORT": str(free_port()),
        "SDE_PROXY_API_PORT": str(free_port()),
        "SDE_OBJECT_PREFIX": f"sdec{tag}",
        "SDE_DEMO": "1",  # the demo login; the hub refuses to start without a login choice
        "SDE_DEMO_PASSWORD": "demo",
    }
    env["SDE_PUBLIC_BIND"] = f"http://127.0.0.1:{free_port()}"
    compose = [*compose_command(), "-p", f"sdecompose{tag}", "-f", str(REPO / "docker-compose.yml")]

    def run(*args, check=True):
        return subprocess.run(
            [*compose, *args], cwd=REPO, env=env, capture_output=True, text=True, check=check,
            timeout=300,
        )  # fmt: skip

    run("up", "-d")
    url = env["SDE_PUBLIC_BIND"]
    try:

        def up():
            try:
                return requests.get(f"{url}/hub/login", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, 120, "the compose hub to answer")
        seeded = run("exec", "-T", "hub", "sde-admin", "demo-seed", f"{host_dir}/datasets")
        assert "created" in seeded.stdout, seeded.stdout + seeded.stderr
        yield types.SimpleNamespace(url=url, env=env, run=run, log_tail=lambda n=40: "")
    finally:
        logs = run("logs", "--tail", "60", "hub", check=False).stdout
        run("down", "-v", check=False)
        remove_prefixed(docker_client, env["SDE_OBJECT_PREFIX"])
        firewall.revoke(int(env["SDE_HUB_PORT"]))
        firewall.revoke(int(env["SDE_SERVICE_PORT"]))
        subprocess.run(["rm", "-rf", str(host_dir)], check=False)
        print(logs)


def test_the_compose_deployment_opens_a_sealed_workspace(deployment, docker_client):
    from sde_spawner.containers import workspace_names

    alice = User(deployment, "alice")
    assert alice.logged_in
    r = alice.spawn_with_form(PROJECT, PROJECT)
    assert r.status_code == 302, r.text[-1500:]
    alice.wait_ready(PROJECT, timeout=120)
    r = alice.s.get(f"{deployment.url}/user/alice/{PROJECT}/lab")
    assert r.status_code == 200 and "JupyterLab" in r.text
    assert alice.s.get(f"{deployment.url}/user/alice/{PROJECT}/files/x.csv").status_code == 403

    names = workspace_names("alice", PROJECT, deployment.env["SDE_OBJECT_PREFIX"])
    box = docker_client.containers.get(names.container)
    routes = box.exec_run(["cat", "/proc/net/route"]).output.decode().splitlines()[1:]
    assert routes and all(line.split()[1] != "00000000" for line in routes)  # sealed by nsenter
    assert box.exec_run(["cat", "/proc/net/if_inet6"]).output == b""
    assert docker_client.networks.get(names.network).attrs["Internal"] is True

    # the registry and the audit trail are in the compose PostgreSQL, intact
    verify = deployment.run("exec", "-T", "hub", "sde-admin", "audit", "verify")
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout + verify.stderr
    started = deployment.run(
        "exec", "-T", "hub", "sde-admin", "audit", "query", "--action", "spawn.started"
    )
    assert "alice" in started.stdout and PROJECT in started.stdout
    assert "postgresql" in deployment.run("exec", "-T", "hub", "printenv", "SDE_DB_URL").stdout
    alice.stop(PROJECT)


def compose_hub_environment(tmp_path, **settings: str) -> dict[str, str]:
    """The hub's environment as docker-compose resolves the shipped file with ``settings``
    (and nothing else) set: ``docker-compose config``, which reads the file only."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SDE_DB_PASSWORD": "x", **settings}
    compose = [*compose_command(), "-p", "sdecomposecfg", "-f", str(REPO / "docker-compose.yml")]
    res = subprocess.run(
        [*compose, "config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    hub = yaml.safe_load(res.stdout)["services"]["hub"]["environment"]
    return {k: "" if v is None else str(v) for k, v in hub.items()}


def test_the_shipped_compose_file_has_no_demo_password_and_its_hub_refuses_to_start(tmp_path):
    """As shipped, docker-compose.yml names no login: no demo mode, no default password, and
    the real hub run with those settings refuses to start with its one message. Naming demo
    mode alone still needs a password of the operator's own."""
    from tests.unit.test_config import LOGIN_SETTINGS, start_hub

    hub = compose_hub_environment(tmp_path)
    assert hub["SDE_DEMO"] == "" and hub["SDE_DEMO_PASSWORD"] == "", hub
    assert hub["SDE_AUTHENTICATOR"] == ""
    login = {k: hub[k] for k in LOGIN_SETTINGS if hub.get(k)}
    res = start_hub(tmp_path, **login)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("sde: the hub refuses to start: no authenticator configured"), last
    assert not (tmp_path / "state").exists()

    demo = compose_hub_environment(tmp_path, SDE_DEMO="1")
    assert demo["SDE_DEMO_PASSWORD"] == ""
    login = {k: demo[k] for k in LOGIN_SETTINGS if demo.get(k)}
    res = start_hub(tmp_path, **login)
    assert res.returncode != 0 and "needs its password in SDE_DEMO_PASSWORD" in res.stderr
