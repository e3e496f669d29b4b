"""The read-only registry overview over real HTTP (tornado, fake hub): administrators see
projects, agreements with coming dates, members and recent lifecycle actions, escaped; anyone
else gets 403 and the refusal is audited."""

from __future__ import annotations

import contextlib
from datetime import date

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.testing import bind_unused_port
from tornado.web import create_signed_value

from sde_spawner import audit
from sde_spawner.checking.testing import FakeHubOAuth, browser_model
from sde_spawner.db import open_db
from sde_spawner.registry import ops
from sde_spawner.registry.breaches import record_breach
from sde_spawner.services import admin_pages
from sde_spawner.services.app import ServiceSettings, http_server, make_app

PREFIX = "/services/sde/"


@pytest.fixture
def db(tmp_path):
    sm = open_db(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    ops.perform(sm, ops.add_person, "admin", "alice")
    ops.perform(sm, ops.add_project, "admin", "study-a", title="A <b>bold</b> title")
    ops.perform(
        sm, ops.add_agreement, "admin", "study-a", "DSA-1", signed="2026-01-01",
        start="2026-01-01", end="2026-12-20", delete_by="2027-01-31",
    )  # fmt: skip
    ops.perform(sm, ops.add_member, "admin", "study-a", "alice", "researcher")
    ops.perform(sm, record_breach, "dpo", "alice", "study-a", what="x", sanction="suspension")
    return sm


@contextlib.asynccontextmanager
async def serving(tmp_path):
    """The sde service app on a loopback port; yields ``get(user)`` for the admin page."""
    settings = ServiceSettings.from_env(prefix=PREFIX, bind_ip="127.0.0.1", port=0,
                                        db_url=f"sqlite:///{tmp_path}/registry.sqlite",
                                        state_dir=str(tmp_path))  # fmt: skip
    auth = FakeHubOAuth({f"oauth-{u}": browser_model(u) for u in ("admin", "alice")})
    app = make_app(settings, hub_auth=auth)
    sock, port = bind_unused_port()
    server = http_server(app)
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)

    async def get(user):
        cookie = create_signed_value(app.settings["cookie_secret"], "service-sde", f"oauth-{user}")
        req = HTTPRequest(
            f"http://127.0.0.1:{port}{PREFIX}admin/",
            headers={"Cookie": f"service-sde={cookie.decode()}"},
            follow_redirects=False,
        )
        return await client.fetch(req, raise_error=False)

    try:
        yield get
    finally:
        server.stop()
        client.close()
        await server.close_all_connections()
        if "_pool" in auth._trait_values:  # HubOAuth's background loop for sync lookups
            auth._pool.submit(auth._thread_loop.close).result()
            auth._pool.shutdown()


def test_overview_orders_agreements_by_coming_end(db):
    with db() as s:
        data = admin_pages.overview(s, date(2026, 12, 1))
    (a,) = data["agreements"]
    assert (a["days_to_end"], a["days_to_deletion"]) == (19, 61)
    assert data["members"] == [
        {"project": "study-a", "username": "alice", "role": "researcher", "status": "suspended"}
    ]
    assert [e["action"] for e in data["events"]][:2] == ["person.suspended", "breach.recorded"]


async def test_admins_see_the_overview_escaped(tmp_path, db, monkeypatch):
    monkeypatch.setenv("SDE_AUDIT_ADMINS", "admin")
    async with serving(tmp_path) as get:
        r = await get("admin")
    assert r.code == 200
    page = r.body.decode()
    assert "A &lt;b&gt;bold&lt;/b&gt; title" in page and "<b>bold" not in page
    assert "<td>DSA-1</td>" in page and "<td>2026-12-20</td>" in page
    assert "<td>breach.recorded</td>" in page and "<td>alice</td>" in page
    assert "<script" not in page
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_others_are_refused_and_the_refusal_audited(tmp_path, db, monkeypatch):
    monkeypatch.setenv("SDE_AUDIT_ADMINS", "admin")
    async with serving(tmp_path) as get:
        r = await get("alice")
    assert r.code == 403
    with db() as s:
        ev = audit.query(s)[-1]
    assert (ev.action, ev.actor, ev.outcome) == ("admin.page.refused", "alice", "denied")
