"""The built images: sde-notebook is a hardened, working workspace; sde-hub installs the project.

Runs against a real Docker engine and builds the images with scripts/build-images.sh when they
are missing. Every container, volume and network made here is named ``sdetest-...`` and removed
afterwards. Containers are reached only by their address on a network this module creates.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import NOTEBOOK_IMAGE

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = NOTEBOOK_IMAGE
HUB = f"sde-hub:{os.environ.get('SDE_IMAGE_TAG', 'latest')}"
PORT = 8888
TOKEN = uuid.uuid4().hex
#: What the spawner applies to every workspace (see sde_spawner/containers.py).
HARDENING = {
    "read_only": True,
    "tmpfs": {"/tmp": "rw,nosuid,nodev,size=256m"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "user": "1000",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="session")
def engine():
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # any failure to reach the engine means: no engine here
        pytest.skip(f"no Docker engine answers: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def built_images(engine):
    """Both images, current with the source: scripts/build-images.sh builds what is missing or
    stale (under a second when nothing changed; offline apart from wheelhouse downloads)."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh")],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=1800,
    )
    for tag in (NOTEBOOK, HUB):
        engine.images.get(tag)  # raises ImageNotFound if the script did not make it
    return engine


def run_once(engine, image: str, command, **kwargs) -> tuple[int, str]:
    """Run ``command`` in a fresh ``sdetest-`` container; return (exit code, output)."""
    container = engine.containers.run(
        image,
        command,
        name=f"sdetest-img-{uuid.uuid4().hex[:8]}",
        detach=True,
        network_mode="none",
        **kwargs,
    )
    try:
        result = container.wait(timeout=120)
        output = container.logs(stdout=True, stderr=True).decode()
        return result["StatusCode"], output
    finally:
        container.remove(force=True)


def notebook_sh(engine, script: str, **kwargs) -> tuple[int, str]:
    return run_once(engine, NOTEBOOK, ["sh", "-c", script], **kwargs)


# --- sde-notebook: static properties --------------------------------------------------


def test_notebook_runs_as_uid_1000_by_default(built_images):
    code, out = notebook_sh(built_images, "id -u; id -g; echo $HOME; pwd")
    assert code == 0, out
    assert out.split() == ["1000", "1000", "/home/researcher", "/home/researcher"]


def test_notebook_home_belongs_to_researcher_and_data_exists(built_images):
    code, out = notebook_sh(built_images, "stat -c '%u:%g %n' /home/researcher /data")
    assert code == 0, out
    assert out.splitlines() == ["1000:1000 /home/researcher", "0:0 /data"]


def test_notebook_has_no_setuid_or_setgid_files_and_no_sudo(built_images):
    # As root, so that no directory is unreadable to the search.
    code, out = notebook_sh(
        built_images,
        "find / -xdev -perm /6000 -type f; if command -v sudo; then echo HAS-SUDO; fi",
        user="0",
    )
    assert code == 0, out
    assert out.strip() == "", f"setuid/setgid files or sudo present:\n{out}"


def test_notebook_singleuser_matches_the_hub_major_version(built_images):
    code, out = run_once(built_images, NOTEBOOK, ["jupyterhub-singleuser", "--version"])
    assert code == 0, out
    in_image = out.strip().splitlines()[-1]
    assert in_image.split(".")[0] == version("jupyterhub").split(".")[0], in_image


def test_notebook_enables_the_egress_extension(built_images):
    code, out = run_once(built_images, NOTEBOOK, ["jupyter", "server", "extension", "list"])
    assert code == 0, out
    out = ANSI.sub("", out)
    assert re.search(r"^\s*egress_extension enabled\s*$", out, re.M), out
    assert re.search(r"^\s*egress_extension 0\.1\.0 OK\s*$", out, re.M), out


def test_notebook_has_no_rfc3987_syntax(built_images):
    # Importing it costs ~1.2 s per server start; jsonschema only uses it for "iri" formats.
    code, out = notebook_sh(
        built_images,
        "python -c 'import rfc3987_syntax'; "
        "python -c 'import jsonschema, jupyter_events.schema; print(\"schemas-ok\")'",
    )
    assert code == 0, out
    assert "ModuleNotFoundError: No module named 'rfc3987_syntax'" in out, out
    assert out.strip().endswith("schemas-ok"), out


def test_notebook_singleuser_server_does_not_load_the_hub_orm(built_images):
    # images/notebook/singleuser_imports.py: ~0.5 s of CPU per server start. With the released
    # jupyterhub (benchmarks.singleuser_import's baseline image) all three are loaded.
    code, out = notebook_sh(
        built_images,
        "python -c '"
        "import sys, jupyterhub.singleuser; "
        'lazy = lambda m: type(sys.modules.get(m)).__name__ in ("NoneType", "_LazyModule"); '
        'print("not loaded:", [m for m in ("sqlalchemy", "alembic", "jupyterhub.orm", '
        '"jupyterhub.handlers") if lazy(m)])'
        "'; python -c '"
        "import jupyterhub.scopes as s, jupyterhub.orm as o, jupyterhub.log as lg; "
        "from jupyterhub.handlers.pages import HealthCheckHandler as H; "
        'assert s.orm.User is o.User and lg._health_check_handlers() == (H,); print("hub-side-ok")'
        "'",
        **HARDENING,
    )
    assert code == 0, out
    assert "not loaded: ['sqlalchemy', 'alembic', 'jupyterhub.orm', 'jupyterhub.handlers']" in out
    assert out.strip().endswith("hub-side-ok"), out


def test_notebook_bytecode_is_precompiled_unchecked(built_images):
    # On a read-only root Python cannot cache bytecode, so the image must ship it, and
    # unchecked-hash .pyc files stay valid whatever the sources' mtimes became in the build.
    script = """
import importlib.util, pathlib, sys
site = pathlib.Path(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                    "site-packages")
bad = []
for pkg in ("jupyter_server", "jupyterlab", "jupyter_events", "egress_extension"):
    for src in (site / pkg).rglob("*.py"):
        pyc = pathlib.Path(importlib.util.cache_from_source(str(src)))
        if not pyc.exists():
            bad.append(f"missing {pyc}")
        elif int.from_bytes(pyc.read_bytes()[4:8], "little") != 0b01:
            bad.append(f"not unchecked-hash {pyc}")
print(len(bad)); print(*bad[:5], sep="\\n")
"""
    code, out = run_once(built_images, NOTEBOOK, ["python", "-c", script])
    assert code == 0, out
    assert out.splitlines()[0] == "0", out


# --- sde-notebook: a hardened, running server ------------------------------------------


def start_server(engine, stack, home_volume: bool):
    """``jupyter server`` under the spawner's hardening; returns (container, address).

    With ``home_volume`` a fresh named volume is mounted on /home/researcher, as the spawner
    does; without it, home is part of the read-only root. Cleanup goes on ``stack``.
    """
    suffix = uuid.uuid4().hex[:8]
    network = engine.networks.create(f"sdetest-img-net-{suffix}", driver="bridge")
    stack.callback(network.remove)
    volumes = {}
    if home_volume:
        volume = engine.volumes.create(f"sdetest-img-home-{suffix}")
        stack.callback(volume.remove, force=True)
        volumes = {volume.name: {"bind": "/home/researcher", "mode": "rw"}}
    container = engine.containers.run(
        NOTEBOOK,
        [
            "jupyter",
            "server",
            "--ip=0.0.0.0",
            f"--port={PORT}",
            f"--IdentityProvider.token={TOKEN}",
            "--ServerApp.open_browser=False",
        ],
        name=f"sdetest-img-server-{suffix}",
        detach=True,
        network=network.name,
        volumes=volumes,
        **HARDENING,
    )
    stack.callback(container.remove, force=True)
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    wait_ready(container, address)
    return container, address


@pytest.fixture(scope="module")
def hardened_server(built_images):
    """The workspace as spawned: hardened, home on a named volume."""
    with contextlib.ExitStack() as stack:
        yield start_server(built_images, stack, home_volume=True)


@pytest.fixture(scope="module")
def readonly_home_server(built_images):
    """Hardened with no home volume at all: everything it must write goes to /tmp."""
    with contextlib.ExitStack() as stack:
        yield start_server(built_images, stack, home_volume=False)


def request(address: str, path: str, token: str | None = TOKEN, method: str = "GET", body=None):
    conn = http.client.HTTPConnection(address, PORT, timeout=10)
    try:
        headers = {"Authorization": f"token {token}"} if token else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(container, address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if request(address, "/api/status")[0] == 200:
                return
        except OSError:
            pass
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.1)
    logs = container.logs().decode(errors="replace")
    raise AssertionError(f"jupyter server did not answer within {timeout} s:\n{logs}")


def test_hardened_server_really_has_the_hardening(hardened_server):
    container, _ = hardened_server
    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert container.attrs["Config"]["User"] == "1000"


def test_hardened_server_serves_egress_status_with_the_token(hardened_server):
    _, address = hardened_server
    status, body = request(address, "/egress/api/status")
    assert status == 200, body
    assert json.loads(body) == {"extension": "egress_extension", "version": "0.1.0"}
    assert request(address, "/egress/api/status", token=None)[0] == 403
    assert request(address, "/egress/api/status", token="wrong")[0] == 403


def test_hardened_server_serves_jupyterlab(hardened_server):
    _, address = hardened_server
    status, body = request(address, "/lab")
    assert status == 200
    assert b"JupyterLab" in body


def test_hardened_server_logs_no_write_failures(hardened_server):
    container, _ = hardened_server
    logs = container.logs().decode(errors="replace")
    assert "Read-only file system" not in logs, logs
    assert "Permission denied" not in logs, logs


def test_kernel_runs_in_hardened_server(hardened_server):
    _, address = hardened_server
    status, body = request(address, "/api/kernels", method="POST", body='{"name": "python3"}')
    assert status == 201, body
    kernel_id = json.loads(body)["id"]
    try:
        code = (
            "import os, pandas, pyarrow\n"
            "try:\n"
            "    open('/opt/written-by-kernel', 'w')\n"
            "except OSError as exc:\n"
            "    root = exc.errno\n"
            "open(os.path.expanduser('~/kept.txt'), 'w').write('ok')\n"
            "print(os.getuid(), root, pandas.DataFrame({'a': [1, 2]}).a.sum())\n"
        )
        output = execute(address, kernel_id, code)
        # uid 1000; EROFS (30) writing the root fs; the home volume is writable.
        assert output.split() == ["1000", "30", "3"], output
    finally:
        request(address, f"/api/kernels/{kernel_id}", method="DELETE")


def test_readonly_home_server_still_serves_and_runs_kernels(readonly_home_server):
    _, address = readonly_home_server
    status, body = request(address, "/egress/api/status")
    assert status == 200, body
    status, body = request(address, "/api/kernels", method="POST", body='{"name": "python3"}')
    assert status == 201, body
    kernel_id = json.loads(body)["id"]
    try:
        output = execute(address, kernel_id, "import os, pandas; print(os.getuid(), 6 * 7)")
        assert output.split() == ["1000", "42"], output
    finally:
        request(address, f"/api/kernels/{kernel_id}", method="DELETE")


def execute(address: str, kernel_id: str, code: str, timeout: float = 60) -> str:
    """Run ``code`` on a kernel over the server's websocket; return its stdout (or raise)."""
    import websocket  # websocket-client: a jupyter_server dependency

    url = f"ws://{address}:{PORT}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}"
    ws = websocket.create_connection(url, header=[f"Authorization: token {TOKEN}"], timeout=timeout)
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "sdetest",
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    stdout = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                stdout.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(stdout)
    finally:
        ws.close()
    raise AssertionError(f"no reply from the kernel within {timeout} s: {stdout}")


# --- sde-hub ---------------------------------------------------------------------------


def test_hub_image_runs_jupyterhub_and_sde_admin(built_images):
    code, out = run_once(
        built_images,
        HUB,
        [
            "sh",
            "-c",
            "jupyterhub --version && python -c 'import sde_spawner, dockerspawner' "
            # extracts take the native pseudonym path in the image too
            "&& python -c 'from sde_spawner.datasets import pseudonym_batch as p; "
            "assert p.available()' "
            "&& sde-admin --help >/dev/null && configurable-http-proxy --version >/dev/null "
            "&& iptables --version >/dev/null && ip6tables --version >/dev/null "
            "&& ip -V >/dev/null && nsenter --version >/dev/null && echo hub-ok",
        ],
    )
    assert code == 0, out
    lines = out.split()
    assert lines[0].split(".")[0] == version("jupyterhub").split(".")[0], out
    assert lines[-1] == "hub-ok", out
