"""Test support for the Docker and security tiers: a real hub, real users, a real outside host.

* :class:`Hub` runs ``jupyterhub -f jupyterhub_config.py`` as a subprocess on loopback ports
  with its own state directory, registry and Docker object prefix, seeded with the demo.
* :class:`User` logs in through the real login form and acts through the hub's pages and API.
* :class:`OutsideHost` is a network namespace behind a veth pair with TCP and UDP listeners
  that record what reaches them: the "internet" a workspace must not reach.

Traffic goes only to loopback, to containers these fixtures create and to the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent


_PORTS_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port that is free on every address now, for a server the test starts later.

    Taken below the kernel's ephemeral range (``ip_local_port_range``): ports in that range are
    what the kernel gives every outgoing connection, so one freed by a ``bind(0)`` probe can be
    taken by any client's ``connect`` before the test's server binds it (a hub then dies in its
    start with "address already in use"). Random in 20000 up to that range, never the same
    twice in one process; ``bind(0)`` only where the range starts too low to leave room."""
    low, high = 20000, _ephemeral_low() - 1
    for _ in range(200 if high - low >= 1000 else 0):
        port = random.randint(low, high)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last!r})")


class Hub:
    """``jupyterhub -f CONFIG`` in a subprocess; CONFIG is the project's own wiring."""

    config = REPO / "jupyterhub_config.py"

    def __init__(self, state_dir: Path, prefix: str, login_env: dict[str, str] | None = None):
        self.state_dir = state_dir
        #: Login settings instead of the demo login (e.g. SDE_AUTHENTICATOR=oidc, SDE_OIDC_*).
        self.login_env = login_env
        self.prefix = prefix
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.service_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = f"sqlite:///{state_dir}/registry.sqlite"
        self.data_dir = state_dir / "data"
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir / "hub.log"

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            SDE_STATE_DIR=str(self.state_dir),
            SDE_DB_URL=self.db_url,
            SDE_PUBLIC_BIND=self.url,
            SDE_HUB_PORT=str(self.hub_port),
            SDE_PROXY_API_PORT=str(self.proxy_api_port),
            SDE_SERVICE_PORT=str(self.service_port),
            SDE_OBJECT_PREFIX=self.prefix,
            SDE_DEMO="1",  # the shared-password demo login, on loopback
            SDE_DEMO_PASSWORD="demo",
            # The periodic sweep is only the safety net: changes are acted on as they happen
            # (tests/docker/test_lifecycle.py shows a suspension closes a room in seconds).
            SDE_ENFORCE_SECONDS="600",
            SDE_AUDIT_CHECKPOINT_SECONDS="5",
            # Activity read from the proxy, idle workspaces looked for and usage sampled every
            # few seconds (projects' idle timeouts stay the default hour unless a test sets
            # one: tests/docker/test_culling.py).
            SDE_ACTIVITY_INTERVAL="3",
            SDE_IDLE_CULL_EVERY="3",
            SDE_USAGE_SAMPLE_SECONDS="2",
            # The hub's firewall watcher would put back at once the chain the security tests
            # take out to show a probe sees the breach without it; it is tested on a chain
            # of its own (tests/docker/test_firewall_restore.py).
            SDE_FIREWALL_WATCH_SECONDS="0",
        )
        if self.login_env is not None:
            for key in ("SDE_DEMO", "SDE_DEMO_PASSWORD"):
                env.pop(key)
            env.update(self.login_env)
        return env

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "sde_spawner.cli", "--db", self.db_url, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )

    def seed(self) -> None:
        res = self.admin("demo-seed", str(self.data_dir))
        assert res.returncode == 0, res.stderr + res.stdout

    def add_project(
        self,
        slug: str,
        researchers: list[str],
        *,
        memory: str | None = None,
        agreement: str = "DSA-T1",
        checkers: tuple[str, ...] = (),
        required_approvals: int = 2,
    ) -> None:
        """An approved project of the test's own (``sde-admin apply``), its agreement in force
        until 2030, each researcher granted three columns of the demo dataset; ``checkers``
        are its output checkers, ``required_approvals`` of them needed before a release."""
        members = "".join(
            f'[[members]]\nusername = "{u}"\nname = "{u.title()}"\nrole = "{role}"\n'
            f"training_expires = 2030-06-30\n\n"
            for u, role in [(u, "researcher") for u in researchers]
            + [(u, "output_checker") for u in checkers]
        )
        grants = "".join(
            f'[[datasets.grants]]\nmember = "{u}"\ncolumns = ["pseudonym", "age", "diagnosis"]\n\n'
            for u in researchers
        )
        limits = f'[limits]\nmemory = "{memory}"\n' if memory else ""
        path = self.state_dir / f"{slug}.toml"
        path.write_text(
            f'slug = "{slug}"\ntitle = "Test project {slug}"\npurpose = "research"\n'
            f'ethics_reference = "IRAS 900001"\nlay_summary = "A test."\n'
            f'public_benefit = "Tests."\n\n[organisation]\nname = "Test Trust"\nkind = "nhs"\n\n'
            f'[approval]\ndac_reference = "DAC-T-{slug}"\ndac_date = 2026-10-15\n'
            f'lay_member = "Pat Lewis"\nlay_member_signed = 2026-10-12\n\n'
            f'[[agreements]]\nreference = "{agreement}"\nsigned = 2026-10-20\n'
            f"start = 2026-11-01\nend = 2030-10-31\ndelete_by = 2031-01-31\n\n"
            f'{members}[[datasets]]\nslug = "patients"\n\n{grants}{limits}'
            f"[output_policy]\nrequired_approvals = {required_approvals}\n"
        )
        res = self.admin("apply", str(path))
        assert res.returncode == 0, res.stderr + res.stdout

    def start(self) -> None:
        self._log = log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.config)],
            cwd=self.state_dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_started()
        except BaseException:
            self.stop()  # a hub that did not come up is not left running
            raise
        self._remember_children()

    def _remember_children(self) -> None:
        """Note the hub's descendants (its proxy, its services) while it runs: once it has
        died they are parented to init and can no longer be found through it."""
        known = getattr(self, "_children", {})
        with contextlib.suppress(psutil.NoSuchProcess):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                known.setdefault(p.pid, p)
        self._children = known

    def wait_started(self) -> None:
        """The hub API answers, and so does the `sde` service through the proxy."""
        wait_for(self._up, 120, "the hub to answer")
        wait_for(
            lambda: (
                requests.get(f"{self.url}/services/sde/api/health", timeout=2).status_code == 200
            ),
            60,
            "the sde service to answer",
        )

    def _up(self) -> bool:
        if self.proc is not None:
            self._remember_children()
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {self.log_tail()}")
        return requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200

    def stop(self) -> None:
        """SIGTERM the hub (SIGKILL after 30 s), then end whatever it started and left
        running (its proxy, its managed services), by PID: a hub that is killed, or whose
        children outlive its cleanup, must not leave processes behind on the test host."""
        if self.proc is None:
            return
        self._remember_children()
        known, self._children = self._children, {}
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self._log.close()
        end_processes(list(known.values()))

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def events(self, **filters) -> list[dict]:
        """Audit events, read through ``sde-admin audit export``."""
        out = self.state_dir / "events.jsonl"
        res = self.admin("audit", "export", "--out", str(out))
        assert res.returncode == 0, res.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        return [r for r in rows if all(r.get(k) == v for k, v in filters.items())]


def end_processes(procs: list[psutil.Process], timeout: float = 10) -> list[psutil.Process]:
    """SIGTERM those of ``procs`` still running (psutil checks that a PID was not reused),
    SIGKILL any left after ``timeout``; returns the ones that had to be ended."""
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.terminate()
                alive.append(p)
    _, left = psutil.wait_procs(alive, timeout=timeout)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=timeout)
    return alive


@contextlib.contextmanager
def seeded_registry(directory: Path):
    """A registry seeded with the demo (SQLite in ``directory``, demo data under ``data/``),
    for tests that build spawners without a hub: yields ``url``, ``sm`` (the sessionmaker)
    and ``extracts`` (where extracts go); its engine is disposed afterwards."""
    import types

    from sde_spawner.db import open_db
    from sde_spawner.demo import seed

    url = f"sqlite:///{directory}/registry.sqlite"
    sm = open_db(url)
    try:
        seed(sm, str(directory / "data"), "tester")
        yield types.SimpleNamespace(url=url, sm=sm, extracts=str(directory / "extracts"))
    finally:
        sm.kw["bind"].dispose()


def remove_prefixed(client, prefix: str) -> None:
    """Remove every container, network and volume a test hub with ``prefix`` created."""
    flt = {"label": f"org.sde-tre.managed-by={prefix}"}
    for c in client.containers.list(all=True, filters=flt):
        c.remove(force=True)
    for n in client.networks.list(filters=flt):
        n.remove()
    for v in client.volumes.list(filters=flt):
        v.remove(force=True)


def retire_hub(h: Hub, docker_client, own_firewall_env: dict[str, str] | None = None) -> None:
    """A test hub's whole teardown: close the open sessions, stop the hub (and what it left
    running), remove its Docker objects, and take its ports out of the shared firewall chain,
    or remove its own chain when it had one (``own_firewall_env``, see :func:`own_firewall`)."""
    close_sessions()
    h.stop()
    remove_prefixed(docker_client, h.prefix)
    if own_firewall_env is None:
        from sde_spawner import firewall

        firewall.revoke(h.hub_port)
        firewall.revoke(h.service_port)
    else:
        own_firewall(own_firewall_env, "firewall.remove(); firewall.remove(ipv6=True)")


def own_firewall(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    """Run ``sde_spawner.firewall`` code against a test hub's own chain and bridges
    (SDE_FIREWALL_CHAIN, SDE_BRIDGE_PREFIX in ``env``: the module reads them at import)."""
    return subprocess.run(
        [sys.executable, "-c", f"from sde_spawner import firewall; {code}"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    )


OPEN_SESSIONS: list[requests.Session] = []


def close_sessions() -> None:
    """Close every User session explicitly (left to the garbage collector, their pooled
    sockets raise ResourceWarning inside whichever later test happens to be running)."""
    while OPEN_SESSIONS:
        OPEN_SESSIONS.pop().close()


class User:
    """A person using the hub through its real login form, pages and API."""

    def __init__(self, hub: Hub, name: str, password: str = "demo"):  # noqa: S107 - demo login
        self.hub = hub
        self.name = name
        self.s = requests.Session()
        OPEN_SESSIONS.append(self.s)
        self.s.get(f"{hub.url}/hub/login", timeout=10)
        r = self.s.post(
            f"{hub.url}/hub/login",
            data={"username": name, "password": password, "_xsrf": self.xsrf},
            allow_redirects=False,
            timeout=20,
        )
        self.logged_in = r.status_code == 302 and "/hub/login" not in r.headers.get("location", "")
        self._token = None

    @property
    def xsrf(self) -> str:
        """The hub's xsrf cookie (workspaces and services set their own, on other paths)."""
        for cookie in self.s.cookies:
            if cookie.name == "_xsrf" and cookie.path.startswith("/hub"):
                return cookie.value
        return ""

    @property
    def token(self) -> str:
        if self._token is None:
            r = self.s.post(
                f"{self.hub.url}/hub/api/users/{self.name}/tokens",
                json={"expires_in": 3600, "note": "test"},
                headers={"X-XSRFToken": self.xsrf},
                timeout=10,
            )
            r.raise_for_status()
            self._token = r.json()["token"]
        return self._token

    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kw.pop("headers", {})}
        return requests.request(
            method, f"{self.hub.url}/hub/api{path}", headers=headers, timeout=120, **kw
        )

    def spawn_page(self, server: str) -> requests.Response:
        return self.s.get(f"{self.hub.url}/hub/spawn/{self.name}/{server}", timeout=30)

    def spawn_with_form(self, server: str, project: str) -> requests.Response:
        return self.s.post(
            f"{self.hub.url}/hub/spawn/{self.name}/{server}",
            data={"project": project, "_xsrf": self.xsrf},
            allow_redirects=False,
            timeout=120,
        )

    def server(self, server: str) -> dict | None:
        r = self.api("GET", f"/users/{self.name}")
        r.raise_for_status()
        return r.json()["servers"].get(server)

    def wait_ready(self, server: str, timeout: float = 120) -> dict:
        def ready():
            info = self.server(server)
            if info is None:
                raise RuntimeError(f"server {server} is gone: {self.hub.log_tail(30)}")
            return info if info["ready"] else None

        return wait_for(ready, timeout, f"{self.name}/{server} to be ready", interval=0.5)

    def ensure_running(self, server: str) -> None:
        """Start the project's server from the form unless it is already up."""
        info = self.server(server)
        if not (info and info["ready"]):
            r = self.spawn_with_form(server, server)
            assert r.status_code == 302, r.text[-1500:]
            self.wait_ready(server)

    def ensure_stopped(self, server: str) -> None:
        """Start from a stopped server, whatever earlier tests left running."""
        if self.server(server) is not None:
            self.stop(server)

    def stop(self, server: str) -> None:
        r = self.api("DELETE", f"/users/{self.name}/servers/{server}")
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: self.server(server) is None, 60, f"{self.name}/{server} to stop")

    def workspace_get(self, server: str, path: str) -> requests.Response:
        return requests.get(
            f"{self.hub.url}/user/{self.name}/{server}/{path.lstrip('/')}",
            headers={"Authorization": f"token {self.token}"},
            timeout=30,
        )


XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')


class OutsideHost:
    """A host outside every Docker network: a netns behind a veth pair, with listeners."""

    def __init__(self, tag: str, subnet: str = "10.213.77"):
        self.ns = f"sdetest-{tag}"
        self.host_if = f"vsh{tag}"[:15]
        self.ns_if = f"vsn{tag}"[:15]
        self.gateway = f"{subnet}.1"
        self.ip = f"{subnet}.2"
        self.tcp_port = 18080
        self.udp_port = 53
        self.log = Path(f"/tmp/{self.ns}.log")
        self.listener: subprocess.Popen | None = None

    def _ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def start(self) -> OutsideHost:
        self.stop()
        self._ip("netns", "add", self.ns)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.ns)
        self._ip("addr", "add", f"{self.gateway}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        for args in (
            ["addr", "add", f"{self.ip}/30", "dev", self.ns_if],
            ["link", "set", self.ns_if, "up"],
            ["link", "set", "lo", "up"],
            ["route", "add", "default", "via", self.gateway],
        ):
            self._ip("netns", "exec", self.ns, "ip", *args)
        self.log.write_text("")
        self.listener = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                sys.executable,
                "-c",
                _LISTENER,
                str(self.tcp_port),
                str(self.udp_port),
                str(self.log),
            ],
        )
        wait_for(lambda: "ready" in self.log.read_text(), 10, "outside host listener")
        return self

    def hits(self) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if ln != "ready"]

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.terminate()
            self.listener.wait(10)
            self.listener = None
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)


# A plain socket listener (http.server would block on reverse DNS inside the namespace):
# answers TCP with one line and records every TCP connection and UDP datagram.
_LISTENER = r"""
import socket, sys, threading
tcp_port, udp_port, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def note(s):
    with open(log, "a") as fh:
        fh.write(s + "\n")
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", tcp_port)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", udp_port))
def udp():
    while True:
        data, addr = u.recvfrom(4096)
        note(f"udp {addr[0]} {len(data)}")
threading.Thread(target=udp, daemon=True).start()
note("ready")
while True:
    c, addr = t.accept()
    note(f"tcp {addr[0]}")
    c.sendall(b"outside\n"); c.close()
"""
