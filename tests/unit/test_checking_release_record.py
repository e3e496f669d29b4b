# ruff: noqa: F811 - pytest fixtures imported from test_checking_handlers
"""The signed release manifest carries the record of the checks applied to each file, over
real HTTP with the service's own checks: the rule set and its settings, each file's findings
(differencing against an earlier release included), and every override with the checker who
made it and their comment. The signature covers all of it."""

from __future__ import annotations

import json
import re

from sde_airlock import sdc
from sde_spawner.checking import manifest
from tests.unit.test_checking_differencing import NEARLY, RELEASED, release
from tests.unit.test_checking_handlers import (  # noqa: F401 - fixtures
    PREFIX,
    db,
    hub_auth,
    submit_request,
    svc,
)

SMALL = b"region,n\nnorth,120\nsouth,4\n"
SAFE = b"region,n\nnorth,120\nsouth,98\n"


async def approve(svc, user: str, rid: int, comments: dict[str, str]) -> str:
    assert (await svc.form_post(user, f"checking/requests/{rid}/claim", {})).code == 302
    page = (await svc.fetch("GET", f"checking/requests/{rid}", user=user)).body.decode()
    paths = re.findall(r'<span class="path">([^<]+)</span>', page)
    ids = re.findall(r'name="decision-(\d+)" value="approve"', page)
    fields = {"version": "1"}
    for path, fid in zip(paths, ids, strict=True):
        fields[f"decision-{fid}"] = "approve"
        if path in comments:
            fields[f"comment-{fid}"] = comments[path]
    r = await svc.form_post(user, f"checking/requests/{rid}/review", fields)
    assert r.code == 302, r.body
    return r.headers["Location"]


async def test_the_manifest_records_rules_findings_and_overrides_and_is_signed(svc, db):
    first = await release(svc, {"counts.csv": RELEASED})
    files = {"table2.csv": NEARLY, "small.csv": SMALL, "safe.csv": SAFE}
    rid = await submit_request(svc, workspace="ws-bob", files=files)
    await approve(
        svc, "chris", rid, {"table2.csv": "north +1 is public", "small.csv": "south is ONS data"}
    )
    done = await approve(svc, "dana", rid, {"table2.csv": "agreed", "small.csv": "agreed too"})
    assert done.endswith("?done=approved")

    releases = (await svc.fetch("GET", "releases/", user="bob")).body.decode()
    (number,) = set(re.findall(r"/services/sde/releases/(\d+)/files/\d+", releases))
    text = (await svc.fetch("GET", f"releases/{number}/manifest.json", user="bob")).body
    sig = (await svc.fetch("GET", f"releases/{number}/manifest.sig", user="bob")).body.decode()
    key = json.loads((await svc.fetch("GET", "api/release-key")).body)["public_key_pem"]
    assert manifest.verify(key, text, sig.strip())

    m = json.loads(text)
    assert m["format"] == "sde-release-manifest/2"
    assert m["checks"] == {
        "rule_set": sdc.RULE_SET_VERSION,
        "rules": {
            "threshold": 10,
            "dof_threshold": 10,
            "zeros_are_disclosive": True,
            "rounding": None,
        },
    }
    at = {r["checker"]: r["submitted_at"] for r in m["reviews"]}
    record = {f["path"]: f["checks"] for f in m["files"]}
    assert [f["path"] for f in m["files"]] == list(files)

    table2 = record["table2.csv"]
    assert table2["status"] == "fail"
    (diff,) = [f for f in table2["findings"] if f["rule"] == "differencing"]
    assert diff["severity"] == "fail"
    assert f"export request {first}'s released file counts.csv" in diff["message"]
    assert table2["overrides"] == [
        {
            "checker": "chris",
            "rules": ["differencing"],
            "comment": "north +1 is public",
            "at": at["chris"],
        },
        {"checker": "dana", "rules": ["differencing"], "comment": "agreed", "at": at["dana"]},
    ]

    small = record["small.csv"]
    assert small["status"] == "fail"
    assert [f["rule"] for f in small["findings"] if f["severity"] == "fail"] == ["threshold"]
    assert [o["rules"] for o in small["overrides"]] == [["threshold"], ["threshold"]]
    assert [o["comment"] for o in small["overrides"]] == ["south is ONS data", "agreed too"]

    assert record["safe.csv"]["status"] == "pass"
    assert record["safe.csv"]["overrides"] == []
    # every finding is the CLI's machine-readable shape
    for f in m["files"]:
        for finding in f["checks"]["findings"]:
            assert set(finding) == {"rule", "severity", "location", "message"}
            assert finding["rule"] in sdc.RULES

    # the record is signed: changing who overrode, or dropping an override, breaks it
    for tamper in (
        lambda x: x["files"][0]["checks"]["overrides"][0].__setitem__("checker", "mallory"),
        lambda x: x["files"][1]["checks"]["overrides"].pop(),
        lambda x: x["checks"]["rules"].__setitem__("threshold", 3),
    ):
        forged = json.loads(text)
        tamper(forged)
        assert not manifest.verify(key, manifest.canonical(forged), sig.strip())
