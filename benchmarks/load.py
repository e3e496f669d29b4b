"""Export requests under load: researchers and checkers at once (``python -m benchmarks.load``).

Method. A real hub (:class:`tests.support.Hub`: ``jupyterhub -f jupyterhub_config.py`` with its
proxy and its managed ``sde`` service, on loopback ports) with the registry on SQLite or on a
fresh schema of the PostgreSQL server at ``SDE_TEST_POSTGRES_URL`` (the Makefile's). After
the demo seed, ``--projects`` projects are applied, the researchers spread over them and every
checker an output checker of each (two approvals needed, as the demo's projects).

Every person logs in through the hub's real login form and then the ``sde`` service's own
OAuth login, as a browser does. Researchers act through the workspace export API, which takes
a workspace's server token only from the address its workspace was recorded at. No container
is started (fifty would measure Docker on two cores, not the service): instead each
researcher's workspace is recorded in the registry through ``ops.open_workspace`` (as the
spawner records one, its ``spawn.started`` audit row written, actor ``load-benchmark``) at an
address of its own in 127.0.1.0/24, and the researcher's client binds that address as its
source, so the service's address check, its per-address and per-workspace flood limits and
the hub's token check all run unchanged. The server token is a hub API token the researcher
creates with the one scope ``access:servers!server=NAME/bench``: the hub's whoami answers for
it as for a spawned server's token. Checkers use the checking pages through the hub's proxy
with their browser cookies and xsrf token (each from an address of its own, 127.0.2.0/24).

Each request: the researcher creates it (one CSV of aggregate counts), uploads the bytes and
submits; a checker claims it, views its page (previews and the automated disclosure checks)
and reviews it (approve, with a comment); a second checker does the same, which approves it;
the researcher then reads its number (``GET api/exports/ID``) and downloads the release
through the proxy, checking the bytes' sha256 (the first download moves it to released).

First a quiet phase: one researcher and the checkers take ``--quiet`` requests through the
whole cycle one at a time, nothing else running. Then ``--seconds`` of load: ``--researchers``
simulated researchers, each in a closed loop (create, upload, submit, download whatever of
theirs was approved meanwhile, ``--think`` seconds' pause), and ``--checkers`` checkers, each
taking the oldest submitted request they have not reviewed. Every call is timed from sending
the request to its whole answer; any unexpected answer is an error and is printed. Afterwards
the hub is stopped and ``sde-admin audit verify`` runs on the registry; it must say OK.

Reported per database: calls per second over the load phase, p50/p95 of each call alone and
under load, errors (must be 0), the verify result. The last line is ``ratio=`` p95 of submit
under load over p95 of submit alone (of the worse database when both run). The machine this
runs on is usually shared: only figures from the same run compare.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import requests
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.support import Hub, User

SERVICE = "/services/sde/"
SERVER = "bench"
DEFAULT_PG = "postgresql+psycopg2://sde:sde@127.0.0.1:5432/sde_test"
CALLS = ("create", "upload", "submit", "claim", "view", "review", "status", "download")
XSRF = re.compile(r'name="_xsrf" value="([^"]+)"')
DECISION = re.compile(r'name="decision-(\d+)"')


@dataclass
class Stats:
    """Latencies per call and every unexpected answer, of one phase."""

    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    #: request ids the service said were submitted, and whose release was downloaded
    submitted: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)

    def p(self, call: str, q: float) -> float | None:
        values = sorted(self.times.get(call, []))
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

    @property
    def calls(self) -> int:
        return sum(len(v) for v in self.times.values())


class CallFailed(Exception):
    pass


@dataclass
class Person:
    """One simulated person: hub login cookies for the service, the address they call from,
    and (a researcher) the server token of their recorded workspace."""

    name: str
    address: str
    cookie: str = ""
    xsrf: str = ""
    token: str = ""
    approved: list[tuple[int, str]] = field(default_factory=list)


class Client:
    """Timed HTTP calls from one person's own source address (tornado's client)."""

    def __init__(self, hub: Hub, person: Person, stats: Stats):
        self.hub, self.person, self.stats = hub, person, stats
        self.http = AsyncHTTPClient(force_instance=True)
        self.direct = f"http://127.0.0.1:{hub.service_port}{SERVICE}"
        self.proxied = f"{hub.url}{SERVICE}"

    async def call(self, name: str, url: str, *, expect: int, **kw):
        request = HTTPRequest(
            url,
            network_interface=self.person.address,
            follow_redirects=False,
            request_timeout=300,
            connect_timeout=60,
            **kw,
        )
        started = time.perf_counter()
        try:
            response = await self.http.fetch(request, raise_error=False)
        except (OSError, TimeoutError, HTTPClientError) as exc:
            self.stats.errors.append(f"{name} {self.person.name}: {exc!r}")
            raise CallFailed(name) from None
        self.stats.times[name].append(time.perf_counter() - started)
        if response.code != expect:
            body = (response.body or b"")[:300].decode(errors="replace")
            self.stats.errors.append(f"{name} {self.person.name}: {response.code} {body}")
            raise CallFailed(name)
        return response

    # researcher: the workspace API, directly on the service port, with the server token
    def _ws(self) -> dict:
        return {"Authorization": f"token {self.person.token}"}

    async def export(self, n: int) -> int:
        """create, upload, submit one request; its id."""
        data = table(self.person.name, n)
        body = {
            "justification": "aggregate counts for the paper (load benchmark)",
            "files": [
                {
                    "path": f"outputs/counts_{n}.csv",
                    "description": "counts by region, all cells at least 10",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ],
        }
        headers = {**self._ws(), "Content-Type": "application/json"}
        r = await self.call(
            "create",
            self.direct + "api/exports",
            method="POST",
            body=json.dumps(body),
            headers=headers,
            expect=201,
        )
        created = json.loads(r.body)
        upload = f"http://127.0.0.1:{self.hub.service_port}{created['uploads'][0]['url']}"
        octet = {**self._ws(), "Content-Type": "application/octet-stream"}
        await self.call("upload", upload, method="PUT", body=data, headers=octet, expect=200)
        url = self.direct + f"api/exports/{created['id']}/submit"
        await self.call("submit", url, method="POST", body="{}", headers=headers, expect=200)
        self.stats.submitted.add(created["id"])
        return created["id"]

    async def download(self, rid: int, sha256: str) -> None:
        r = await self.call("status", self.direct + f"api/exports/{rid}", headers=self._ws(),
                            expect=200)  # fmt: skip
        number = json.loads(r.body)["number"]
        r = await self.call(
            "download",
            self.proxied + f"releases/{number}/files/1",
            headers={"Cookie": self.person.cookie},
            expect=200,
        )
        if hashlib.sha256(r.body).hexdigest() != sha256:
            self.stats.errors.append(f"download {self.person.name}: request {rid} bytes differ")
        self.stats.released.add(rid)

    # checker: the checking pages through the proxy, with the browser's cookies and xsrf
    def _form(self, fields: dict) -> dict:
        return {
            "method": "POST",
            "body": urlencode({"_xsrf": self.person.xsrf, **fields}),
            "headers": {
                "Cookie": self.person.cookie,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        }

    async def review(self, rid: int) -> str:
        """claim, view, approve one request; the outcome the service redirects with."""
        base = self.proxied + f"checking/requests/{rid}"
        await self.call("claim", base + "/claim", expect=302, **self._form({}))
        page = await self.call("view", base, headers={"Cookie": self.person.cookie}, expect=200)
        files = sorted(set(DECISION.findall(page.body.decode())))
        if not files:
            self.stats.errors.append(f"view {self.person.name}: request {rid} has no review form")
            raise CallFailed("view")
        form = {"version": "1"}
        for f in files:
            form[f"decision-{f}"] = "approve"
            form[f"comment-{f}"] = "aggregate counts, all cells at least 10"
        r = await self.call("review", base + "/review", expect=302, **self._form(form))
        return r.headers.get("Location", "").partition("done=")[2]

    def close(self) -> None:
        self.http.close()


def table(name: str, n: int) -> bytes:
    """A small CSV of counts (every cell well above the threshold), distinct per request."""
    rows = [f"{region},{100 + (i * 37 + n) % 400}" for i, region in
            enumerate(("north", "south", "east", "west", "midlands", "wales"))]  # fmt: skip
    return ("region,count\n" + "\n".join(rows) + f"\n# {name} request {n}\n").encode()


@dataclass
class Pool:
    """Submitted requests waiting for reviews: request id -> the checkers who took it."""

    needed: int
    waiting: dict[int, set[str]] = field(default_factory=dict)
    owners: dict[int, tuple[Person, str]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, rid: int, owner: Person, sha256: str) -> None:
        self.waiting[rid] = set()
        self.owners[rid] = (owner, sha256)
        self.changed.set()

    def take(self, checker: str) -> int | None:
        for rid, took in self.waiting.items():  # oldest first
            if checker not in took:
                took.add(checker)
                if len(took) >= self.needed:
                    del self.waiting[rid]
                return rid
        return None

    async def wait(self, until: float) -> None:
        self.changed.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), max(0.0, until - time.monotonic()))


async def checker_loop(client: Client, pool: Pool, until: float) -> None:
    while time.monotonic() < until:
        rid = pool.take(client.person.name)
        if rid is None:
            await pool.wait(until)
            continue
        try:
            outcome = await client.review(rid)
        except CallFailed:
            continue
        if outcome == "approved":
            owner, sha = pool.owners.pop(rid)
            owner.approved.append((rid, sha))


async def researcher_loop(client: Client, pool: Pool, until: float, think: float) -> None:
    n = 0
    while time.monotonic() < until:
        while client.person.approved and time.monotonic() < until:
            rid, sha = client.person.approved.pop(0)
            with suppress(CallFailed):
                await client.download(rid, sha)
        n += 1
        try:
            rid = await client.export(n)
        except CallFailed:
            continue
        pool.add(rid, client.person, hashlib.sha256(table(client.person.name, n)).hexdigest())
        if think:
            await asyncio.sleep(think)


async def quiet_phase(hub: Hub, researcher: Person, checkers: list[Person], n: int, needed: int):
    """``n`` whole cycles one call at a time, nothing else running: the calls alone."""
    stats = Stats()
    rc = Client(hub, researcher, stats)
    ccs = [Client(hub, c, stats) for c in checkers[:needed]]
    try:
        for i in range(n):
            try:
                rid = await rc.export(1000 + i)
                for cc in ccs:
                    outcome = await cc.review(rid)
                if outcome != "approved":
                    stats.errors.append(f"quiet: request {rid} ended {outcome!r}, not approved")
                    continue
                await rc.download(rid, hashlib.sha256(table(researcher.name, 1000 + i)).hexdigest())
            except CallFailed:
                continue
    finally:
        for c in (rc, *ccs):
            c.close()
    return stats


async def load_phase(hub, researchers, checkers, seconds: float, think: float, needed: int):
    stats = Stats()
    pool = Pool(needed)
    clients = [Client(hub, p, stats) for p in researchers + checkers]
    started = time.monotonic()
    until = started + seconds
    try:
        await asyncio.gather(
            *(researcher_loop(c, pool, until, think) for c in clients[: len(researchers)]),
            *(checker_loop(c, pool, until) for c in clients[len(researchers) :]),
        )
    finally:
        for c in clients:
            c.close()
    return stats, time.monotonic() - started


# ---- setting up: the hub, the registry, people ------------------------------------------------


@contextmanager
def database(kind: str, root: Path):
    """The registry URL: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{root}/registry.sqlite"
        return
    from sqlalchemy import create_engine, make_url

    base = os.environ.get("SDE_TEST_POSTGRES_URL", DEFAULT_PG)
    schema = f"load_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def record_workspaces(db_url: str, researchers: list[Person], project_of: dict[str, str]):
    """Each researcher's workspace, as the spawner records a started one, at its address."""
    from sde_spawner.db import make_engine, make_sessionmaker
    from sde_spawner.registry import ops

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s, s.begin():
            for p in researchers:
                ops.open_workspace(
                    s,
                    "load-benchmark",
                    username=p.name,
                    server_name=SERVER,
                    project=project_of[p.name],
                    container=f"load-benchmark-{p.name}",
                    address=p.address,
                    now=datetime.now(UTC).replace(tzinfo=None),
                    datasets=[],
                )
    finally:
        engine.dispose()


def registry_problems(db_url: str, phases: list[Stats]) -> list[str]:
    """What the registry holds against what the service answered: every request it said was
    submitted is still past draft, every downloaded one is released, one download row each."""
    from sqlalchemy import create_engine, text

    submitted = set().union(*(s.submitted for s in phases))
    released = set().union(*(s.released for s in phases))
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            states = dict(c.execute(text("SELECT id, state FROM export_request")).all())
            downloads = dict(
                c.execute(
                    text("SELECT request_id, count(*) FROM export_release_download GROUP BY 1")
                ).all()
            )
    finally:
        engine.dispose()
    problems = [f"request {rid}: submitted, but the registry has {states.get(rid)!r}"
                for rid in sorted(submitted) if states.get(rid) in (None, "draft")]  # fmt: skip
    problems += [f"request {rid}: downloaded, but {states.get(rid)!r} with "
                 f"{downloads.get(rid, 0)} download rows" for rid in sorted(released)
                 if states.get(rid) != "released" or downloads.get(rid) != 1]  # fmt: skip
    return problems


def log_in(hub: Hub, person: Person, researcher: bool) -> None:
    """The hub's login form, the service's OAuth login; a researcher's server token."""
    user = User(hub, person.name)
    if not user.logged_in:
        raise RuntimeError(f"{person.name} could not log in")
    page = "releases/" if researcher else "checking/"
    r = user.s.get(f"{hub.url}{SERVICE}{page}", timeout=120)
    r.raise_for_status()
    url = f"{hub.url}{SERVICE}checking/requests/1"
    person.cookie = requests.cookies.get_cookie_header(user.s.cookies, requests.Request("GET", url))
    for cookie in user.s.cookies:
        if cookie.name == "_xsrf" and cookie.path.startswith(SERVICE):
            person.xsrf = cookie.value
    if researcher:
        r = user.s.post(
            f"{hub.url}/hub/api/users/{person.name}/tokens",
            json={
                "expires_in": 7200,
                "note": "load benchmark workspace",
                "scopes": [f"access:servers!server={person.name}/{SERVER}"],
            },
            headers={"X-XSRFToken": user.xsrf},
            timeout=60,
        )
        r.raise_for_status()
        person.token = r.json()["token"]
    elif not person.xsrf:
        raise RuntimeError(f"no xsrf cookie of the service for {person.name}")
    user.s.close()


@dataclass
class Result:
    db: str
    quiet: Stats
    load: Stats
    seconds: float
    verify: str
    verify_ok: bool


def run_one(kind: str, args) -> Result:
    root = Path(tempfile.mkdtemp(prefix=f"sde-bench-load-{kind}-"))
    with database(kind, root) as db_url:
        hub = Hub(root, f"sdeload{uuid.uuid4().hex[:6]}")
        hub.db_url = db_url
        researchers = [Person(f"lr{i:03d}", f"127.0.1.{i + 1}") for i in range(args.researchers)]
        checkers = [Person(f"lc{j:02d}", f"127.0.2.{j + 1}") for j in range(args.checkers)]
        needed = min(2, args.checkers)
        projects = max(1, min(args.projects, args.researchers))
        project_of = {p.name: f"load{i % projects}" for i, p in enumerate(researchers)}
        t0 = time.perf_counter()
        hub.seed()
        for k in range(projects):
            members = [p.name for p in researchers if project_of[p.name] == f"load{k}"]
            hub.add_project(f"load{k}", members, checkers=tuple(c.name for c in checkers),
                            required_approvals=needed)  # fmt: skip
        try:
            hub.start()
            record_workspaces(db_url, researchers, project_of)
            with ThreadPoolExecutor(8) as pool:
                jobs = [pool.submit(log_in, hub, p, True) for p in researchers]
                jobs += [pool.submit(log_in, hub, c, False) for c in checkers]
                for job in jobs:
                    job.result()
            print(f"[{kind}] hub up, {len(researchers)} researchers in {projects} project(s), "
                  f"{len(checkers)} checkers logged in ({time.perf_counter() - t0:.0f} s)",
                  flush=True)  # fmt: skip
            quiet = asyncio.run(quiet_phase(hub, researchers[0], checkers, args.quiet, needed))
            load, seconds = asyncio.run(
                load_phase(hub, researchers, checkers, args.seconds, args.think, needed)
            )
        finally:
            hub.stop()
        res = hub.admin("audit", "verify")
        verify = (res.stdout + res.stderr).strip()
        load.errors += registry_problems(db_url, [quiet, load])
    result = Result(kind, quiet, load, seconds, verify, res.returncode == 0)
    if not (quiet.errors or load.errors) and result.verify_ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"[{kind}] kept for a look: {root}", flush=True)
    return result


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def report(r: Result) -> None:
    print(f"\n== {r.db}: {r.load.calls} calls in {r.seconds:.1f} s of load: "
          f"{r.load.calls / r.seconds:,.1f} calls/s; "
          f"{len(r.load.times.get('submit', []))} requests submitted, "
          f"{len(r.load.times.get('download', []))} releases downloaded")  # fmt: skip
    print(f"{'call':<9}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}   alone: {'n':>3}{'p50':>7}{'p95':>7}")
    for call in CALLS:
        n, q = len(r.load.times.get(call, [])), len(r.quiet.times.get(call, []))
        loaded = f"{call:<9}{n:>6}{ms(r.load.p(call, 50)):>9}{ms(r.load.p(call, 95)):>9}"
        print(f"{loaded}          {q:>3}{ms(r.quiet.p(call, 50)):>7}{ms(r.quiet.p(call, 95)):>7}")
    errors = r.quiet.errors + r.load.errors
    print(f"errors: {len(errors)}")
    for line in errors[:50]:
        print(f"  {line}")
    print(f"sde-admin audit verify: {r.verify}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--db",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="the registry's database (default: both, one after the other)",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="length of the load phase")
    p.add_argument("--researchers", type=int, default=50, help="simulated researchers")
    p.add_argument("--checkers", type=int, default=4, help="output checkers")
    p.add_argument("--projects", type=int, default=5, help="projects the researchers are in")
    p.add_argument("--quiet", type=int, default=20, help="whole cycles timed alone first")
    p.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="seconds a researcher pauses between requests (default 0: closed loop)",
    )
    args = p.parse_args(argv)
    kinds = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    results = [run_one(kind, args) for kind in kinds]
    for r in results:
        report(r)
    ratios = {}
    for r in results:
        alone, loaded = r.quiet.p("submit", 95), r.load.p("submit", 95)
        if alone and loaded:
            ratios[r.db] = loaded / alone
    print("\nsubmit p95 under load / alone: "
          + ", ".join(f"{db} {v:.2f}" for db, v in ratios.items()))  # fmt: skip
    failed = [r.db for r in results if r.quiet.errors or r.load.errors or not r.verify_ok]
    if failed:
        print(f"FAILED on {', '.join(failed)}: errors or audit verify not OK")
    print(f"ratio={max(ratios.values()):.2f}" if ratios else "ratio=nan")
    return 1 if failed or not ratios else 0


if __name__ == "__main__":
    sys.exit(main())
