"""User servers on their own subdomains (``SDE_SUBDOMAIN_HOST``), for real, on loopback.

A hub of its own runs with ``SDE_SUBDOMAIN_HOST=http://sde.test:PORT`` while binding
127.0.0.1 (the demo login stays loopback-only). Names under ``sde.test`` are mapped to
127.0.0.1 inside this test process (urllib3's connection factory), so requests carry the real
``Host`` and cookies are kept per host, as a browser keeps them; nothing is resolved off the
machine. Shown: alice's workspace is served on ``alice.sde.test`` (OAuth through the hub on
``sde.test``); the ``sde`` service's pages are on ``sde--service.sde.test`` and not reachable on
alice's subdomain (nor on the hub's host); a checker's page works on the service's own
origin; from inside the workspace the hub gate still answers only what its server needs and
the export API still works.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from sde_spawner.containers import workspace_names
from tests.support import Hub, User, retire_hub, wait_for

pytestmark = pytest.mark.docker

DOMAIN = "sde.test"
PROJECT = "diabetes-outcomes"


@pytest.fixture(scope="module", autouse=True)
def sde_test_names_are_loopback():
    """``*.sde.test`` -> 127.0.0.1 for this process's HTTP client; everything else as usual."""
    import urllib3.util.connection as connection

    real = connection.create_connection

    def create_connection(address, *args, **kwargs):
        host, port = address
        if host == DOMAIN or host.endswith("." + DOMAIN):
            host = "127.0.0.1"
        return real((host, port), *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(connection, "create_connection", create_connection)
    yield
    mp.undo()


class SubdomainHub(Hub):
    """The project's hub with ``SDE_SUBDOMAIN_HOST``; its public URL is the bare domain."""

    def __init__(self, state_dir, prefix):
        super().__init__(state_dir, prefix)
        self.bind = f"http://127.0.0.1:{self.port}"
        self.url = f"http://{DOMAIN}:{self.port}"
        self.service_url = f"http://sde--service.{DOMAIN}:{self.port}/services/sde/"

    @property
    def env(self) -> dict:
        env = super().env
        env.update(SDE_PUBLIC_BIND=self.bind, SDE_SUBDOMAIN_HOST=self.url)
        return env

    def user_url(self, user: str, path: str) -> str:
        return f"http://{user}.{DOMAIN}:{self.port}/user/{user}/{path}"

    def wait_started(self) -> None:
        wait_for(self._up, 60, "the hub to answer")
        wait_for(
            lambda: requests.get(f"{self.service_url}api/health", timeout=2).status_code == 200,
            60,
            "the sde service to answer on its own subdomain",
        )


@pytest.fixture(scope="module")
def subhub(tmp_path_factory, docker_client, notebook_image):

    prefix = f"sdes{uuid.uuid4().hex[:6]}"
    h = SubdomainHub(tmp_path_factory.mktemp("subhub"), prefix)
    h.seed()
    h.start()
    yield h
    retire_hub(h, docker_client)


@pytest.fixture(scope="module")
def alice(subhub):
    user = User(subhub, "alice")
    assert user.logged_in
    return user


@pytest.fixture(scope="module")
def alice_ws(subhub, alice, docker_client):
    alice.ensure_running(PROJECT)
    return docker_client.containers.get(workspace_names("alice", PROJECT, subhub.prefix).container)


def is_sde_service(r: requests.Response) -> bool:
    return r.headers.get("Content-Type", "").startswith("application/json") and (
        r.text.startswith('{"service": "sde"')
    )


def test_the_workspace_is_served_on_the_users_own_subdomain(subhub, alice, alice_ws):
    r = alice.s.get(subhub.user_url("alice", f"{PROJECT}/lab"), timeout=60)
    assert r.status_code == 200 and "JupyterLab" in r.text, r.text[-800:]
    assert r.url.startswith(f"http://alice.{DOMAIN}:{subhub.port}/user/alice/{PROJECT}/")
    # the login went through the hub on the bare domain, and each origin has its own cookies
    assert any(h.url.startswith(subhub.url + "/hub/api/oauth2/authorize") for h in r.history)
    domains = {c.domain for c in alice.s.cookies}
    assert {DOMAIN, f"alice.{DOMAIN}"} <= domains, domains
    hub_cookie = [c for c in alice.s.cookies if c.name == "jupyterhub-hub-login"]
    assert hub_cookie and all(c.domain == DOMAIN and not c.domain_specified for c in hub_cookie)
    # the old path-based URL on the hub's host does not serve the workspace
    r = alice.s.get(f"{subhub.url}/user/alice/{PROJECT}/lab", timeout=30, allow_redirects=False)
    assert r.status_code != 200 or "JupyterLab" not in r.text


def test_service_pages_are_on_their_own_origin_not_the_users(subhub, alice, alice_ws):
    user_origin = f"http://alice.{DOMAIN}:{subhub.port}"
    for path in ("api/health", "checking/", "releases/", "audit/"):
        r = alice.s.get(f"{user_origin}/services/sde/{path}", timeout=30, allow_redirects=False)
        assert not is_sde_service(r), path
        assert "sde--service" not in r.headers.get("Set-Cookie", ""), path
        assert r.status_code in (302, 404), (path, r.status_code)
        if r.status_code == 302:  # the hub, which owns every unrouted URL, sends elsewhere
            assert not r.headers["Location"].startswith(user_origin + "/services/"), path
    # nor on the hub's bare host
    r = requests.get(f"{subhub.url}/services/sde/api/health", timeout=10, allow_redirects=False)
    assert not is_sde_service(r)
    # control: on its own subdomain the service answers
    r = requests.get(f"{subhub.service_url}api/health", timeout=10)
    assert r.status_code == 200 and is_sde_service(r)


def test_a_checker_uses_the_checking_pages_on_the_services_origin(subhub):
    chris = User(subhub, "chris")
    assert chris.logged_in
    r = chris.s.get(f"{subhub.service_url}checking/", timeout=60)
    assert r.status_code == 200, r.text[-800:]
    assert r.url == f"{subhub.service_url}checking/"
    assert "Checking queue" in r.text or "checking" in r.text.lower()
    service_host = f"sde--service.{DOMAIN}"
    assert any(c.domain == service_host for c in chris.s.cookies)
    # the page guard holds here too: chris's API token is refused on the service's origin
    r = requests.get(
        f"{subhub.service_url}checking/",
        headers={"Authorization": f"token\t{chris.token}"},
        timeout=30,
    )
    assert r.status_code == 403 and "browser login" in r.text


PROBE = r"""
import json, os, sys, urllib.error, urllib.request
base = {"hub": os.environ["JUPYTERHUB_API_URL"].rsplit("/hub/api", 1)[0] + "/hub/",
        "service": os.environ["SDE_SERVICE_URL"]}
out = []
for where, method, path, with_token in json.loads(sys.argv[1]):
    headers = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]} if with_token else {}
    req = urllib.request.Request(base[where] + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            out.append([r.status, r.read(2000).decode(errors="replace")])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.read(2000).decode(errors="replace")])
    except OSError as e:
        out.append([0, repr(e)])
print(json.dumps(out))
"""


def test_the_hub_gate_and_the_export_api_work_from_the_workspace(subhub, alice_ws):
    probes = [
        ("hub", "GET", "api/", False),  # what a server needs: answered
        ("hub", "GET", "api/users", True),  # the rest of the hub: refused by the gate
        ("hub", "GET", "login", False),
        ("service", "GET", "api/exports", True),  # the workspace's export API
    ]
    res = alice_ws.exec_run(["python3", "-c", PROBE, json.dumps(probes)])
    assert res.exit_code == 0, res.output
    (api, _), (users, users_body), (login, _), (exports, exports_body) = json.loads(
        res.output.decode().strip().splitlines()[-1]
    )
    assert api == 200
    assert users == 403 and "workspace" in users_body.lower(), users_body
    assert login == 403
    assert exports == 200 and json.loads(exports_body) == {"requests": []}, exports_body
    denied = wait_for(
        lambda: subhub.events(action="hub.gate.denied", outcome="denied"), 15, "the gate's events"
    )
    assert any(e["details"].get("path", "").endswith("api/users") for e in denied), denied


#: Chromium resolves the test's names to loopback and nothing else at all.
RESOLVER = (
    f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1, MAP {DOMAIN} 127.0.0.1, MAP * ~NOTFOUND"
)

READ = """async (url) => {
  try {
    const r = await fetch(url, {credentials: "include", redirect: "manual"});
    const text = await r.text();
    return {status: r.status, text: text.slice(0, 2000), alice: text.includes("alice")};
  } catch (e) {
    return {error: String(e)};
  }
}"""


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium with :data:`RESOLVER` (module-scoped, see tests/browser/conftest.py)."""
    import shutil

    from tests.browser.conftest import CHROMIUM_ARGS

    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[*CHROMIUM_ARGS, RESOLVER])
        yield browser
        browser.close()


def test_in_chromium_a_workspace_page_cannot_read_the_service_pages(subhub, alice_ws, chromium):
    """alice, logged in to the hub and the service, opens her workspace: script on its origin
    cannot read her service pages (another origin); on the service's origin it can (control)."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(subhub.url + "/hub/login")
        page.fill("#username_input", "alice")
        page.fill("#password_input", "demo")
        page.click("#login_submit")
        page.wait_for_url(lambda url: "/hub/login" not in url)
        page.goto(subhub.service_url + "releases/")  # HubOAuth round trip to the service
        assert page.url == subhub.service_url + "releases/", page.url
        # control: script on the service's origin (a page without the pages' CSP) reads it
        page.goto(subhub.service_url + "api/health")
        control = page.evaluate(READ, subhub.service_url + "releases/")
        assert control.get("status") == 200 and control["alice"], control

        page.goto(subhub.user_url("alice", f"{PROJECT}/egress/"))
        origin = page.evaluate("location.origin")
        assert origin == f"http://alice.{DOMAIN}:{subhub.port}", origin
        own = page.evaluate(READ, subhub.user_url("alice", f"{PROJECT}/api/status"))
        assert own.get("status") == 200, own  # script here may fetch: CSP is not what stops it
        across = page.evaluate(READ, subhub.service_url + "releases/")
        assert "error" in across and "Failed to fetch" in across["error"], across  # CORS
        here = page.evaluate(READ, "/services/sde/releases/")  # the service's path, her origin
        assert "error" in here or (not here["alice"] and here["status"] != 200), here
        assert {c["domain"] for c in context.cookies()} >= {
            DOMAIN,
            f"alice.{DOMAIN}",
            f"sde--service.{DOMAIN}",
        }
    finally:
        context.close()
