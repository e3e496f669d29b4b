"""Raw file downloads through routes other than ``/files/``, tried from inside a real workspace.

The researcher plants things from inside alice's container (``docker exec`` as uid 1000, with
the container's own environment, as a kernel or terminal would) and then asks for them
through the hub's proxy with her own token:

* a kernelspec carrying a copy of an extract file, and a labextension that is a link to
  ``/data`` (Jupyter's data directory used to be ``~/.local/share/jupyter``);
* an extract renamed ``table.png`` and a link ``cohort.pdf`` into ``/data``, read as base64;
* a 266 KB base64 blob of an extract in JupyterLab's user settings and workspaces.

Each is refused (404 where the server no longer looks at all, 403 with a reason and a
``download.blocked`` event in the hub's audit trail otherwise); each has a control showing
the same route working for what it is meant to serve. The live server's whole route table is
checked too: every route classified, none left open by default.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest
import requests

from egress_extension import routes
from sde_spawner.containers import workspace_names
from tests.docker.test_egress_workspace import details, events_where, sh
from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
HOME = "/home/researcher"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def alice(hub):
    user = User(hub, "alice")
    assert user.logged_in, hub.log_tail()
    user.ensure_running(PROJECT)
    return user


@pytest.fixture(scope="module")
def alice_ws(hub, alice, docker_client):
    return docker_client.containers.get(workspace_names("alice", PROJECT, hub.prefix).container)


@pytest.fixture(scope="module")
def extract_file(alice_ws) -> tuple[str, bytes]:
    """The largest file of alice's /data extract and its bytes (read from inside)."""
    code, out, _ = sh(alice_ws, "sh", "-c", "ls -S /data | head -1")
    assert code == 0 and out.strip(), "the workspace has no /data extract"
    path = f"/data/{out.strip()}"
    res = alice_ws.exec_run(["cat", path])
    assert res.exit_code == 0 and len(res.output) > 64
    return path, res.output


def get(hub, alice, path: str, **headers: str) -> requests.Response:
    """GET through the hub's proxy as alice, with extra headers."""
    return requests.get(
        f"{hub.url}/user/alice/{PROJECT}/{path}",
        headers={"Authorization": f"token {alice.token}", **headers},
        timeout=30,
    )


def run_py(container, code: str) -> str:
    res = container.exec_run(["python3", "-c", code], user="1000:1000", workdir=HOME)
    out = res.output.decode(errors="replace")
    assert res.exit_code == 0, out
    return out


# --- the route table --------------------------------------------------------------------------


def test_every_route_of_the_live_workspace_server_is_classified(alice):
    r = alice.workspace_get(PROJECT, "egress/api/routes")
    assert r.status_code == 200, r.text
    listed = r.json()["routes"]
    unclassified = [x for x in listed if x["kind"] not in routes.KINDS]
    assert unclassified == [], "classify these in egress_extension/routes.py"
    # Closed means answered by the blocking handler: exactly the routes classified blocked.
    assert [x for x in listed if x["closed"] != (x["kind"] == routes.BLOCKED)] == []
    handlers = {x["handler"].rsplit(".", 1)[-1]: x["kind"] for x in listed}
    assert handlers["JupyterHubOAuthCallbackHandler"] == routes.API
    # jupyter-lsp is off in the image; the extension manager, news and update checks run with
    # the read-only settings (with JupyterLab's defaults they would be closed as "blocked").
    assert not any(h.startswith("LanguageServer") for h in handlers)
    for name in ("ExtensionHandler", "NewsHandler", "CheckForUpdateHandler"):
        assert handlers[name] == routes.API, name
    r = alice.workspace_get(PROJECT, "lab/api/news")
    assert r.status_code == 200 and r.json()["news"] == [], r.text


def test_jupyter_paths_are_read_only_from_inside(alice_ws):
    probe = r"""
import json, os
from jupyter_core.paths import jupyter_path, jupyter_config_path, jupyter_data_dir
from jupyter_client.kernelspec import KernelSpecManager
dirs = set(jupyter_path()) | set(jupyter_config_path())
dirs |= {d for d in KernelSpecManager().kernel_dirs if not d.startswith("/tmp/")}
dirs |= {os.path.join(d, "labextensions") for d in jupyter_path()}
from jupyterlab.commands import get_app_dir
app = get_app_dir()  # JupyterLab's app, schemas, themes, app settings (overrides.json)
dirs |= {app} | {os.path.join(app, d) for d in ("schemas", "themes", "settings", "static")}
out = {"data_dir": jupyter_data_dir(), "app_dir": app, "written": []}
for d in sorted(dirs) + [os.path.expanduser("~/.local/share/jupyter/kernels")]:
    try:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "probe.txt"), "w") as fh:
            fh.write("x")
        out["written"].append(d)
    except OSError:
        pass
print(json.dumps(out))
"""
    out = json.loads(run_py(alice_ws, probe).strip().splitlines()[-1])
    assert out["data_dir"] == "/opt/venv/share/jupyter" and out["app_dir"].startswith("/opt/venv/")
    # The control is the home directory, where the probe can write: nothing else. (IPython's
    # kernels directory, /tmp/.ipython/kernels, is writable: the server drops it, below.)
    assert out["written"] == [f"{HOME}/.local/share/jupyter/kernels"]


# --- kernelspecs and labextensions ------------------------------------------------------------


@pytest.mark.parametrize("where", [f"{HOME}/.local/share/jupyter/kernels", "/tmp/.ipython/kernels"])
def test_a_kernelspec_planted_by_the_researcher_is_not_served(alice, alice_ws, extract_file, where):
    path, data = extract_file
    name = f"leak{uuid.uuid4().hex[:6]}"
    spec = f"{where}/{name}"
    kernel_json = json.dumps({"argv": ["python3"], "display_name": name, "language": "python"})
    plant = (
        f"mkdir -p {spec} && cp {path} {spec}/extract && echo '{kernel_json}' > {spec}/kernel.json"
    )
    assert sh(alice_ws, "sh", "-c", plant)[0] == 0
    # The control: jupyter_client with its default data directory (~/.local/share/jupyter,
    # as the image had it) finds the planted spec.
    res = alice_ws.exec_run(
        [
            "env",
            "-u",
            "JUPYTER_DATA_DIR",
            "python3",
            "-c",
            "from jupyter_client.kernelspec import KernelSpecManager as K; "
            "print(sorted(K().find_kernel_specs()))",
        ],
        user="1000:1000",
    )
    assert name in res.output.decode(), res.output
    r = alice.workspace_get(PROJECT, f"kernelspecs/{name}/extract")
    assert r.status_code == 404 and data[:64] not in r.content
    r = alice.workspace_get(PROJECT, "api/kernelspecs")
    assert r.status_code == 200 and name not in r.json()["kernelspecs"]
    # The image's own kernelspec is served (the control: the route works).
    r = alice.workspace_get(PROJECT, "kernelspecs/python3/logo-64x64.png")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


def test_a_user_kernelspec_cannot_shadow_the_images(alice, alice_ws):
    """A ``python3`` kernelspec in the home (or IPython's /tmp dir) would take precedence
    over the image's with jupyter_client's defaults; the server keeps the image's."""
    marker = f"shadow{uuid.uuid4().hex[:6]}"
    spec = {"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]}
    kernel_json = json.dumps(spec | {"display_name": marker, "language": "python"})
    dirs = [f"{HOME}/.local/share/jupyter/kernels/python3", "/tmp/.ipython/kernels/python3"]
    plant = " && ".join(f"mkdir -p {d} && echo '{kernel_json}' > {d}/kernel.json" for d in dirs)
    assert sh(alice_ws, "sh", "-c", plant)[0] == 0
    try:
        # The control: jupyter_client with its default data directory picks the planted one.
        res = alice_ws.exec_run(
            [
                "env",
                "-u",
                "JUPYTER_DATA_DIR",
                "python3",
                "-c",
                "from jupyter_client.kernelspec import KernelSpecManager as K; "
                "print(K().get_kernel_spec('python3').display_name)",
            ],
            user="1000:1000",
        )
        assert marker in res.output.decode(), res.output
        r = alice.workspace_get(PROJECT, "api/kernelspecs")
        assert r.status_code == 200, r.text
        served = r.json()["kernelspecs"]["python3"]
        assert marker not in json.dumps(served)
        assert all(marker not in json.dumps(v) for v in r.json()["kernelspecs"].values())
        r = alice.workspace_get(PROJECT, "kernelspecs/python3/kernel.json")
        assert r.status_code in (200, 404) and marker.encode() not in r.content
    finally:
        sh(alice_ws, "sh", "-c", "rm -rf " + " ".join(dirs))


def test_a_labextension_link_to_data_serves_nothing(hub, alice, alice_ws, extract_file):
    path, data = extract_file
    name = f"leak{uuid.uuid4().hex[:6]}"
    exts = f"{HOME}/.local/share/jupyter/labextensions"
    assert sh(alice_ws, "sh", "-c", f"mkdir -p {exts} && ln -s /data {exts}/{name}")[0] == 0
    file = path.rsplit("/", 1)[-1]
    for headers in ({}, {"Range": "bytes=0-99"}):
        r = get(hub, alice, f"lab/extensions/{name}/{file}", **headers)
        assert r.status_code == 404 and data[:64] not in r.content
    code, out, _ = sh(
        alice_ws,
        "sh",
        "-c",
        "cd /opt/venv/share/jupyter/labextensions && find . -name '*.js' | head -1",
    )
    assert code == 0 and out.strip(), "the image has no prebuilt labextension"
    r = alice.workspace_get(PROJECT, f"lab/extensions/{out.strip().removeprefix('./')}")
    assert r.status_code == 200 and r.content  # the control


# --- binary reads -----------------------------------------------------------------------------

B64 = "type=file&format=base64&content=1"


def test_a_renamed_extract_is_refused_and_audited(hub, alice, alice_ws, extract_file):
    path, data = extract_file
    name = f"table-{uuid.uuid4().hex[:6]}.png"
    assert sh(alice_ws, "cp", path, f"{HOME}/{name}")[0] == 0
    r = alice.workspace_get(PROJECT, f"api/contents/{name}?{B64}")
    assert r.status_code == 403 and "content" not in r.json()
    assert "not the PNG its name says" in r.json()["message"]
    assert base64.b64encode(data[:48]) not in r.content
    (ev,) = events_where(hub, "download.blocked", lambda d, e: d.get("path") == name)
    assert ev["actor"] == "alice" and details(ev)["size"] == len(data)
    assert details(ev)["content_type"] is None


def test_a_link_named_pdf_into_data_is_refused_with_its_target(hub, alice, alice_ws, extract_file):
    path, data = extract_file
    name = f"cohort-{uuid.uuid4().hex[:6]}.pdf"
    assert sh(alice_ws, "ln", "-s", path, f"{HOME}/{name}")[0] == 0
    r = alice.workspace_get(PROJECT, f"api/contents/{name}?{B64}")
    assert r.status_code == 403 and "not the PDF its name says" in r.json()["message"]
    (ev,) = events_where(hub, "download.blocked", lambda d, e: d.get("path") == name)
    assert details(ev)["target"] == path and details(ev)["size"] == len(data)


def test_a_real_image_still_opens_with_its_real_size_recorded(hub, alice, alice_ws):
    name = f"figure-{uuid.uuid4().hex[:6]}.png"
    link = name.replace("figure", "figlink")
    run_py(alice_ws, f"open({name!r}, 'wb').write({PNG!r})")
    assert sh(alice_ws, "ln", "-s", f"{HOME}/{name}", f"{HOME}/{link}")[0] == 0
    for n in (name, link):
        r = alice.workspace_get(PROJECT, f"api/contents/{n}?{B64}")
        assert r.status_code == 200 and base64.b64decode(r.json()["content"]) == PNG
    (ev,) = events_where(hub, "file.opened", lambda d, e: d.get("path") == link)
    assert details(ev)["size"] == len(PNG)  # the target's bytes, not the link's length


SWAPPER = (
    "import os, sys, time\n"
    "d, cap = sys.argv[1], int(sys.argv[2])\n"
    "open(d + '/small', 'w').write('7 bytes')\n"
    "open(d + '/big', 'w').write('x' * (cap + 4096))\n"
    "end = time.time() + float(sys.argv[3])\n"
    "while time.time() < end:\n"
    "    for src in ('small', 'big'):\n"
    "        os.link(d + '/' + src, d + '/tmp')\n"
    "        os.replace(d + '/tmp', d + '/swap.txt')\n"
)


def test_a_file_swapped_between_check_and_read_never_returns_more_than_the_cap(alice, alice_ws):
    """The reviewer's race (7 bytes at the check, over the cap at the read), run inside the
    room: no read through the proxy returns more than ``max_view_size`` bytes."""
    cap = 64 * 1024 * 1024  # c.EgressApp.max_view_size in the image
    d = f"{HOME}/swap-{uuid.uuid4().hex[:6]}"
    assert sh(alice_ws, "mkdir", "-p", d)[0] == 0
    alice_ws.exec_run(["python3", "-c", SWAPPER, d, str(cap), "300"], user="1000:1000", detach=True)
    rel = d.removeprefix(HOME + "/") + "/swap.txt"
    wait_for(lambda: sh(alice_ws, "test", "-e", f"{d}/swap.txt")[0] == 0, 60, "the swapper")
    try:
        codes = []
        for _ in range(30):
            r = alice.workspace_get(PROJECT, f"api/contents/{rel}?type=file&format=text")
            codes.append(r.status_code)
            if r.status_code == 200:
                assert len(r.json()["content"]) <= cap
        # The control: the swap really happened under the reads (both sizes were seen).
        assert 200 in codes and 403 in codes, codes
    finally:
        sh(alice_ws, "rm", "-rf", d)  # the swapper stops: its links fail


# --- JupyterLab's stored JSON -----------------------------------------------------------------

THEMES = f"{HOME}/.jupyter/lab/user-settings/@jupyterlab/apputils-extension"


def blob_of(data: bytes) -> str:
    """~266 KB of base64 of the extract, as a kernel would make it (same recipe inside)."""
    return base64.b64encode((data * (200_000 // len(data) + 1))[:200_000]).decode()


BLOB_INSIDE = (
    "import base64, json, os, sys\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "blob = base64.b64encode((data * (200_000 // len(data) + 1))[:200_000]).decode()\n"
    "doc = json.loads(sys.argv[3].replace('BLOB', blob))\n"
    "os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)\n"
    "open(sys.argv[2], 'w').write(json.dumps(doc))\n"
)


def plant_blob(container, extract: str, target: str, template: str) -> None:
    res = container.exec_run(
        ["python3", "-c", BLOB_INSIDE, extract, target, template], user="1000:1000"
    )
    assert res.exit_code == 0, res.output.decode(errors="replace")


def _slug(name: str) -> str:
    return f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:4]}"


def test_a_blob_written_into_lab_settings_is_not_read_back(hub, alice, alice_ws, extract_file):
    path, data = extract_file
    blob = blob_of(data)
    plant_blob(alice_ws, path, f"{THEMES}/themes.jupyterlab-settings", '{"theme": "BLOB"}')
    try:
        for url in ("lab/api/settings", "lab/api/settings/@jupyterlab/apputils-extension:themes"):
            r = alice.workspace_get(PROJECT, url)
            assert r.status_code == 403 and blob[:100].encode() not in r.content, url
            assert "over the 128.0 KiB" in r.json()["message"]
        found = events_where(
            hub,
            "download.blocked",
            lambda d, e: d.get("channel") == "lab-settings" and d.get("size", 0) > 200_000,
        )
        assert found[0]["actor"] == "alice"
        # The control: an ordinary setting reads back, and the read is recorded.
        small = json.dumps({"theme": "JupyterLab Dark"})
        run_py(alice_ws, f"open({THEMES + '/themes.jupyterlab-settings'!r}, 'w').write({small!r})")
        r = alice.workspace_get(PROJECT, "lab/api/settings/@jupyterlab/apputils-extension:themes")
        assert r.status_code == 200 and r.json()["raw"] == small
        events_where(
            hub,
            "file.opened",
            lambda d, e: d.get("type") == "lab-settings" and d.get("size") == len(small),
        )
    finally:
        sh(alice_ws, "rm", "-f", f"{THEMES}/themes.jupyterlab-settings")


def test_a_blob_written_into_a_lab_workspace_is_not_read_back(hub, alice, alice_ws, extract_file):
    path, data = extract_file
    blob = blob_of(data)
    wdir = f"{HOME}/.jupyter/lab/workspaces"
    name = f"leak{uuid.uuid4().hex[:6]}"
    ws = json.dumps({"data": {"x": "BLOB"}, "metadata": {"id": f"/{name}"}})
    file = f"{wdir}/{_slug(name)}.jupyterlab-workspace"
    plant_blob(alice_ws, path, file, ws)
    try:
        r = alice.workspace_get(PROJECT, f"lab/api/workspaces/{name}")
        assert r.status_code == 403 and blob[:100].encode() not in r.content
        events_where(
            hub,
            "download.blocked",
            lambda d, e: d.get("channel") == "lab-workspaces" and d.get("size", 0) > 200_000,
        )
        small = json.dumps({"data": {"layout-restorer:data": {}}, "metadata": {"id": f"/{name}"}})
        run_py(alice_ws, f"open({file!r}, 'w').write({small!r})")
        r = alice.workspace_get(PROJECT, f"lab/api/workspaces/{name}")
        assert r.status_code == 200 and r.json()["data"] == {"layout-restorer:data": {}}
    finally:
        sh(alice_ws, "rm", "-f", file)
