"""Spawn-to-ready of SDESpawner against stock DockerSpawner (``python -m benchmarks.spawn``).

Two hubs run side by side on loopback ports, both starting the same image
(``sde-notebook:latest``) with the same command, timeouts and default URL:

* the SDE hub: ``jupyterhub_config.py`` through :class:`tests.support.Hub` (demo seed, its own
  registry, Docker object prefix and host firewall port), spawning ``SDESpawner`` locked rooms;
* the stock hub: ``benchmarks/stock_hub_config.py``, plain ``dockerspawner.DockerSpawner`` on
  Docker's default bridge, driven with a service token.

Spawn-to-ready is the wall time from ``POST /hub/api/users/<u>/servers/<name>`` until
``GET /hub/api/users/<u>`` shows ``servers[name].ready`` (polled every 0.1 s); the same
measurement for both. Each server is then stopped (``DELETE``, not counted) before the next.

1. ``--count`` rounds (default 10), interleaved: one SDE spawn and one stock spawn per round,
   the order alternating every round to cancel drift; after ``--warmup`` untimed rounds.
2. ``--concurrent`` (default 20) SDE spawns at once by distinct eligible researchers (created
   for the run); each start's readiness is its ``ready`` event on the hub's progress stream
   (``GET /hub/api/users/<u>/servers/<name>/progress``, the EventSource the spawn page opens
   in a browser). An earlier version polled the whole user list every 0.1 s instead, and
   during a 20-spawn burst that poll was about half of the hub's event-loop samples (py-spy),
   load that no crowd of real people puts on a hub. ``--stock-concurrent`` does the same on
   the stock hub (default 0: off). The crowd then starts a second time (``[2a]``): the first
   burst builds each person's extract inside the start, the second finds it built, as on any
   morning after a person's first start.
3. Where the time goes, from Docker's own event stream and the workspace's log timestamps:
   POST -> network created (SDE) -> container created -> started -> the single-user server
   logs "is running at" -> the hub reports ready.
4. ``--curve 1,10,20,50`` (default off, so a quick run needs no flag): N concurrent spawns on
   each hub at each level, p50/p95 and failures, on fresh hubs whose databases are SQLite
   or PostgreSQL (``--curve-db sqlite,postgres``, databases of the run's own on the
   ``--pg-url`` server, dropped afterwards); see :mod:`benchmarks.spawn_curve`.
5. Diagnostics of the image: ``docker run --rm IMAGE true`` and the import time of
   ``jupyter_server.serverapp, jupyterlab`` inside it.

The image is ``sde-notebook:$SDE_IMAGE_TAG`` (default latest) for both hubs. The SDE hub
inherits the environment, so ``SDE_START_CONCURRENCY=N`` runs it with that start queue
limit (README, Start queue; 0: no queue).

Everything the run created is removed at the end (containers, networks and volumes labelled
with the run's prefix, stock containers of the run's users, the hub's firewall port).
Traffic goes only to loopback, the Docker socket and the containers the run created.
The last line is ``ratio=<SDE p50 / stock p50>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import docker
import requests
from dockerspawner import DockerSpawner

from sde_spawner.containers import workspace_names
from tests.support import Hub, User, wait_for

IMAGE = f"sde-notebook:{os.environ.get('SDE_IMAGE_TAG', 'latest')}"  # as tests/conftest.py
PROJECT = "diabetes-outcomes"
POLL = 0.1
SPAWN_TIMEOUT = 330.0  # the hubs: start_timeout 300 (jupyterhub_config.py), + margin
STOCK_CONFIG = Path(__file__).resolve().parent / "stock_hub_config.py"
esc = DockerSpawner._escape  # stock container names: jupyter-{user}--{server}, escaped
IMPORT_PROBES = {
    "jupyter_server.serverapp, jupyterlab": "jupyter_server.serverapp, jupyterlab",
    "jupyterhub.singleuser (what the command imports)": "jupyterhub.singleuser",
    "jupyterhub.orm (hub ORM: sqlalchemy + alembic, pulled in by the above)": "jupyterhub.orm",
}


# ---- statistics ------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values)} p50={percentile(values, 50):.2f}s p95={percentile(values, 95):.2f}s "
        f"min={min(values):.2f}s max={max(values):.2f}s mean={sum(values) / len(values):.2f}s"
    )


# ---- Docker's event stream -------------------------------------------------------------------
class DockerEvents:
    """Container and network events (with the daemon's nanosecond times) seen during the run."""

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.rows: list[tuple[float, str, str, str]] = []  # (time, type, action, name)
        self._stream = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> DockerEvents:
        self._stream = self.client.api.events(
            decode=True, filters={"type": ["container", "network"]}
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for ev in self._stream:
                actor = ev.get("Actor") or {}
                name = (actor.get("Attributes") or {}).get("name", "")
                t = ev.get("timeNano", 0) / 1e9 or float(ev.get("time", 0))
                self.rows.append((t, ev.get("Type", ""), ev.get("Action", ""), name))

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()

    def first(self, kind: str, action: str, name: str, after: float) -> float | None:
        times = [
            t
            for t, k, a, n in list(self.rows)
            if k == kind and a == action and n == name and t >= after
        ]
        return min(times) if times else None


# ---- one spawn -------------------------------------------------------------------------------
@dataclass
class Sample:
    spawner: str
    user: str
    server: str
    container: str
    network: str = ""
    t0: float = 0.0  # wall clock (time.time) at the POST
    ready_at: float | None = None
    seconds: float | None = None
    error: str = ""
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.seconds is not None and not self.error


class Api:
    """``/hub/api`` of one hub with one token."""

    def __init__(self, base_url: str, token: str):
        self.base = f"{base_url}/hub/api"
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"token {token}"

    def __call__(self, method: str, path: str, **kw) -> requests.Response:
        return self.s.request(method, self.base + path, timeout=kw.pop("timeout", 180), **kw)

    def server(self, user: str, server: str) -> dict | None:
        r = self("GET", f"/users/{user}", timeout=30)
        r.raise_for_status()
        return (r.json().get("servers") or {}).get(server)


def post_spawn(api: Api, sample: Sample) -> None:
    sample.t0 = time.time()
    try:
        r = api("POST", f"/users/{sample.user}/servers/{sample.server}", json={})
    except requests.RequestException as exc:
        sample.error = f"POST failed: {exc}"
        return
    if r.status_code not in (201, 202):
        sample.error = f"POST {r.status_code}: {r.text[:200]}"


def spawn_and_wait(api: Api, sample: Sample) -> Sample:
    """POST, then poll the user's model every POLL seconds until the server is ready."""
    post_spawn(api, sample)
    if sample.error:
        return sample
    while True:
        now = time.time()
        if now - sample.t0 > SPAWN_TIMEOUT:
            sample.error = f"not ready after {SPAWN_TIMEOUT:.0f}s"
            return sample
        try:
            info = api.server(sample.user, sample.server)
        except requests.RequestException as exc:
            sample.error = f"GET failed: {exc}"
            return sample
        if info is None:
            sample.error = "server vanished while starting (spawn failed)"
            return sample
        if info.get("ready"):
            sample.ready_at = time.time()
            sample.seconds = sample.ready_at - sample.t0
            return sample
        time.sleep(POLL)


def stop_server(api: Api, user: str, server: str) -> None:
    with contextlib.suppress(requests.RequestException):
        api("DELETE", f"/users/{user}/servers/{server}")
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: api.server(user, server) is None, 90, f"{user}/{server} to stop", POLL)


def container_log_times(
    client: docker.DockerClient, name: str
) -> tuple[float | None, float | None]:
    """(first log line, "is running at") times of a running workspace, from Docker's log."""
    try:
        raw = client.containers.get(name).logs(timestamps=True).decode(errors="replace")
    except docker.errors.APIError:
        return None, None
    first = running = None
    for line in raw.splitlines():
        stamp, _, text = line.partition(" ")
        t = _rfc3339(stamp)
        if t is None:
            continue
        if first is None:
            first = t
        if "is running at" in text:
            running = t
            break
    return first, running


def _rfc3339(stamp: str) -> float | None:
    # 2026-11-23T09:18:32.348123456Z: keep microseconds, which datetime can parse
    try:
        head, _, frac = stamp.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
    except ValueError:
        return None


def attach_phases(sample: Sample, events: DockerEvents, log_times=(None, None)) -> None:
    """Phase boundaries of one spawn from Docker events and the workspace's log."""
    if not sample.ok:
        return
    marks: list[tuple[str, float | None]] = [("post", sample.t0)]
    if sample.network:
        marks.append(("network", events.first("network", "create", sample.network, sample.t0)))
    marks.append(("create", events.first("container", "create", sample.container, sample.t0)))
    marks.append(("start", events.first("container", "start", sample.container, sample.t0)))
    first_log, running = log_times
    marks.append(("first_log", first_log))
    marks.append(("listening", running))
    marks.append(("ready", sample.ready_at))
    known = [(k, t) for k, t in marks if t is not None]
    for (a, ta), (b, tb) in pairwise(known):
        sample.phases[f"{a}->{b}"] = tb - ta


PHASE_ORDER = [
    "post->network",
    "network->create",
    "post->create",
    "create->start",
    "start->first_log",
    "first_log->listening",
    "listening->ready",
]


def print_phases(label: str, samples: list[Sample]) -> None:
    keys = [k for k in PHASE_ORDER if any(k in s.phases for s in samples)]
    keys += sorted({k for s in samples for k in s.phases} - set(keys))
    print(f"  {label}: phase medians (p50 / max, seconds)")
    for k in keys:
        vals = [s.phases[k] for s in samples if k in s.phases]
        print(f"    {k:<22} {percentile(vals, 50):6.2f} / {max(vals):6.2f}  (n={len(vals)})")


# ---- the two hubs ----------------------------------------------------------------------------
class StockHub(Hub):
    """``jupyterhub -f benchmarks/stock_hub_config.py`` on loopback ports, with a service token.

    Process handling (start, log, stop) is :class:`tests.support.Hub`'s; only the config, its
    environment and what "started" means differ.
    """

    config = STOCK_CONFIG

    def __init__(self, state_dir: Path, connect_ip: str, hub_db_url: str = ""):
        super().__init__(state_dir, prefix="stock")
        self.token = secrets.token_hex(32)
        self.connect_ip = connect_ip
        self.hub_db_url = hub_db_url

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            BENCH_STOCK_PORT=str(self.port),
            BENCH_STOCK_HUB_PORT=str(self.hub_port),
            BENCH_STOCK_PROXY_API_PORT=str(self.proxy_api_port),
            BENCH_STOCK_HUB_CONNECT_IP=self.connect_ip,
            BENCH_STOCK_TOKEN=self.token,
            BENCH_STOCK_IMAGE=IMAGE,
            BENCH_STOCK_DB_URL=self.hub_db_url,
        )
        return env

    def wait_started(self) -> None:
        wait_for(self._up, 60, "the stock hub to answer")  # no `sde` service here


class SdeHub(Hub):
    """The SDE hub of :class:`tests.support.Hub`, optionally with both of its databases (the
    registry and JupyterHub's own, ``SDE_HUB_DB_URL``) elsewhere, e.g. on PostgreSQL."""

    def __init__(self, state_dir: Path, prefix: str, registry_url: str = "", hub_db_url: str = ""):
        super().__init__(state_dir, prefix)
        if registry_url:
            self.db_url = registry_url
        self.hub_db_url = hub_db_url

    @property
    def env(self) -> dict:
        env = super().env
        if self.hub_db_url:
            env["SDE_HUB_DB_URL"] = self.hub_db_url
        env["SDE_WORKSPACE_IMAGE"] = IMAGE
        return env


def docker0_gateway(client: docker.DockerClient) -> str:
    cfg = client.api.inspect_network("bridge")["IPAM"]["Config"] or [{}]
    gateway = cfg[0].get("Gateway")
    if gateway:
        return gateway.split("/")[0]
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    ).stdout.split()
    return out[out.index("inet") + 1].split("/")[0] if "inet" in out else "172.17.0.1"


def add_researchers(hub: Hub, names: list[str]) -> None:
    """Eligible researchers on the demo project, through the sde-admin commands (in process,
    as the demo seed does)."""
    from click.testing import CliRunner

    from sde_spawner.cli import main as sde_admin

    runner = CliRunner()
    for name in names:
        for args in (
            ["person", "add", name, "--training-expires", "2030-01-01"],
            ["member", "add", PROJECT, name, "--role", "researcher"],
            ["grant", "add", PROJECT, name, "patients", "--columns", "pseudonym,age"],
        ):
            res = runner.invoke(sde_admin, ["--db", hub.db_url, *args])
            if res.exit_code != 0:
                raise RuntimeError(f"sde-admin {' '.join(args)} failed: {res.output}")


# ---- the benchmark ---------------------------------------------------------------------------
@dataclass
class Side:
    label: str
    api_for: dict[str, Api]  # user -> API with a token that may act for that user
    network_for: Callable[[str], str]  # user -> network the spawner creates ("" if none)
    container_for: Callable[[str], str]  # user -> container name


def sequential(
    sides: dict[str, Side],
    users: dict[str, str],
    rounds: int,
    warmup: int,
    client,
    events,
) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {k: [] for k in sides}
    order = list(sides)
    for i in range(-warmup, rounds):
        this_round = order if i % 2 == 0 else order[::-1]
        line = []
        for key in this_round:
            side, user = sides[key], users[key]
            api = side.api_for[user]
            sample = Sample(key, user, PROJECT, side.container_for(user), side.network_for(user))
            spawn_and_wait(api, sample)
            logs = container_log_times(client, sample.container) if sample.ok else (None, None)
            stop_server(api, user, PROJECT)
            time.sleep(0.3)  # let the last events arrive before reading them
            attach_phases(sample, events, logs)
            line.append(
                f"{key}={sample.seconds:.2f}s" if sample.ok else f"{key}=FAILED({sample.error})"
            )
            if i >= 0:
                results[key].append(sample)
        tag = f"round {i + 1:>2}" if i >= 0 else "warm-up "
        print(f"  {tag}: " + "  ".join(line), flush=True)
    return results


def follow_progress(api: Api, sample: Sample) -> None:
    """POST, then read the start's progress event stream until its ``ready`` (or ``failed``)
    event: what the spawn page does in a browser (an EventSource on
    ``/hub/api/users/<u>/servers/<name>/progress``), so the measurement adds one open
    stream per start, as a crowd of real people would, not a poll of the whole user list."""
    post_spawn(api, sample)
    if sample.error:
        return
    path = f"/users/{sample.user}/servers/{sample.server}/progress"
    try:
        with api("GET", path, stream=True, timeout=SPAWN_TIMEOUT) as r:
            if r.status_code != 200:
                info = api.server(sample.user, sample.server)
                if info and info.get("ready"):  # ready before the stream opened
                    sample.ready_at = time.time()
                    sample.seconds = sample.ready_at - sample.t0
                else:
                    sample.error = f"progress {r.status_code}: {r.text[:200]}"
                return
            for line in r.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue  # keep-alive comments, blank separators
                event = json.loads(line[len("data:") :])
                if event.get("ready"):
                    sample.ready_at = time.time()
                    sample.seconds = sample.ready_at - sample.t0
                    return
                if event.get("failed"):
                    sample.error = f"spawn failed: {event.get('message', '')[:200]}"
                    return
    except (requests.RequestException, ValueError) as exc:
        sample.error = f"progress stream: {exc}"
        return
    if sample.ready_at is None and not sample.error:
        sample.error = "progress stream ended without a ready event"


def concurrent(side: Side, users: list[str], client, events) -> list[Sample]:
    """All users POST at once; each then follows its own start's progress stream."""
    samples = {
        u: Sample(side.label, u, PROJECT, side.container_for(u), side.network_for(u)) for u in users
    }
    threads = [
        threading.Thread(target=follow_progress, args=(side.api_for[u], samples[u])) for u in users
    ]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(SPAWN_TIMEOUT + 60)
    ready = {u: s.ready_at for u, s in samples.items() if s.ready_at is not None}
    logs = {u: container_log_times(client, samples[u].container) for u in users if samples[u].ok}
    stoppers = [
        threading.Thread(target=stop_server, args=(side.api_for[u], u, PROJECT)) for u in users
    ]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    time.sleep(0.3)
    for u, s in samples.items():
        attach_phases(s, events, logs.get(u, (None, None)))
    print(
        f"  all {len(users)} posted within {max(s.t0 for s in samples.values()) - start:.2f}s; "
        f"last ready {max(ready.values(), default=math.nan) - start:.2f}s after the first POST"
    )
    return list(samples.values())


def report(label: str, samples: list[Sample]) -> None:
    ok = [s.seconds for s in samples if s.ok]
    failed = [s for s in samples if not s.ok]
    print(f"  {label:<6} {summary(ok)} failures={len(failed)}")
    for s in failed[:5]:
        print(f"    failure {s.user}: {s.error}")


def diagnostics(client: docker.DockerClient, repeats: int = 3) -> None:
    def timed(cmd: list[str]) -> tuple[float, str]:
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return time.perf_counter() - t, out.stdout.strip()

    runs = [
        timed(["docker", "run", "--rm", "--network", "none", IMAGE, "true"])[0]
        for _ in range(repeats)
    ]
    print(f"  docker run --rm {IMAGE} true: {summary(runs)}")
    for label, modules in IMPORT_PROBES.items():
        code = f"import time; t=time.time(); import {modules}; print(time.time()-t)"
        imports = []
        for _ in range(repeats):
            _, out = timed(
                ["docker", "run", "--rm", "--network", "none", IMAGE, "python3", "-c", code]
            )
            with contextlib.suppress(ValueError, IndexError):
                imports.append(float(out.splitlines()[-1]))
        print(f"  import {label}: {summary(imports)}")


def cleanup(client: docker.DockerClient, prefix: str, stock_user_prefix: str) -> None:
    flt = {"label": f"org.sde-tre.managed-by={prefix}"}
    with contextlib.suppress(Exception):
        for c in client.containers.list(all=True, filters=flt):
            c.remove(force=True)
    with contextlib.suppress(Exception):
        for c in client.containers.list(all=True, filters={"name": f"jupyter-{stock_user_prefix}"}):
            if c.name.startswith(f"jupyter-{stock_user_prefix}"):
                c.remove(force=True)
    with contextlib.suppress(Exception):
        for n in client.networks.list(filters=flt):
            n.remove()
    with contextlib.suppress(Exception):
        for v in client.volumes.list(filters=flt):
            v.remove(force=True)


@dataclass
class Pair:
    """An SDE hub and a stock hub started side by side, with their users logged in."""

    sde: SdeHub
    stock: StockHub
    sde_side: Side
    stock_side: Side
    logins: dict[str, Api]
    stock_api: Api
    prefix: str
    stock_user_prefix: str
    crowd: list[str]
    stock_crowd: list[str]
    stock_solo: str


@contextlib.contextmanager
def hub_pair(
    client: docker.DockerClient,
    root: Path,
    crowd_size: int,
    stock_crowd_size: int,
    *,
    registry_url: str = "",
    hub_db_url: str = "",
    stock_db_url: str = "",
):
    """Start both hubs (databases as given, else SQLite in ``root``), ``crowd_size`` eligible
    researchers on the SDE hub and ``stock_crowd_size`` users on the stock hub; stop them and
    remove everything they created on exit."""
    from sde_spawner import firewall

    run = uuid.uuid4().hex[:6]
    prefix, stock_user_prefix = f"sdeb{run}", f"stk{run}"
    (root / "sde").mkdir(parents=True)
    (root / "stock").mkdir()
    sde = SdeHub(root / "sde", prefix, registry_url, hub_db_url)
    stock = StockHub(root / "stock", docker0_gateway(client), stock_db_url)
    crowd = [f"bench{run}-{i:02d}" for i in range(crowd_size)]
    stock_crowd = [f"{stock_user_prefix}-{i:02d}" for i in range(stock_crowd_size)]
    stock_solo = f"{stock_user_prefix}-solo"
    try:
        t = time.perf_counter()
        sde.seed()
        add_researchers(sde, crowd)
        sde.start()
        stock.start()
        stock_api = Api(stock.url, stock.token)
        r = stock_api("POST", "/users", json={"usernames": [stock_solo, *stock_crowd]})
        r.raise_for_status()
        logins = {}
        for name in ["alice", "admin", *crowd]:
            u = User(sde, name)
            if not u.logged_in:
                raise RuntimeError(f"{name} cannot log in: {sde.log_tail(20)}")
            logins[name] = Api(sde.url, u.token)
        print(
            f"setup (seed, {len(crowd)} researchers, two hubs, logins): "
            f"{time.perf_counter() - t:.1f}s",
            flush=True,
        )
        yield Pair(
            sde,
            stock,
            Side(
                "sde",
                logins,
                network_for=lambda u: workspace_names(u, PROJECT, prefix).network,
                container_for=lambda u: workspace_names(u, PROJECT, prefix).container,
            ),
            Side(
                "stock",
                {u: Api(stock.url, stock.token) for u in [stock_solo, *stock_crowd]},
                network_for=lambda u: "",
                container_for=lambda u: f"jupyter-{esc(u)}--{esc(PROJECT)}",
            ),
            logins,
            stock_api,
            prefix,
            stock_user_prefix,
            crowd,
            stock_crowd,
            stock_solo,
        )
    finally:
        sde.stop()
        stock.stop()
        cleanup(client, prefix, stock_user_prefix)
        with contextlib.suppress(Exception):
            firewall.revoke(sde.hub_port)
        with contextlib.suppress(Exception):
            firewall.revoke(sde.service_port)


def levels(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("concurrency levels must be at least 1")
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.spawn_curve import DATABASES, add_curve_args, run_curves

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.spawn", description=__doc__.split("\n")[0]
    )
    p.add_argument("--count", type=int, default=10, help="interleaved spawns per spawner")
    p.add_argument("--concurrent", type=int, default=20, help="simultaneous SDE spawns (0: skip)")
    p.add_argument(
        "--stock-concurrent",
        type=int,
        default=0,
        help="simultaneous stock spawns (default 0: skip)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the image diagnostics")
    p.add_argument("--keep", action="store_true", help="keep the state directory (hub logs)")
    add_curve_args(p)
    args = p.parse_args(argv)
    if any(db not in DATABASES for db in args.curve_db):
        p.error(f"--curve-db: choose from {', '.join(DATABASES)}")

    client = docker.from_env()
    client.images.get(IMAGE)  # fails early with a clear error when the image is not built
    root = Path(tempfile.mkdtemp(prefix="sde-bench-"))
    print(
        f"spawn benchmark: image {IMAGE}, {args.count} interleaved spawns each, "
        f"{args.concurrent} concurrent SDE spawns, curve {args.curve or 'off'} on "
        f"{','.join(args.curve_db) if args.curve else '-'}; state in {root}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    events = DockerEvents(client).start()
    failures = 0
    try:
        with hub_pair(client, root / "main", args.concurrent, args.stock_concurrent) as pair:
            print(f"\n[1] sequential, interleaved ({args.count} rounds, {args.warmup} warm-up)")
            seq = sequential(
                {"sde": pair.sde_side, "stock": pair.stock_side},
                {"sde": "alice", "stock": pair.stock_solo},
                args.count,
                args.warmup,
                client,
                events,
            )
            for key in ("sde", "stock"):
                report(key, seq[key])
                failures += sum(not s.ok for s in seq[key])
            paired = [
                a.seconds - b.seconds
                for a, b in zip(seq["sde"], seq["stock"], strict=True)
                if a.ok and b.ok
            ]
            if paired:
                print(
                    f"  paired (sde - stock, same round): p50={percentile(paired, 50):+.2f}s "
                    f"mean={sum(paired) / len(paired):+.2f}s"
                )

            conc: list[Sample] = []
            again: list[Sample] = []
            if pair.crowd:
                print(f"\n[2] {len(pair.crowd)} concurrent SDE spawns (each person's first start)")
                conc = concurrent(pair.sde_side, pair.crowd, client, events)
                report("sde", conc)
                print(
                    f"\n[2a] the same {len(pair.crowd)} again (their extracts and home volumes "
                    "now exist, as on any later morning)"
                )
                again = concurrent(pair.sde_side, pair.crowd, client, events)
                report("sde", again)
            stock_conc: list[Sample] = []
            if pair.stock_crowd:
                print(f"\n[2b] {len(pair.stock_crowd)} concurrent stock spawns")
                stock_conc = concurrent(pair.stock_side, pair.stock_crowd, client, events)
                report("stock", stock_conc)

        print("\n[3] where the time goes (Docker events + workspace log timestamps)")
        print_phases("sde sequential", [s for s in seq["sde"] if s.ok])
        print_phases("stock sequential", [s for s in seq["stock"] if s.ok])
        if conc:
            print_phases("sde concurrent", [s for s in conc if s.ok])
        if again:
            print_phases("sde concurrent, again", [s for s in again if s.ok])
        if stock_conc:
            print_phases("stock concurrent", [s for s in stock_conc if s.ok])

        curves = run_curves(client, root, events, args) if args.curve else []

        if not args.no_diagnostics:
            print("\n[5] image diagnostics")
            diagnostics(client)

        sde_ok = [s.seconds for s in seq["sde"] if s.ok]
        stock_ok = [s.seconds for s in seq["stock"] if s.ok]
        print("\nsummary")
        print(f"  sde sequential   {summary(sde_ok)}")
        print(f"  stock sequential {summary(stock_ok)}")
        if conc:
            print(
                f"  sde concurrent   {summary([s.seconds for s in conc if s.ok])} "
                f"failures={sum(not s.ok for s in conc)} (first starts)"
            )
        if again:
            print(
                f"  sde concurrent   {summary([s.seconds for s in again if s.ok])} "
                f"failures={sum(not s.ok for s in again)} (the same people again)"
            )
        if stock_conc:
            print(
                f"  stock concurrent {summary([s.seconds for s in stock_conc if s.ok])} "
                f"failures={sum(not s.ok for s in stock_conc)}"
            )
        for line in curves:
            print(f"  {line}")
        print(f"  failures (sequential sde+stock): {failures}")
        print(f"  load average at the end: {os.getloadavg()[0]:.2f} (the machine may be shared)")
        ratio = percentile(sde_ok, 50) / percentile(stock_ok, 50) if stock_ok else math.nan
    finally:
        events.close()
        if args.keep:
            print(f"(state kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"ratio={ratio:.3f}")
    return 0 if not math.isnan(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
