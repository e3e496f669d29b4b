"""jupyterhub_config.py as JupyterHub runs it: who may log in, decided before anything starts.

Refusals run the real ``jupyterhub -f jupyterhub_config.py`` in a subprocess and show that it
exits at once with its one message (nothing is created). Accepted settings are loaded with
traitlets' own config-file loader (as the hub loads it) in a subprocess and the chosen
authenticator printed; :func:`~sde_spawner.auth.choose_login` is also tested whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sde_spawner.auth import DEMO_CLASS, LoginRefused, choose_login, is_loopback_bind

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "jupyterhub_config.py"
LOGIN_SETTINGS = (
    "SDE_DEMO",
    "SDE_DEMO_PASSWORD",
    "SDE_AUTHENTICATOR",
    "SDE_PUBLIC_BIND",
    "SDE_SUBDOMAIN_HOST",
)

AUTHENTICATORS = """
from jupyterhub.auth import Authenticator
from sde_spawner.hub_events import AuditedLogoutMixin
from sde_spawner.hub_gate import WorkspaceGateMixin

class Gated(WorkspaceGateMixin, AuditedLogoutMixin, Authenticator):
    pass

class Bare(Authenticator):
    pass
"""

LOAD = """
import json, sys
from traitlets.config.loader import PyFileConfigLoader
cfg = PyFileConfigLoader(sys.argv[1]).load_config()
print(json.dumps({
    "authenticator": cfg.JupyterHub.authenticator_class,
    "demo_password": cfg.DemoAuthenticator.get("demo_password"),
    "subdomain_host": cfg.JupyterHub.get("subdomain_host"),
    "bind_url": cfg.JupyterHub.bind_url,
}))
"""


def env_for(tmp_path: Path, **settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LOGIN_SETTINGS}
    (tmp_path / "authenticators.py").write_text(AUTHENTICATORS)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]),
        SDE_STATE_DIR=str(tmp_path / "state"),
        **settings,
    )
    return env


def start_hub(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)],
        cwd=tmp_path,
        env=env_for(tmp_path, **settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_config(tmp_path: Path, **settings: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", LOAD, str(CONFIG)],
        cwd=tmp_path,
        env=env_for(tmp_path, **settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


REFUSALS = [
    ({}, "no authenticator configured: set SDE_AUTHENTICATOR"),
    ({"SDE_DEMO_PASSWORD": "demo"}, "no authenticator configured"),  # a password is not a mode
    (
        {"SDE_AUTHENTICATOR": DEMO_CLASS, "SDE_DEMO_PASSWORD": "demo"},
        "the demo login (one shared password) runs only in demo mode",
    ),
    ({"SDE_DEMO": "1"}, "needs its password in SDE_DEMO_PASSWORD"),
    (
        {"SDE_DEMO": "1", "SDE_DEMO_PASSWORD": "demo", "SDE_PUBLIC_BIND": "http://0.0.0.0:8000"},
        "served on loopback only, and SDE_PUBLIC_BIND is http://0.0.0.0:8000",
    ),
    (
        {"SDE_DEMO": "1", "SDE_DEMO_PASSWORD": "d", "SDE_PUBLIC_BIND": "http://10.1.2.3:8000"},
        "served on loopback only",
    ),
    (
        {"SDE_DEMO": "1", "SDE_DEMO_PASSWORD": "d", "SDE_PUBLIC_BIND": "http://:8000"},
        "served on loopback only",
    ),
    (
        {"SDE_DEMO": "1", "SDE_DEMO_PASSWORD": "d", "SDE_AUTHENTICATOR": "authenticators.Gated"},
        "unset one of them",
    ),
    ({"SDE_AUTHENTICATOR": "authenticators.Bare"}, "lacks WorkspaceGateMixin and Audited"),
    ({"SDE_AUTHENTICATOR": "authenticators.Missing"}, "cannot be imported"),
    ({"SDE_AUTHENTICATOR": "json.dumps"}, "is not a JupyterHub authenticator class"),
]


@pytest.mark.parametrize(("settings", "message"), REFUSALS)
def test_choose_login_refuses_unsafe_or_missing_login_settings(tmp_path, settings, message):
    env = env_for(tmp_path, **settings)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(LoginRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
            choose_login(env)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("authenticators", None)


@pytest.mark.parametrize(
    ("settings", "message"),
    [REFUSALS[0], REFUSALS[2], REFUSALS[4], REFUSALS[8]],
)
def test_the_hub_refuses_to_start_with_one_clear_message(tmp_path, settings, message):
    res = start_hub(tmp_path, **settings)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("sde: the hub refuses to start: ")
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was created


def test_demo_mode_on_loopback_runs_the_demo_login(tmp_path):
    for bind in ("http://127.0.0.1:8000", "http://127.9.8.7:8123", "http://[::1]:8000"):
        cfg = load_config(tmp_path, SDE_DEMO="1", SDE_DEMO_PASSWORD="s3cret", SDE_PUBLIC_BIND=bind)
        assert cfg["authenticator"] == DEMO_CLASS
        assert cfg["demo_password"] == "s3cret"
        assert cfg["bind_url"] == bind


def test_a_named_authenticator_is_used_and_gets_no_demo_password(tmp_path):
    cfg = load_config(
        tmp_path,
        SDE_AUTHENTICATOR="authenticators.Gated",
        SDE_PUBLIC_BIND="http://0.0.0.0:8000",
        SDE_DEMO_PASSWORD="ignored",
    )
    assert cfg["authenticator"] == "authenticators.Gated"
    assert cfg["demo_password"] is None


def test_subdomain_host_comes_from_its_setting(tmp_path):
    cfg = load_config(
        tmp_path, SDE_DEMO="1", SDE_DEMO_PASSWORD="d", SDE_SUBDOMAIN_HOST="http://sde.test:8000"
    )
    assert cfg["subdomain_host"] == "http://sde.test:8000"
    assert load_config(tmp_path, SDE_DEMO="1", SDE_DEMO_PASSWORD="d")["subdomain_host"] is None


def test_loopback_bind_is_an_ip_literal_in_127_0_0_0_8_or_ipv6_loopback():
    assert is_loopback_bind("http://127.0.0.1:8000")
    assert is_loopback_bind("https://127.255.0.9")
    assert is_loopback_bind("http://[::1]:8000")
    for url in ("http://0.0.0.0:8000", "http://[::]:8000", "http://:8000", "http://10.0.0.1"):
        assert not is_loopback_bind(url), url
    assert not is_loopback_bind("http://localhost:8000")  # a name: may resolve elsewhere
    assert not is_loopback_bind("http://127.0.0.1.example.org:8000")


def test_the_demo_authenticator_refuses_every_login_without_a_password(tmp_path):
    from sde_spawner.auth import DemoAuthenticator
    from sde_spawner.checking.testing import make_db

    make_db(tmp_path)
    auth = DemoAuthenticator(registry_url=f"sqlite:///{tmp_path / 'registry.sqlite'}")
    assert auth.demo_password == ""
    assert auth._check("alice", "") == (False, "no demo password configured")
    auth.demo_password = "pw"
    assert auth._check("alice", "pw") == (True, "")


LOAD_SPAWNER = """
import json, sys
from traitlets.config.loader import PyFileConfigLoader
from jupyterhub.spawner import Spawner
from traitlets import import_item
cfg = PyFileConfigLoader(sys.argv[1]).load_config()
name = cfg.JupyterHub.spawner_class
cls = import_item(name) if "." in name else None
section = cfg.SDEKubeSpawner if name.endswith("SDEKubeSpawner") else (
    cfg.SDESwarmSpawner if name.endswith("SDESwarmSpawner") else cfg.SDESpawner)
print(json.dumps({
    "spawner_class": name,
    "is_spawner": cls is None or issubclass(cls, Spawner),
    "registry_url": section.get("registry_url"),
    "image": section.get("image"),
    "service_port": section.get("service_port"),
}))
"""


def load_spawner(tmp_path: Path, **settings: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", LOAD_SPAWNER, str(CONFIG)],
        cwd=tmp_path,
        env=env_for(tmp_path, SDE_DEMO="1", SDE_DEMO_PASSWORD="d", **settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_sde_spawner_picks_docker_by_default_or_kubernetes(tmp_path):
    docker = load_spawner(tmp_path)
    assert docker["spawner_class"] == "sde"
    assert docker["registry_url"].startswith("sqlite:///")
    kube = load_spawner(tmp_path, SDE_SPAWNER="kubernetes", SDE_WORKSPACE_IMAGE="nb:1")
    assert kube == {
        "spawner_class": "sde_spawner.kube_spawner.SDEKubeSpawner",
        "is_spawner": True,
        "registry_url": docker["registry_url"],
        "image": "nb:1",
        "service_port": 9100,
    }


def test_sde_spawner_swarm_picks_the_swarm_spawner(tmp_path):
    swarm = load_spawner(tmp_path, SDE_SPAWNER="swarm", SDE_HUB_CONTAINER="hub")
    assert swarm == {
        "spawner_class": "sde_spawner.swarm_spawner.SDESwarmSpawner",
        "is_spawner": True,
        "registry_url": swarm["registry_url"],
        "image": "sde-notebook:latest",
        "service_port": 9100,
    }
    assert swarm["registry_url"].startswith("sqlite:///")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "swarm",
            "SDE_SPAWNER=swarm needs SDE_HUB_CONTAINER (the hub's container on a manager node)",
        ),
        ("podman", "SDE_SPAWNER='podman' is not one of docker, swarm, kubernetes"),
    ],
)
def test_an_unknown_spawner_stops_the_hub_with_one_message(tmp_path, value, message):
    res = start_hub(tmp_path, SDE_DEMO="1", SDE_DEMO_PASSWORD="d", SDE_SPAWNER=value)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1] == f"sde: the hub refuses to start: {message}"
    assert not (tmp_path / "state").exists()
