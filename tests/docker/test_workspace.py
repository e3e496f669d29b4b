"""The workspace journey against a real hub, proxy and Docker engine.

An approved researcher starts their locked room from the spawn form; everyone else is refused
with a readable reason and an audit event; nothing half-created is left behind; the room
survives a hub restart; stopping it removes container and network but keeps the home volume.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import re

import pytest
import requests

from sde_spawner.containers import workspace_names
from tests.conftest import NOTEBOOK_IMAGE
from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"


def names(hub, user, project=PROJECT):
    return workspace_names(user, project, hub.prefix)


def run_py(container, code: str) -> tuple[int, str]:
    """Run Python inside the workspace as its own user (uid 1000, no capabilities)."""
    res = container.exec_run(["python3", "-c", code], demux=False)
    return res.exit_code, res.output.decode(errors="replace")


@pytest.fixture(scope="module")
def alice(hub):
    u = User(hub, "alice")
    assert u.logged_in, hub.log_tail()
    u.ensure_stopped(PROJECT)
    return u


@pytest.fixture(scope="module")
def alice_ws(hub, alice, docker_client):
    r = alice.spawn_with_form(PROJECT, PROJECT)
    assert r.status_code == 302, r.text[-2000:]
    alice.wait_ready(PROJECT)
    return docker_client.containers.get(names(hub, "alice").container)


def test_form_offers_only_eligible_projects_with_reasons_for_the_rest(alice):
    page = alice.spawn_page(PROJECT).text
    radios = re.findall(r'name="project" value="([^"]+)"', page)
    assert radios == [PROJECT]
    assert re.search(
        r"<strong>cardio-audit</strong>: agreement DSA-003 ended \d{4}-\d\d-\d\d", page
    )


def test_workspace_answers_through_the_proxy(alice, alice_ws):
    r = alice.workspace_get(PROJECT, "api/status")
    assert r.status_code == 200, r.text
    r = alice.workspace_get(PROJECT, "egress/api/status")
    assert r.status_code == 200 and r.json()["extension"] == "egress_extension"


def test_container_is_hardened_as_inspected(hub, alice_ws):
    alice_ws.reload()
    hc, cfg = alice_ws.attrs["HostConfig"], alice_ws.attrs["Config"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Image"] == NOTEBOOK_IMAGE
    assert hc["ReadonlyRootfs"] is True
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert hc["SecurityOpt"] == ["no-new-privileges:true"]
    assert hc["Privileged"] is False
    assert hc["PidsLimit"] == 256
    assert hc["Memory"] == 2 * 1024**3 and hc["MemorySwap"] == 2 * 1024**3
    assert hc["NanoCpus"] == 1_000_000_000
    assert hc["Dns"] == ["0.0.0.0"]
    assert "/tmp" in hc["Tmpfs"]
    mounts = {m["Destination"]: m for m in alice_ws.attrs["Mounts"]}
    assert set(mounts) == {"/home/researcher", "/data", "/imports"}
    assert mounts["/data"]["RW"] is False and mounts["/data"]["Type"] == "bind"
    assert mounts["/imports"]["RW"] is False and mounts["/imports"]["Type"] == "bind"
    assert mounts["/home/researcher"]["Name"] == names(hub, "alice").home_volume
    assert not any("docker.sock" in (m.get("Source") or "") for m in alice_ws.attrs["Mounts"])
    nets = alice_ws.attrs["NetworkSettings"]["Networks"]
    assert list(nets) == [names(hub, "alice").network]


def test_inside_the_room_no_root_no_caps_read_only(alice_ws):
    code, out = run_py(
        alice_ws,
        r"""
import os, errno, json
lines = open("/proc/self/status").read().splitlines()
status = dict(l.split(":\t", 1) for l in lines if ":\t" in l)
def try_write(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        return "written"
    except OSError as e:
        return errno.errorcode[e.errno]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "capeff": status["CapEff"].strip(), "capbnd": status["CapBnd"].strip(),
    "nnp": status["NoNewPrivs"].strip(),
    "root_write": try_write("/usr/evil"), "etc_write": try_write("/etc/evil"),
    "data_write": try_write("/data/evil.csv"), "data_overwrite": try_write("/data/patients.csv"),
    "tmp_write": try_write("/tmp/ok"), "home_write": try_write(os.path.expanduser("~/ok.txt")),
    "docker_sock": os.path.exists("/var/run/docker.sock") or os.path.exists("/run/docker.sock"),
}))
""",
    )
    assert code == 0, out
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts == {
        "uid": 1000,
        "gid": 1000,
        "capeff": "0000000000000000",
        "capbnd": "0000000000000000",
        "nnp": "1",
        "root_write": "EROFS",
        "etc_write": "EROFS",
        "data_write": "EROFS",
        "data_overwrite": "EROFS",
        "tmp_write": "written",
        "home_write": "written",
        "docker_sock": False,
    }


def read_csv_in(container, path) -> list[dict]:
    code, out = run_py(
        container,
        f"import pyarrow.parquet as pq, pyarrow.csv as c, sys; c.write_csv(pq.read_table({path!r}),"
        " sys.stdout.buffer)",
    )
    assert code == 0, out
    return list(csv.DictReader(io.StringIO(out.replace('"', ""))))


def test_data_holds_only_the_granted_columns_and_rows(hub, alice_ws, docker_client):
    with (hub.data_dir / "demo-patients.csv").open() as fh:
        source = list(csv.DictReader(fh))
    code, out = run_py(alice_ws, "print(open('/data/MANIFEST.json').read())")
    assert code == 0, out
    built = json.loads(out)["datasets"]["patients"]
    # (which patients are opted out depends on the lists in force: other tests load theirs;
    # tests/docker/test_safe_data.py checks them patient by patient)
    assert built["rows_in"] == len(source) == 500
    rows = read_csv_in(alice_ws, "/data/patients.parquet")
    # alice: every row but the opted-out patients', no postcode, no admission date, and a
    # per-project pseudonym instead of the NHS number
    assert list(rows[0]) == ["pseudonym", "age", "sex", "region", "diagnosis", "hba1c"]
    assert len(rows) == built["rows_out"] == 500 - built["removed_by_optout"]
    assert not {r["pseudonym"] for r in rows} & {r["nhs_number"] for r in source}
    code, out = run_py(alice_ws, "import os; print(sorted(os.listdir('/data')))")
    assert code == 0, out
    assert out.strip() == (
        "['DATA_DICTIONARY.json', 'DATA_DICTIONARY.md', 'MANIFEST.json', 'patients.parquet']"
    )

    bob = User(hub, "bob")
    bob.ensure_stopped(PROJECT)
    assert bob.spawn_with_form(PROJECT, PROJECT).status_code == 302
    bob.wait_ready(PROJECT)
    bob_ws = docker_client.containers.get(names(hub, "bob").container)
    bob_rows = read_csv_in(bob_ws, "/data/patients.parquet")
    assert list(bob_rows[0]) == ["pseudonym", "age", "diagnosis", "hba1c"]
    north = [r for r in rows if r["region"] == "north"]  # alice sees every kept row
    assert len(bob_rows) == len(north) and 0 < len(north) < len(rows)
    # the same project: alice and bob see the same pseudonym for the same patient
    assert {r["pseudonym"] for r in bob_rows} <= {r["pseudonym"] for r in rows}


def test_refused_person_sees_the_reason_and_it_is_audited(hub, docker_client):
    eve = User(hub, "eve")
    assert eve.logged_in
    r = eve.spawn_with_form(PROJECT, PROJECT)
    assert r.status_code == 403
    assert re.search(r"Workspace not started: your training expired on \d{4}-\d\d-\d\d", r.text)
    page = eve.spawn_page(PROJECT).text
    assert 'id="sde-no-projects"' in page and "your training expired on" in page
    ev = hub.events(action="spawn.refused", actor="eve")
    assert ev and ev[-1]["outcome"] == "denied" and ev[-1]["project"] == PROJECT
    assert ev[-1]["reason"].startswith("your training expired on")
    _assert_nothing_left(hub, docker_client, "eve", PROJECT)


def _assert_nothing_left(hub, client, user, project):
    n = names(hub, user, project)
    assert not client.containers.list(all=True, filters={"name": n.container})
    assert not [x for x in client.networks.list(names=[n.network]) if x.name == n.network]
    assert not [v for v in client.volumes.list() if v.name == n.home_volume]


@pytest.mark.parametrize(
    ("server", "options", "reason"),
    [
        ("cardio-audit", {"project": "cardio-audit"}, r"agreement DSA-003 ended \d{4}-\d\d-\d\d"),
        (
            "",
            {"project": "no-such-project"},
            "you are not a member of project no-such-project|no such project",
        ),
        ("", {"project": "../../etc"}, "unknown project '../../etc'"),
        ("", {"project": "x" * 5000}, "unknown project 'xxxx"),
        (
            "",
            {"project": PROJECT, "image": "sdetest-busybox:local"},
            r"option\(s\) 'image' cannot be set",
        ),
        (
            "",
            {"project": PROJECT, "volumes": {"/": "/host"}},
            r"option\(s\) 'volumes' cannot be set",
        ),
        ("", {"project": ["a"]}, "unknown project"),
        ("other", {"project": PROJECT}, "can only open project 'other'"),
    ],
)
def test_rest_api_cannot_bypass_the_checks(hub, alice, docker_client, server, options, reason):
    path = f"/users/alice/servers/{server}" if server else "/users/alice/server"
    r = alice.api("POST", path, json=options)
    assert r.status_code == 403, (r.status_code, r.text)
    assert re.search(reason, r.json()["message"]), r.json()
    ev = hub.events(action="spawn.refused", actor="alice")
    assert re.search(reason, ev[-1]["reason"])
    assert not docker_client.containers.list(
        all=True, filters={"label": "org.sde-tre.project=cardio-audit"}
    )
    _assert_nothing_left(hub, docker_client, "alice", "cardio-audit")


def test_missing_dataset_file_is_one_clear_error_and_nothing_is_left(hub, docker_client, tmp_path):
    src = tmp_path / "vanishing.csv"
    src.write_text("pid,v\n1,2\n")
    for args in (
        ["dataset", "add", "vanishing", str(src)],
        ["project", "add", "vanish-proj", "--title", "V", "--ethics-ref", "E1"],
        ["project", "add", "vanish-proj", "--lay-summary", "S", "--public-benefit", "B"],
        [
            "project",
            "approve",
            "vanish-proj",
            "--dac-ref",
            "D1",
            "--dac-date",
            "2026-01-01",
            "--lay-member",
            "Pat",
            "--lay-member-date",
            "2026-01-01",
        ],
        [
            "agreement",
            "add",
            "vanish-proj",
            "A1",
            "--signed",
            "2026-01-01",
            "--start",
            "2026-01-01",
            "--end",
            "2030-01-01",
            "--delete-by",
            "2030-06-01",
        ],
        ["member", "add", "vanish-proj", "alice", "--role", "researcher"],
        ["grant", "add", "vanish-proj", "alice", "vanishing", "--columns", "pid"],
    ):
        res = hub.admin(*args)
        assert res.returncode == 0, res.stderr
    src.unlink()
    alice = User(hub, "alice")
    r = alice.api("POST", "/users/alice/servers/vanish-proj", json={"project": "vanish-proj"})
    assert r.status_code == 500
    assert r.json()["message"] == (f"Workspace not started: dataset source {src} is missing")
    assert hub.events(action="spawn.refused", actor="alice")[-1]["project"] == "vanish-proj"
    _assert_nothing_left(hub, docker_client, "alice", "vanish-proj")


STEPS = [
    "Checking approvals",
    "Preparing your data",
    "Isolating your workspace network",
    "Starting your workspace",
    "Waiting for JupyterLab",
]


def progress_messages(user, server) -> list[str]:
    """The hub's progress event stream (server-sent events) for one start."""
    r = requests.get(
        f"{user.hub.url}/hub/api/users/{user.name}/servers/{server}/progress",
        headers={"Authorization": f"token {user.token}"},
        stream=True,
        timeout=120,
    )
    out = []
    with r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                out.append(event.get("message", ""))
                if event.get("ready") or event.get("failed"):
                    break
    return out


def test_hub_restart_keeps_the_workspace_reachable(hub, alice, alice_ws):
    before = alice_ws.id
    hub.stop()
    hub.start()
    r = alice.workspace_get(PROJECT, "api/status")
    assert r.status_code == 200, hub.log_tail()
    assert alice.server(PROJECT)["ready"] is True
    alice_ws.reload()
    assert alice_ws.id == before and alice_ws.status == "running"


def test_stop_removes_container_and_network_and_keeps_home(hub, alice, alice_ws, docker_client):
    code, out = run_py(alice_ws, "open('/home/researcher/notes.txt','w').write('kept')")
    assert code == 0, out
    n = names(hub, "alice")
    alice.stop(PROJECT)
    assert not docker_client.containers.list(all=True, filters={"name": n.container})
    assert not [x for x in docker_client.networks.list(names=[n.network]) if x.name == n.network]
    assert docker_client.volumes.get(n.home_volume)
    assert hub.events(action="workspace.stopped", actor="alice")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        posted = pool.submit(
            alice.api, "POST", f"/users/alice/servers/{PROJECT}", json={"project": PROJECT}
        )
        wait_for(
            lambda: (alice.server(PROJECT) or {}).get("pending") == "spawn",
            30,
            "the spawn to be pending",
            interval=0.05,
        )
        messages = progress_messages(alice, PROJECT)
        assert posted.result().status_code in (201, 202), posted.result().text
    assert [m for m in messages if m in STEPS] == STEPS, messages
    assert messages[-1].startswith("Server ready at"), messages
    alice.wait_ready(PROJECT)
    again = docker_client.containers.get(n.container)
    code, out = run_py(again, "print(open('/home/researcher/notes.txt').read())")
    assert out.strip() == "kept"
    started = hub.events(action="spawn.started", actor="alice")
    assert started[-1]["project"] == PROJECT
