"""Faults under the service's storage: its PostgreSQL restarted and killed during work, and the
disk under the blob store full during uploads.

Both run the real service app (:class:`tests.faults_support.ServiceThread`: every handler, the
real database and blob store) on loopback, called over HTTP as a workspace calls it. The
PostgreSQL is one of the test's own (``initdb`` into a temporary directory, its own port), never
the shared server; the full disk is a tmpfs of the test's own mounted as the blob store.

What is shown:

* After a PostgreSQL restart every request works at once, although the pool held connections
  to the server that is gone (checked with a connection of the test's own:
  it fails). That is ``pool_pre_ping`` (:func:`sde_spawner.db.make_engine`).
* While PostgreSQL is down (killed with ``kill -9`` in the middle of an upload) requests answer
  503 with a reason saying what to do and ``Retry-After``, not a bare 500; nothing of them is
  saved (no request row, no file marked uploaded); sent again once it is back they work.
* An upload that runs out of disk answers 507 with the reason, leaves no temporary and no
  row, is audited as denied; with the space still short a new attempt is refused up front
  (413, the free space of the *blob store's* filesystem), and once space is freed it works.
* ``sde-admin audit verify`` passes afterwards.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.faults_support import (
    OwnPostgres,
    ServiceThread,
    Tmpfs,
    admin,
    can_run_own_postgres,
)
from tests.support import wait_for

pytestmark = pytest.mark.postgres

TOKEN = "ws-token-alice"
MiB = 1024 * 1024
SMALL = b"region,count\nnorth,120\nsouth,130\n"
BIG = b"row,count\n" + b"north,120\n" * (6 * MiB // 10)  # about 6 MiB


def seed(db_url: str) -> None:
    """The schema by its migrations, the test people and projects, alice's running workspace."""
    from sde_spawner import db
    from sde_spawner.checking import testing

    db.upgrade(db_url)
    engine = db.make_engine(db_url)
    try:
        Session = db.make_sessionmaker(engine)
        testing.seed(Session)
        testing.open_workspace(Session, "alice", testing.PROJECT)
    finally:
        engine.dispose()


def service_for(db_url: str, state_dir, **settings) -> ServiceThread:
    from sde_spawner.checking import testing

    tokens = {TOKEN: testing.server_token_model("alice", testing.PROJECT)}
    return ServiceThread(db_url, state_dir, tokens, **settings).start()


class Workspace:
    """alice's workspace calling the export API with its server token."""

    def __init__(self, service: ServiceThread):
        self.url = service.url
        self.port = service.port
        self.auth = {"Authorization": f"token {TOKEN}"}

    def call(self, method: str, path: str, body=None) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.auth, json=body, timeout=60)

    def create(self, path: str, data: bytes) -> requests.Response:
        body = {
            "justification": "fault test: aggregate output for the paper",
            "files": [
                {
                    "path": path,
                    "description": "aggregate output",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ],
        }
        return self.call("POST", "api/exports", body)

    def upload(self, created: dict, data: bytes) -> requests.Response:
        url = f"http://127.0.0.1:{self.port}{created['uploads'][0]['url']}"
        return requests.put(
            url,
            data=data,
            headers={**self.auth, "Content-Type": "application/octet-stream"},
            timeout=60,
        )

    def upload_in_two(self, created: dict, data: bytes, between) -> tuple[int, dict, dict]:
        """PUT half the bytes, run ``between()``, send the rest; (status, body, headers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest("PUT", created["uploads"][0]["url"])
            for k, v in {**self.auth, "Content-Type": "application/octet-stream",
                         "Content-Length": str(len(data))}.items():  # fmt: skip
                conn.putheader(k, v)
            conn.endheaders()
            conn.send(data[: len(data) // 2])
            between()
            conn.send(data[len(data) // 2 :])
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"null"), dict(r.getheaders())
        finally:
            conn.close()


def rows(db_url: str, sql: str) -> list:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def uploaded_files(db_url: str) -> list:
    return rows(db_url, "SELECT path, blob_key IS NOT NULL FROM export_file ORDER BY id")


def temporaries(state_dir) -> list:
    root = state_dir / "exports" / "blobs"
    return sorted(root.glob(".upload-*")) if root.is_dir() else []


def assert_audit_verifies(db_url: str, state_dir) -> None:
    res = admin(db_url, "audit", "verify", env={"SDE_STATE_DIR": str(state_dir)})
    assert res.returncode == 0 and res.stdout.startswith("OK"), res.stdout + res.stderr


@pytest.fixture
def own_postgres():
    why = can_run_own_postgres()
    if why:
        pytest.skip(why)
    pg = OwnPostgres().init()
    yield pg
    pg.remove()


def test_postgres_restarted_and_killed_under_the_service(own_postgres, tmp_path):
    pg = own_postgres
    seed(pg.url)
    service = service_for(pg.url, tmp_path)
    try:
        ws = Workspace(service)
        # work before the fault; several requests at once so the pool holds several connections
        first = ws.create("before.csv", SMALL)
        assert first.status_code == 201, first.text
        assert ws.upload(first.json(), SMALL).status_code == 200
        parallel = [threading.Thread(target=ws.call, args=("GET", "api/exports")) for _ in range(4)]
        for t in parallel:
            t.start()
        for t in parallel:
            t.join()

        # the probe: a pooled connection of the test's own, opened before the restart
        probe = create_engine(pg.url, pool_pre_ping=False)
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
        pg.restart()
        with pytest.raises(OperationalError), probe.connect() as conn:
            conn.execute(text("SELECT 1"))  # the restart did cut pooled connections
        probe.dispose()

        # every request right after the restart works the first time
        for _ in range(6):
            listed = ws.call("GET", "api/exports")
            assert listed.status_code == 200, listed.text
        second = ws.create("after-restart.csv", SMALL)
        assert second.status_code == 201, second.text
        assert ws.upload(second.json(), SMALL).status_code == 200

        # PostgreSQL killed (kill -9) in the middle of an upload
        third = ws.create("mid-upload.csv", BIG)
        assert third.status_code == 201, third.text

        def crash():  # once the service is writing the bytes
            wait_for(lambda: temporaries(tmp_path), 30, "the upload to be writing")
            pg.kill()

        status, body, headers = ws.upload_in_two(third.json(), BIG, crash)
        assert status == 503, body
        assert "database is unavailable" in body["message"], body
        assert "send it again" in body["message"], body
        assert headers.get("Retry-After") == "5", headers

        # while it is down: a clear 503 for a new request too, nothing half-done
        down = ws.create("while-down.csv", SMALL)
        assert down.status_code == 503, down.text
        assert "database is unavailable" in down.json()["message"]
        assert down.headers.get("Retry-After") == "5"
        # the workspace's audit shipper too: 503 and Retry-After (it keeps the batch), no 500
        shipped = ws.call(
            "POST", "api/audit/events", {"events": [{"action": "file.opened", "details": {}}]}
        )
        assert shipped.status_code == 503, shipped.text
        assert "database is unavailable" in shipped.json()["message"]
        assert shipped.headers.get("Retry-After") == "5"

        pg.start()
        assert not temporaries(tmp_path)
        assert uploaded_files(pg.url) == [
            ("before.csv", True),
            ("after-restart.csv", True),
            ("mid-upload.csv", False),  # the upload that met the crash is not taken
        ]
        assert rows(pg.url, "SELECT count(*) FROM export_request") == [(3,)]

        # sent again, both work
        retried = ws.upload(third.json(), BIG)
        assert retried.status_code == 200, retried.text
        again = ws.create("while-down.csv", SMALL)
        assert again.status_code == 201, again.text
        for rid in (first.json()["id"], third.json()["id"]):
            assert ws.call("POST", f"api/exports/{rid}/submit").status_code == 200
        states = rows(pg.url, "SELECT state FROM export_request ORDER BY id")
        assert states == [("submitted",), ("draft",), ("submitted",), ("draft",)]
        for blob in (tmp_path / "exports" / "blobs").glob("??/*"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    finally:
        service.close()
    assert_audit_verifies(pg.url, tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = Tmpfs(tmp_path / "exports" / "blobs", "20m").mount()
    yield disk
    disk.remove()


def test_an_upload_that_fills_the_blob_store_is_refused_whole_and_can_be_sent_again(
    small_disk, tmp_path
):
    db_url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    seed(db_url)
    # the database and keys are on the big disk; the reserve is for the state directory's
    # filesystem, so none here: the tmpfs is the only thing that fills
    service = service_for(db_url, tmp_path, limit_min_free_bytes=0)
    filler = small_disk.path / "other-tenant.bin"
    try:
        ws = Workspace(service)
        kept = ws.create("kept.csv", BIG)
        assert kept.status_code == 201 and ws.upload(kept.json(), BIG).status_code == 200

        created = ws.create("table.csv", BIG + b"south,130\n")
        assert created.status_code == 201, created.text
        data = BIG + b"south,130\n"

        def fill_the_disk():  # something else takes the space while the upload streams in
            wait_for(lambda: temporaries(tmp_path), 30, "the upload to be writing")
            with filler.open("wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                except OSError:
                    pass

        status, body, _ = ws.upload_in_two(created.json(), data, fill_the_disk)
        assert status == 507, body
        assert body["message"].startswith("the export store is out of disk space"), body
        wait_for(lambda: not temporaries(tmp_path), 10, "the partial upload to be removed")
        assert uploaded_files(db_url)[-1] == ("table.csv", False)

        # still no room: refused before a byte is written, with the reason
        filler.write_bytes(b"\0" * (12 * MiB))
        refused = ws.upload(created.json(), data)
        assert refused.status_code == 413, refused.text
        assert "bytes of space left" in refused.json()["message"]
        assert not temporaries(tmp_path)

        filler.unlink()  # space freed: the same upload now goes through
        retried = ws.upload(created.json(), data)
        assert retried.status_code == 200, retried.text
        assert uploaded_files(db_url) == [("kept.csv", True), ("table.csv", True)]
        for blob in small_disk.path.glob("??/*"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        denied = rows(
            db_url,
            "SELECT reason FROM audit_event WHERE action = 'export.file.uploaded' "
            "AND outcome = 'denied' ORDER BY seq",
        )
        assert len(denied) == 2, denied  # both refusals are on the record, with their reasons
        assert denied[0][0].startswith("the export store is out of disk space"), denied
        assert "bytes of space left" in denied[1][0], denied
    finally:
        service.close()
    assert_audit_verifies(db_url, tmp_path)


@pytest.mark.docker
def test_the_hub_and_its_service_through_a_postgres_restart(own_postgres, tmp_path, docker_client):
    """The real hub (``jupyterhub -f jupyterhub_config.py``, its managed ``sde`` service)
    with the registry and audit trail on the test's own PostgreSQL: pages work at once after
    a restart, say what is wrong while it is down, and work again when it is back."""
    import uuid

    from sde_spawner import firewall
    from tests.support import Hub, User, close_sessions, remove_prefixed

    pg = own_postgres
    hub = Hub(tmp_path, f"sdet{uuid.uuid4().hex[:6]}")
    hub.db_url = pg.url
    hub.seed()
    hub.start()
    try:
        chris = User(hub, "chris")
        assert chris.logged_in
        page = f"{hub.url}/services/sde/checking/"
        assert chris.s.get(page, timeout=60).status_code == 200  # the service's own login

        pg.restart()
        for _ in range(4):  # the first requests after the restart, on the pooled connections
            r = chris.s.get(page, timeout=60)
            assert r.status_code == 200, r.text[-500:]
            assert chris.api("GET", "/user").status_code == 200

        pg.kill()
        down = chris.s.get(page, timeout=60)
        assert down.status_code == 503, down.text[-500:]
        assert "registry database is unavailable" in down.text, down.text[-1000:]

        pg.start()
        wait_for(lambda: chris.s.get(page, timeout=60).status_code == 200, 30, "the page back")
        again = User(hub, "dana")  # a login, which reads the registry, works again too
        assert again.logged_in
    finally:
        close_sessions()
        hub.stop()
        remove_prefixed(docker_client, hub.prefix)
        firewall.revoke(hub.hub_port)
        firewall.revoke(hub.service_port)
    assert_audit_verifies(pg.url, tmp_path)
