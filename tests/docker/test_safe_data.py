"""Safe data in a real workspace: opt-outs removed, per-project pseudonyms, nothing real inside.

One researcher (sam) on two projects over the same person-level dataset (synthetic patients
with valid NHS numbers from the test range). From inside the real containers: everyone on
the lists in force is absent from /data; the pseudonyms are the hub's HMAC of the project key,
stable across a rebuild and different in the other project; no NHS number, no key is in
/data, the home directory, the environment or any process's environ (the probe is shown to
find a planted NHS number first). A dataset whose identifier column has gone is refused with
one clear, audited reason.
"""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta

import pytest

from sde_spawner.containers import workspace_names
from sde_spawner.datasets.demo_data import write_demo_optouts, write_demo_patients
from sde_spawner.datasets.pseudonyms import project_key, pseudonym
from tests.support import User

pytestmark = pytest.mark.docker

A, B = "safe-data-a", "safe-data-b"
USER = "sam"

PROBE = r"""
import json, os, sys
import pyarrow.parquet as pq
# passed shifted (digits become letters) so this probe's own command line holds none of them
needles = ["".join(chr(ord(c) - 17) for c in n) for n in json.loads(sys.argv[1])]
hits = []
def scan(label, data):
    hits.extend([label, n] for n in needles if n.encode() in data)
for root in ("/data", "/home/researcher"):
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            try:
                raw = open(p, "rb").read()
                if p.endswith(".parquet"):  # compressed: look at the values too
                    raw += json.dumps(pq.read_table(p).to_pylist(), default=str).encode()
                scan(p, raw)
            except OSError:
                pass
for pid in filter(str.isdigit, os.listdir("/proc")):
    for part in ("environ", "cmdline"):
        try:
            scan(f"/proc/{pid}/{part}", open(f"/proc/{pid}/{part}", "rb").read())
        except OSError:
            pass
scan("os.environ", json.dumps(dict(os.environ)).encode())
print(json.dumps(hits))
"""

READ = r"""
import json, pyarrow.parquet as pq
t = pq.read_table("/data/people.parquet")
print(json.dumps({"columns": t.column_names, "pseudonyms": t.column("pseudonym").to_pylist(),
                  "dictionary": json.load(open("/data/DATA_DICTIONARY.json")),
                  "files": sorted(__import__("os").listdir("/data"))}))
"""


def run_py(container, code: str, *args: str) -> str:
    res = container.exec_run(["python3", "-c", code, *args])
    assert res.exit_code == 0, res.output.decode(errors="replace")
    return res.output.decode()


def shifted(needles: list[str]) -> str:
    return json.dumps(["".join(chr(ord(c) + 17) for c in n) for n in needles])


def admin(hub, *args):
    res = hub.admin(*args)
    assert res.returncode == 0, res.stderr + res.stdout
    return res.stdout


@pytest.fixture(scope="module")
def data(hub):
    d = hub.state_dir / "safe-data"
    src = write_demo_patients(d / "people.csv", rows=200, seed=7)
    lists = write_demo_optouts(src, d, every=10, local_every=15)
    today = date.today()
    admin(hub, "person", "add", USER, "--training-expires", str(today + timedelta(days=90)))
    admin(hub, "dataset", "add", "people", str(src), "--identifier", "nhs_number")
    admin(hub, "optout", "load", "national", str(lists["national"]))
    admin(hub, "optout", "load", "local:demo-trust", str(lists["local:demo-trust"]))
    for slug in (A, B):
        admin(
            hub,
            *("project", "add", slug, "--title", slug, "--ethics-ref", "IRAS 1"),
            *("--lay-summary", "A study.", "--public-benefit", "Better care."),
        )
        admin(
            hub,
            *("project", "approve", slug, "--dac-ref", "DAC-1", "--dac-date", str(today)),
            *("--lay-member", "Pat Lewis", "--lay-member-date", str(today)),
        )
        admin(
            hub,
            *("agreement", "add", slug, "DSA-1", "--signed", str(today - timedelta(days=2))),
            *("--start", str(today - timedelta(days=1))),
            *("--end", str(today + timedelta(days=60))),
            *("--delete-by", str(today + timedelta(days=90))),
        )
        admin(hub, "member", "add", slug, USER, "--role", "researcher")
        admin(hub, "grant", "add", slug, USER, "people", "--columns", "pseudonym,age,region")
    admin(hub, "optout", "apply", A, "local:demo-trust")
    with src.open(newline="") as fh:
        everyone = [r["nhs_number"] for r in csv.DictReader(fh)]
    read = lambda name: lists[name].read_text().split()  # noqa: E731
    return {
        "src": src,
        "dir": d,
        "everyone": everyone,
        "national": read("national"),
        "local": read("local:demo-trust"),
    }


@pytest.fixture(scope="module")
def sam(hub, data):
    u = User(hub, USER)
    assert u.logged_in, hub.log_tail()
    return u


def start(hub, sam, docker_client, project):
    sam.ensure_stopped(project)
    r = sam.spawn_with_form(project, project)
    assert r.status_code == 302, r.text[-1500:]
    sam.wait_ready(project)
    return docker_client.containers.get(workspace_names(USER, project, hub.prefix).container)


def master_key(hub) -> bytes:
    path = hub.state_dir / "keys" / "pseudonym-master.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    return path.read_bytes()


def test_optouts_removed_and_pseudonyms_per_project_stable_across_rebuilds(
    hub, data, sam, docker_client
):
    ws_a = start(hub, sam, docker_client, A)
    got_a = json.loads(run_py(ws_a, READ))
    master = master_key(hub)
    key_a, key_b = project_key(master, A), project_key(master, B)
    opted_a = set(data["national"]) | set(data["local"])
    kept_a = [n for n in data["everyone"] if n not in opted_a]
    assert got_a["columns"] == ["pseudonym", "age", "region"]
    assert got_a["pseudonyms"] == [pseudonym(key_a, n) for n in kept_a]
    # the same probe would have seen them: opted-out people's pseudonyms are absent
    removed = {pseudonym(key_a, n) for n in opted_a}
    assert removed and not removed & set(got_a["pseudonyms"])
    (ds,) = got_a["dictionary"]["datasets"]
    assert (ds["rows_in_source"], ds["rows"]) == (200, len(kept_a))
    assert ds["rows_removed_by_optout"] == len(opted_a)
    assert got_a["files"] == [
        "DATA_DICTIONARY.json",
        "DATA_DICTIONARY.md",
        "MANIFEST.json",
        "people.parquet",
    ]

    ws_b = start(hub, sam, docker_client, B)  # national list only, another key
    got_b = json.loads(run_py(ws_b, READ))
    kept_b = [n for n in data["everyone"] if n not in set(data["national"])]
    assert got_b["pseudonyms"] == [pseudonym(key_b, n) for n in kept_b]
    assert not set(got_b["pseudonyms"]) & set(got_a["pseudonyms"])
    sam.stop(B)

    # a new national list version: a new extract version on the next start, same pseudonyms
    sam.stop(A)
    newly = kept_a[0]
    (data["dir"] / "national-v2.txt").write_text("\n".join([*data["national"], newly]) + "\n")
    admin(hub, "optout", "load", "national", str(data["dir"] / "national-v2.txt"))
    ws_a = start(hub, sam, docker_client, A)
    again = json.loads(run_py(ws_a, READ))
    assert again["dictionary"]["version"] == got_a["dictionary"]["version"] + 1
    assert again["pseudonyms"] == got_a["pseudonyms"][1:]
    built = [e for e in hub.events(action="extract.built") if e["project"] == A]
    assert [e["details"]["version"] for e in built][-2:] == [1, 2]
    # (the hub's demo seed loaded lists of its own first: versions are counted from those)
    before, after = (b["details"]["optout_lists"] for b in built[-2:])
    national = {lst["list"]: lst for lst in before}["national"]
    assert after == [
        {
            "list": "national",
            "version": national["version"] + 1,
            "entries": len(data["national"]) + 1,
        },
        {lst["list"]: lst for lst in before}["local:demo-trust"],
    ]
    assert before[1]["entries"] == len(data["local"])


def test_no_nhs_number_or_key_anywhere_in_the_workspace(hub, data, sam, docker_client):
    ws = start(hub, sam, docker_client, A) if sam.server(A) is None else None
    ws = ws or docker_client.containers.get(workspace_names(USER, A, hub.prefix).container)
    master = master_key(hub)
    needles = [
        *data["everyone"],
        master.hex(),
        project_key(master, A).hex(),
        project_key(master, B).hex(),
        "pseudonym-master.key",
    ]
    # control: a number planted in the home directory is found by the same probe
    planted = data["everyone"][0]
    assert (
        ws.exec_run(["sh", "-c", f"echo {planted} > /home/researcher/planted.txt"]).exit_code == 0
    )
    hits = json.loads(run_py(ws, PROBE, shifted(needles)))
    assert ["/home/researcher/planted.txt", planted] in hits
    assert ws.exec_run(["rm", "/home/researcher/planted.txt"]).exit_code == 0
    assert json.loads(run_py(ws, PROBE, shifted(needles))) == []


def test_a_vanished_identifier_column_refuses_the_spawn_with_its_reason(
    hub, data, sam, docker_client
):
    src = data["dir"] / "broken.csv"
    src.write_text(data["src"].read_text())
    admin(hub, "dataset", "add", "people-broken", str(src), "--identifier", "nhs_number")
    admin(hub, "grant", "add", B, USER, "people-broken", "--columns", "pseudonym,age")
    src.write_text("age,region\n40,north\n")  # the source changed under the registry
    sam.ensure_stopped(B)
    r = sam.api("POST", f"/users/{USER}/servers/{B}", json={"project": B})
    reason = "dataset people-broken has no identifier column 'nhs_number' in its source"
    assert r.status_code == 500 and r.json()["message"] == f"Workspace not started: {reason}"
    ev = hub.events(action="spawn.refused", actor=USER)
    assert ev[-1]["project"] == B and ev[-1]["reason"] == reason
    assert not docker_client.containers.list(
        all=True, filters={"name": workspace_names(USER, B, hub.prefix).container}
    )
