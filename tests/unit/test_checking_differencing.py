# ruff: noqa: F811 - pytest fixtures imported from test_checking_handlers
"""Differencing in the service's own checks, over real HTTP: a request's tables are compared
with the other files of the request and with the project's earlier *released* files (read from
the blob store); a table that differs from one only by cells under the threshold fails
``differencing``, naming the release, and approving it needs the checker's override comment.
Controls: the same table with no earlier release, and beside a request that was never released,
is not flagged."""

from __future__ import annotations

import html
import re

from tests.unit.test_checking_handlers import (  # noqa: F401 - fixtures
    PREFIX,
    db,
    hub_auth,
    review_all,
    submit_request,
    svc,
)

RELEASED = b"region,n\nnorth,120\nsouth,98\nwest,40\n"
#: the released table with one more person in the north: subtracting discloses them
NEARLY = b"region,n\nnorth,121\nsouth,98\nwest,40\n"
#: differs by 30 in the north: no group under the threshold is exposed
FAR = b"region,n\nnorth,150\nsouth,98\nwest,40\n"


async def findings(svc, rid: int, user: str = "chris") -> dict[str, list[tuple[str, str]]]:
    """path -> [(rule, message)] as the checker's request page shows them."""
    page = (await svc.fetch("GET", f"checking/requests/{rid}", user=user)).body.decode()
    out = {}
    for block in page.split('<span class="path">')[1:]:
        path = html.unescape(block.split("</span>", 1)[0])
        items = re.findall(
            r'<li class="finding \w+" data-rule="(\w+)">.*?</span>\s*'
            r'<span class="mono">\w+</span> · (.*?)</li>',
            block.split("<iframe", 1)[0],
            re.S,
        )
        out[path] = [(rule, html.unescape(text)) for rule, text in items]
    return out


async def release(svc, files) -> int:
    rid = await submit_request(svc, files=files)
    await review_all(svc, "chris", rid, override="")
    assert (await review_all(svc, "dana", rid, override="")).endswith("?done=approved")
    releases = await svc.fetch("GET", "releases/", user="alice")
    (link,) = re.findall(rb'href="(/services/sde/releases/\d+/files/\d+)"', releases.body)[-1:]
    assert (await svc.fetch("GET", link.decode().removeprefix(PREFIX), user="alice")).code == 200
    return rid


async def test_a_table_is_differenced_against_the_projects_earlier_release(svc, db):
    rid = await submit_request(svc, workspace="ws-bob", files={"table2.csv": NEARLY})
    # control: the same table, before the project released anything it can be differenced with
    assert "differencing" not in [rule for rule, _ in (await findings(svc, rid))["table2.csv"]]

    pending = await submit_request(svc, files={"pending.csv": RELEASED})  # never released
    assert "differencing" not in [rule for rule, _ in (await findings(svc, rid))["table2.csv"]]

    first = await release(svc, {"counts.csv": RELEASED})
    found = (await findings(svc, rid))["table2.csv"]
    diffs = [m for rule, m in found if rule == "differencing"]
    assert len(diffs) == 1, found
    assert f"export request {first}'s released file counts.csv" in diffs[0]
    assert "north 'n': 121 vs 120" in diffs[0]
    assert f"export request {pending}" not in diffs[0]

    # approving it needs the checker's override comment, as every failed rule does
    assert (await svc.form_post("dana", f"checking/requests/{rid}/claim", {})).code == 302
    page = (await svc.fetch("GET", f"checking/requests/{rid}", user="dana")).body.decode()
    (fid,) = re.findall(r'name="decision-(\d+)" value="approve"', page)
    fields = {"version": "1", f"decision-{fid}": "approve"}
    r = await svc.form_post("dana", f"checking/requests/{rid}/review", fields)
    assert r.code == 400 and b"table2.csv fails automated disclosure rules (differencing)" in r.body
    fields[f"comment-{fid}"] = "the north figure is published by ONS"
    assert (await svc.form_post("dana", f"checking/requests/{rid}/review", fields)).code == 302


async def test_the_files_of_one_request_are_differenced_with_each_other(svc, db):
    rid = await submit_request(svc, files={"a.csv": RELEASED, "b.csv": NEARLY, "c.csv": FAR})
    found = await findings(svc, rid)
    diffs = {p: [m for rule, m in items if rule == "differencing"] for p, items in found.items()}
    assert len(diffs["a.csv"]) == 1 and "b.csv in this request" in diffs["a.csv"][0]
    assert len(diffs["b.csv"]) == 1 and "a.csv in this request" in diffs["b.csv"][0]
    assert diffs["c.csv"] == []  # differs by 30 and 29: no group under the threshold


async def test_control_a_release_that_differs_by_more_than_the_threshold_is_not_flagged(svc, db):
    await release(svc, {"counts.csv": FAR})
    rid = await submit_request(svc, workspace="ws-bob", files={"table2.csv": NEARLY})
    found = (await findings(svc, rid))["table2.csv"]
    assert "differencing" not in [rule for rule, _ in found], found
