"""Faults: the ``sde`` service killed (SIGKILL) in the middle of an upload, a review and a
release download, against the real hub, proxy and workspace.

The hub restarts its managed service by itself. Afterwards nothing is lost or half-written:
the interrupted upload left no temporary behind and can be sent again, the claimed review
is still the checker's and counts once, the release downloads whole and both download
attempts are in the audit trail, every stored blob still hashes to its name, and
``sde-admin audit verify`` passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import time

import psutil
import pytest
import requests
from sqlalchemy import create_engine, text

from tests.docker.test_egress_workspace import alice, alice_ws  # noqa: F401 (fixtures)
from tests.support import User, wait_for

pytestmark = pytest.mark.docker

SERVICE = "/services/sde/"
MiB = 1024 * 1024
#: as IN_WORKSPACE makes it: big enough to be still on its way when the service dies
LINE = b"The cohort was followed for five years; outcomes were compared across regions.\n"
RELEASED = LINE * (16 * MiB // len(LINE))


def service_process(hub) -> psutil.Process:
    """The hub's managed ``sde`` service (a child process of the hub this test run started)."""
    for child in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            if "sde_spawner.services" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no sde service process under the hub")


#: Runs inside alice's workspace (the service takes her server token from her container only).
IN_WORKSPACE = r"""
import hashlib, http.client, json, os, sys, urllib.parse, urllib.request, urllib.error
MiB = 1024 * 1024
LINE = b"The cohort was followed for five years; outcomes were compared across regions.\n"
DATA = {"released": LINE * (16 * MiB // len(LINE)),
        "upload": b"row,count\n" + b"north,120\n" * (12 * MiB // 10),
        "small": b"region,count\nnorth,120\nsouth,130\n"}
base = os.environ["SDE_SERVICE_URL"]
auth = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
cmd, arg = sys.argv[1], json.loads(sys.argv[2])

def call(method, url, data=None, ctype="application/json"):
    req = urllib.request.Request(urllib.parse.urljoin(base, url), data=data, method=method,
                                 headers={"Content-Type": ctype, **auth})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")

if cmd == "create":
    data = DATA[arg["data"]]
    body = {"justification": "fault test: aggregate output for the paper",
            "files": [{"path": arg["path"], "description": "aggregate output",
                       "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}
    print(json.dumps(call("POST", "api/exports", json.dumps(body).encode())))
elif cmd == "upload":
    print(json.dumps(call("PUT", arg["url"], DATA[arg["data"]], "application/octet-stream")))
elif cmd == "partial":  # declare all the bytes, send half, wait for the connection to end
    data = DATA[arg["data"]]
    u = urllib.parse.urlsplit(urllib.parse.urljoin(base, arg["url"]))
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.putrequest("PUT", u.path)
    for k, v in {**auth, "Content-Type": "application/octet-stream",
                 "Content-Length": str(len(data))}.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(data[: len(data) // 2])
    try:
        conn.sock.recv(1)
    except OSError:
        pass
else:
    print(json.dumps(call(arg.get("method", "GET"), arg["url"],
                          arg["body"].encode() if arg.get("body") is not None else None)))
"""


def in_workspace(container, cmd: str, **arg):
    res = container.exec_run(["python3", "-c", IN_WORKSPACE, cmd, json.dumps(arg)])
    assert res.exit_code == 0, res.output.decode()[-2000:]
    return json.loads(res.output.decode().strip().splitlines()[-1])


class WorkspaceAPI:
    """The service's export API as alice's workspace calls it, from inside her container."""

    def __init__(self, container):
        self.ws = container

    def create(self, path: str, data: str) -> dict:
        status, created = in_workspace(self.ws, "create", path=path, data=data)
        assert status == 201, created
        return created

    def upload(self, created: dict, data: str) -> None:
        url = created["uploads"][0]["url"]
        status, out = in_workspace(self.ws, "upload", url=url, data=data)
        assert status == 200, out

    def submit(self, rid: int) -> None:
        status, out = in_workspace(self.ws, "call", method="POST",
                                   url=f"api/exports/{rid}/submit", body="")  # fmt: skip
        assert status == 200, out

    def get(self, rid: int) -> dict:
        status, out = in_workspace(self.ws, "call", url=f"api/exports/{rid}")
        assert status == 200, out
        return out

    def start_partial_upload(self, created: dict, data: str) -> None:
        """A PUT that declares all the bytes and sends half, left open in the background."""
        self.ws.exec_run(
            ["python3", "-c", IN_WORKSPACE, "partial",
             json.dumps({"url": created["uploads"][0]["url"], "data": data})],
            detach=True,
        )  # fmt: skip


def page_form(checker: User, hub, rid: int) -> tuple[str, list[str]]:
    page = checker.s.get(f"{hub.url}{SERVICE}checking/requests/{rid}", timeout=180)
    assert page.status_code == 200, page.text[-500:]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    return xsrf, sorted(set(re.findall(r'name="decision-(\d+)"', page.text)))


def claim(checker: User, hub, rid: int) -> None:
    xsrf, _ = page_form(checker, hub, rid)
    r = checker.s.post(
        f"{hub.url}{SERVICE}checking/requests/{rid}/claim", data={"_xsrf": xsrf}, timeout=180
    )
    assert r.status_code == 200, r.text[-500:]


def approve(checker: User, hub, rid: int) -> None:
    xsrf, files = page_form(checker, hub, rid)
    assert files, "the review form lists no file: not claimed?"
    form = {"_xsrf": xsrf, "version": "1"}
    for f in files:
        form[f"decision-{f}"] = "approve"
        form[f"comment-{f}"] = "aggregate only, checked in the preview"
    r = checker.s.post(f"{hub.url}{SERVICE}checking/requests/{rid}/review", data=form, timeout=180)
    assert r.status_code == 200, r.text[-500:]


def state_of(hub, rid: int) -> tuple[str, int | None]:
    engine = create_engine(hub.db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT state, number FROM export_request WHERE id = :id"), {"id": rid}
            ).one()
        return row.state, row.number
    finally:
        engine.dispose()


def temporaries(hub) -> list:
    root = hub.state_dir / "exports" / "blobs"
    return sorted(root.glob(".upload-*")) if root.is_dir() else []


def test_killing_the_service_mid_upload_review_and_download_loses_nothing(hub, alice, alice_ws):  # noqa: F811
    api = WorkspaceAPI(alice_ws)
    chris, dana = User(hub, "chris"), User(hub, "dana")
    assert chris.logged_in and dana.logged_in
    for checker in (chris, dana):  # the service's own login (HubOAuth) before anything else
        assert checker.s.get(f"{hub.url}{SERVICE}checking/", timeout=60).status_code == 200

    # a release to download: requested, uploaded, submitted, approved by two checkers
    released = api.create("summary.txt", "released")
    api.upload(released, "released")
    api.submit(released["id"])
    for checker in (chris, dana):
        claim(checker, hub, released["id"])
        approve(checker, hub, released["id"])
    assert state_of(hub, released["id"])[0] == "approved"
    number = state_of(hub, released["id"])[1]
    alice_web = User(hub, "alice")
    assert alice_web.s.get(f"{hub.url}{SERVICE}releases/", timeout=60).status_code == 200
    download_url = f"{hub.url}{SERVICE}releases/{number}/files/1"

    # a review under way: submitted, claimed by chris, not yet decided
    reviewed = api.create("counts.csv", "small")
    api.upload(reviewed, "small")
    api.submit(reviewed["id"])
    claim(chris, hub, reviewed["id"])

    # an upload under way: half of the declared bytes sent, the rest still to come
    interrupted = api.create("table.csv", "upload")
    api.start_partial_upload(interrupted, "upload")
    wait_for(
        lambda: any(t.stat().st_size > MiB for t in temporaries(hub)),
        60,
        "the service to be writing the upload",
    )
    # a download under way: the first MiB read, the rest not yet
    download = alice_web.s.get(download_url, stream=True, timeout=60)
    assert download.status_code == 200, download.text[:300]
    got = download.raw.read(MiB)
    assert len(got) == MiB

    service = service_process(hub)
    service.send_signal(signal.SIGKILL)
    service.wait(30)
    killed_at = time.monotonic()

    with contextlib.suppress(Exception):  # urllib3 reports a cut connection in several ways
        got += download.raw.read()
    download.close()
    assert len(got) < len(RELEASED), "the download finished before the kill: not mid-transfer"

    # the hub restarts its service by itself
    wait_for(
        lambda: (
            service_process(hub).pid != service.pid
            and requests.get(f"{hub.url}{SERVICE}api/health", timeout=2).status_code == 200
        ),
        120,
        "the hub to restart the sde service",
    )
    restarted_after = time.monotonic() - killed_at

    # nothing half-written: no upload temporary, every blob hashes to its name
    wait_for(lambda: not temporaries(hub), 30, "the interrupted upload to be cleared")
    for blob in (hub.state_dir / "exports" / "blobs").glob("??/*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    swept = hub.events(action="export.store.swept")
    assert any("interrupted" in (e.get("reason") or "") for e in swept), swept

    # the interrupted upload: not taken, and it can be sent again whole
    assert api.get(interrupted["id"])["files"][0]["uploaded"] is False
    api.upload(interrupted, "upload")
    api.submit(interrupted["id"])
    assert state_of(hub, interrupted["id"])[0] == "submitted"

    # the review: still chris's claim; chris and dana decide it, each counted once
    approve(chris, hub, reviewed["id"])
    assert state_of(hub, reviewed["id"])[0] == "in_review"
    claim(dana, hub, reviewed["id"])
    approve(dana, hub, reviewed["id"])
    assert state_of(hub, reviewed["id"])[0] == "approved"

    # the release: whole this time, and both attempts are on the record
    again = alice_web.s.get(download_url, timeout=120)
    assert again.status_code == 200
    assert hashlib.sha256(again.content).digest() == hashlib.sha256(RELEASED).digest()
    downloads = [
        e
        for e in hub.events(action="export.release.downloaded", outcome="allowed")
        if e["details"].get("request") == released["id"]
    ]
    assert len(downloads) == 2, json.dumps(downloads)[:2000]

    verify = hub.admin("audit", "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("OK"), verify.stdout
    print(f"the hub restarted the killed service after {restarted_after:.1f} s")
