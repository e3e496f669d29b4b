"""Usage per person and project: the metering arithmetic, the report over a period, the CSV
export from ``sde-admin usage`` and from the administrators' page over real HTTP (tornado,
fake hub), which anyone else is refused with an audit event."""

from __future__ import annotations

import contextlib
from datetime import date, datetime, timedelta

import pytest
from click.testing import CliRunner
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.testing import bind_unused_port
from tornado.web import create_signed_value

from sde_spawner import audit, usage
from sde_spawner.checking.testing import FakeHubOAuth, browser_model
from sde_spawner.cli import main
from sde_spawner.db import open_db
from sde_spawner.registry.models import Workspace, WorkspaceUsage
from sde_spawner.services.app import ServiceSettings, http_server, make_app

PREFIX = "/services/sde/"
T0 = datetime(2026, 11, 2, 9, 0)
GiB = 1024**3
CSV = (
    "person,project,workspaces,workspace_hours,cpu_hours,memory_gib_hours,memory_peak_gib\n"
    "alice,p1,2,3.0,0.5,3.0,2.0\n"
    "bob,p1,1,1.0,0.0,0.0,0.0\n"
)


def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'registry.sqlite'}"


@pytest.fixture
def db(tmp_path):
    sm = open_db(url(tmp_path))
    with sm() as s, s.begin():
        rooms = [("alice", "p1", T0, T0 + timedelta(hours=1)),
                 ("alice", "p1", T0 + timedelta(days=1), T0 + timedelta(days=1, hours=2)),
                 ("bob", "p1", T0 + timedelta(days=2), T0 + timedelta(days=2, hours=1)),
                 ]  # fmt: skip
        for i, (who, project, start, stop) in enumerate(rooms):
            s.add(Workspace(id=i + 1, username=who, server_name=project, project_slug=project,
                            container=f"c{i}", started_at=start, stopped_at=stop))  # fmt: skip
    with sm() as s, s.begin():
        # alice's first room: 1 GiB for an hour in two samples of 30 min, 1800 CPU seconds
        usage.record(s, 1, cpu=600.0, memory=GiB, now=T0 + timedelta(minutes=30), interval=1800)
        usage.record(s, 1, cpu=1800.0, memory=GiB, now=T0 + timedelta(minutes=60), interval=1800)
        # her second: 2 GiB for one hour (one sample), no CPU to speak of
        usage.record(s, 2, cpu=0.0, memory=2 * GiB, now=T0 + timedelta(days=1), interval=3600)
    return sm


def test_metering_keeps_the_counter_and_integrates_memory(db):
    with db() as s, s.begin():
        row = s.get(WorkspaceUsage, 1)
        assert (row.cpu_seconds, row.memory_byte_seconds, row.samples) == (1800.0, GiB * 3600, 2)
        # a counter read lower (never, but) does not undo CPU time; a long gap (the service
        # was down) counts as at most two intervals, not as memory nobody measured
        later = T0 + timedelta(hours=10)
        usage.record(s, 1, cpu=5.0, memory=GiB, now=later, interval=1800)
        assert (row.cpu_seconds, row.memory_byte_seconds) == (1800.0, GiB * 3600 + GiB * 3600)
        assert row.memory_peak_bytes == GiB


def test_memory_in_use_leaves_out_the_reclaimable_cache():
    v1 = {"usage": 100, "stats": {"total_inactive_file": 30, "cache": 50}}
    v2 = {"usage": 100, "stats": {"inactive_file": 40}}
    assert [usage.memory_in_use(m) for m in (v1, v2, {})] == [70, 60, 0]


def test_the_report_per_person_and_project_and_its_csv(db):
    with db() as s:
        rows = usage.report(s)
        assert usage.to_csv(rows) == CSV
        only_bob = usage.report(s, since=date(2026, 11, 4))
        assert [(r.person, r.workspaces) for r in only_bob] == [("bob", 1)]
        assert usage.report(s, until=date(2026, 11, 1)) == []


def test_sde_admin_usage_csv(tmp_path, db):
    res = CliRunner().invoke(main, ["--db", url(tmp_path), "usage", "--csv"])
    assert res.exit_code == 0, res.output
    assert res.output == CSV
    res = CliRunner().invoke(main, ["--db", url(tmp_path), "usage", "--since", "2026-11-04"])
    assert res.exit_code == 0 and res.output.splitlines()[1].split()[:3] == ["bob", "p1", "1"]
    res = CliRunner().invoke(main, ["--db", url(tmp_path), "usage", "--since", "soon"])
    assert res.exit_code != 0 and "not a date (YYYY-MM-DD): 'soon'" in res.output


@contextlib.asynccontextmanager
async def serving(tmp_path):
    settings = ServiceSettings.from_env(prefix=PREFIX, bind_ip="127.0.0.1", port=0,
                                        db_url=url(tmp_path), state_dir=str(tmp_path),
                                        admins=["admin"])  # fmt: skip
    auth = FakeHubOAuth({f"oauth-{u}": browser_model(u) for u in ("admin", "alice")})
    app = make_app(settings, hub_auth=auth)
    sock, port = bind_unused_port()
    server = http_server(app)
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)

    async def get(user, path):
        cookie = create_signed_value(app.settings["cookie_secret"], "service-sde", f"oauth-{user}")
        req = HTTPRequest(f"http://127.0.0.1:{port}{PREFIX}{path}",
                          headers={"Cookie": f"service-sde={cookie.decode()}"},
                          follow_redirects=False)  # fmt: skip
        return await client.fetch(req, raise_error=False)

    try:
        yield get
    finally:
        server.stop()
        client.close()
        await server.close_all_connections()
        auth.close()


async def test_admins_see_usage_and_download_the_csv(tmp_path, db):
    async with serving(tmp_path) as get:
        page = await get("admin", "admin/usage")
        csv = await get("admin", "admin/usage.csv")
        since = await get("admin", "admin/usage.csv?since=2026-11-04")
        bad = await get("admin", "admin/usage?since=yesterday")
    assert page.code == 200
    assert "<td>alice</td><td>p1</td><td>2</td><td>3.0</td>" in page.body.decode()
    assert 'href="usage.csv"' in page.body.decode()
    assert csv.code == 200 and csv.headers["Content-Type"].startswith("text/csv")
    assert 'filename="usage.csv"' in csv.headers["Content-Disposition"]
    assert csv.body.decode() == CSV
    assert since.body.decode().splitlines()[1:] == ["bob,p1,1,1.0,0.0,0.0,0.0"]
    assert bad.code == 400 and b"not a date" in bad.body


async def test_others_are_refused_usage_and_the_refusal_audited(tmp_path, db):
    async with serving(tmp_path) as get:
        for path in ("admin/usage", "admin/usage.csv"):
            r = await get("alice", path)
            assert r.code == 403 and b"for administrators only" in r.body and b"p1" not in r.body
    with db() as s:
        refused = audit.query(s, action="usage.page.refused")
    assert [(e.actor, e.outcome) for e in refused] == [("alice", "denied")] * 2


def test_revision_0010_builds_the_tables_of_the_model_and_downgrades(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine, inspect

    from sde_spawner.db import Base, alembic_config, upgrade

    def columns(engine, tables=("project", "workspace_usage")):
        insp = inspect(engine)
        return {
            t: {c["name"]: (type(c["type"]).__name__.upper(), c["nullable"])
                for c in insp.get_columns(t)}
            for t in tables
            if insp.has_table(t)
        }  # fmt: skip

    migrated = f"sqlite:///{tmp_path / 'migrated.sqlite'}"
    upgrade(migrated, "0012")
    modelled = create_engine(f"sqlite:///{tmp_path / 'modelled.sqlite'}")
    Base.metadata.create_all(
        modelled,
        tables=[Base.metadata.tables[t] for t in ("project", "workspace", "workspace_usage")],
    )
    got = columns(create_engine(migrated))
    assert got == columns(modelled)
    assert got["project"]["idle_timeout"] == ("INTEGER", True)
    command.downgrade(alembic_config(migrated), "0011")
    after = columns(create_engine(migrated))
    assert set(after) == {"project"} and "idle_timeout" not in after["project"]
