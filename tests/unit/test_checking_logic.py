"""Output-checking rules end to end on SQLite (no hub): who may review, how reviews add up,
resubmission, release, and that every refusal is audited as denied."""

from __future__ import annotations

import json

import pytest

from sde_airlock import sdc
from sde_airlock.filetypes import check_bytes
from sde_spawner import audit
from sde_spawner.checking import actions, errors, policies, queries
from sde_spawner.checking import manifest as manifest_mod
from sde_spawner.checking.errors import perform
from sde_spawner.checking.policies import AutomatedChecks, FileVerdict, review_outcome
from sde_spawner.checking.states import State
from sde_spawner.checking.storage import BlobStore
from sde_spawner.checking.testing import PROJECT, make_db, sha256

CSV = b"region,n\nnorth,120\nsouth,98\n"
NOTEBOOK = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path)


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs")


def body(files: dict[str, bytes], justification="Aggregate counts for the paper") -> dict:
    return {
        "justification": justification,
        "files": [
            {"path": p, "description": f"about {p}", "size": len(d), "sha256": sha256(d)}
            for p, d in files.items()
        ],
    }


def upload_all(db, store, user, rid, files: dict[str, bytes]):
    for i, data in enumerate(files.values()):
        target = perform(db, actions.upload_target, user, PROJECT, rid, i)
        content = check_bytes(target.path, data)  # what the service's upload path inspects
        perform(db, actions.accept_upload, user, PROJECT, target, store.put(data), content=content)


def make_request(db, store, user="alice", files=None, *, submit=True) -> int:
    files = files or {"out/summary.csv": CSV, "analysis.ipynb": NOTEBOOK}
    res = perform(db, actions.create_request, user, PROJECT, PROJECT, body(files))
    upload_all(db, store, user, res["id"], files)
    if submit:
        perform(db, actions.submit, user, PROJECT, res["id"])
    return res["id"]


def review(db, checker, rid, decisions: dict[str, str] | str, reason="small-cell-count"):
    page = perform(db, queries.review_page, checker, rid)
    verdicts = {}
    for f in page["files"]:
        d = decisions if isinstance(decisions, str) else decisions[f["path"]]
        verdicts[f["id"]] = (
            FileVerdict(d)
            if d == "approve"
            else FileVerdict(d, reason, f"{checker} on {f['path']}")
        )
    return perform(db, actions.submit_review, checker, rid, page["req"]["version"], verdicts)


def state(db, rid) -> str:
    return perform(db, queries.get_own, "alice", PROJECT, rid)["state"]


def events(db, **filters):
    with db() as s:
        rows = [e.to_dict() for e in audit.query(s)]
    return [e for e in rows if all(e[k] == v for k, v in filters.items())]


# --- outcome computation (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reviews", "required", "expected"),
    [
        ({}, 2, None),
        ({"c": {1: "approve", 2: "approve"}}, 2, None),
        ({"c": {1: "approve", 2: "approve"}}, 1, State.approved),
        ({"c": {1: "approve", 2: "approve"}, "d": {1: "approve", 2: "approve"}}, 2, "approved"),
        ({"c": {1: "approve", 2: "approve"}, "d": {1: "approve", 2: "changes"}}, 2, "returned"),
        ({"c": {1: "changes", 2: "approve"}, "d": {1: "reject", 2: "approve"}}, 2, "rejected"),
        ({"c": {1: "reject", 2: "reject"}, "d": {1: "approve", 2: "approve"}}, 2, "rejected"),
        ({"c": {1: "approve"}, "d": {1: "approve", 2: "approve"}}, 2, "returned"),
        ({"c": {1: "approve", 2: "approve"}, "d": {1: "approve", 2: "approve"}}, 3, None),
    ],
)
def test_review_outcome(reviews, required, expected):
    assert review_outcome([1, 2], reviews, required) == expected


def test_file_outcome():
    assert policies.file_outcome(["approve", "approve"]) == "approved"
    assert policies.file_outcome(["approve", "changes"]) == "changes requested"
    assert policies.file_outcome(["changes", "reject"]) == "rejected"
    assert policies.file_outcome([]) == "not reviewed"


# --- the whole flow -------------------------------------------------------------------------


def test_two_independent_approvals_release_exactly_the_snapshot(db, store):
    rid = make_request(db, store)
    assert state(db, rid) == "submitted"
    perform(db, actions.claim, "chris", rid)
    assert state(db, rid) == "in_review"
    assert review(db, "chris", rid, "approve") == {
        "id": rid,
        "state": "in_review",
        "outcome": None,
    }
    assert review(db, "dana", rid, "approve")["outcome"] == "approved"
    assert state(db, rid) == "approved"

    # the manifest was fixed at approval: files, hashes, both reviewers
    _rid, project, text = perform(db, queries.release_manifest, "alice", rid)
    m = json.loads(text)
    assert text == manifest_mod.canonical(m) and project == PROJECT
    assert m["requester"] == "alice" and m["project"] == PROJECT and m["version"] == 1
    assert [(f["path"], f["sha256"], f["size"]) for f in m["files"]] == [
        ("out/summary.csv", sha256(CSV), len(CSV)),
        ("analysis.ipynb", sha256(NOTEBOOK), len(NOTEBOOK)),
    ]
    assert [r["checker"] for r in m["reviews"]] == ["chris", "dana"]
    assert all(d["decision"] == "approve" for r in m["reviews"] for d in r["decisions"])
    assert m["approved_at"] and m["required_approvals"] == 2

    view = perform(db, queries.get_own, "alice", PROJECT, rid)
    ids = [f["file_id"] for f in view["files"]]
    ref = perform(db, queries.release_file, "alice", rid, ids[0])
    assert store.read_verified(ref.blob_key, ref.sha256) == CSV
    perform(db, actions.record_download, "alice", ref, "127.0.0.1")
    assert state(db, rid) == "released"
    ref2 = perform(db, queries.release_file, "alice", rid, ids[1])
    perform(db, actions.record_download, "alice", ref2, "127.0.0.1")
    assert state(db, rid) == "released"
    downloads = events(db, action="export.release.downloaded", outcome="allowed")
    assert [e["details"]["sha256"] for e in downloads] == [sha256(CSV), sha256(NOTEBOOK)]
    assert len(events(db, action="export.released")) == 1  # on the first download only
    allowed = [e["action"] for e in events(db, outcome="allowed")]
    for action in (
        "export.created",
        "export.file.uploaded",
        "export.submitted",
        "export.in_review",
        "export.claimed",
        "export.reviewed",
        "export.approved",
        "export.released",
    ):
        assert action in allowed
    approved = events(db, action="export.approved")[0]
    assert approved["actor"] == "system" and approved["details"]["checkers"] == ["chris", "dana"]


def test_requester_can_never_review_own_request_even_as_a_checker(db, store):
    rid = make_request(db, store, user="bob")  # bob is researcher *and* checker on PROJECT
    for op, args in [
        (actions.claim, ()),
        (queries.review_page, ()),
        (actions.submit_review, (1, {})),
    ]:
        with pytest.raises(errors.Refused, match="bob made export request") as err:
            perform(db, op, "bob", rid, *args)
        assert err.value.status == 403
    denied = events(db, actor="bob", outcome="denied")
    assert {e["action"] for e in denied} == {
        "export.claimed",
        "export.request.viewed",
        "export.reviewed",
    }
    assert all("never review" in e["reason"] or "cannot open" in e["reason"] for e in denied)
    # previews of bob's own files are refused too
    page = perform(db, queries.review_page, "chris", rid)
    with pytest.raises(errors.Refused, match="can never review their own request"):
        perform(db, queries.file_for_checker, "bob", page["files"][0]["id"])


def test_one_checker_cannot_count_twice(db, store):
    rid = make_request(db, store)
    review(db, "chris", rid, "approve")
    with pytest.raises(errors.Refused, match="one checker counts once") as err:
        review(db, "chris", rid, "approve")
    assert err.value.status == 409
    with pytest.raises(errors.Refused, match="already reviewed"):
        perform(db, actions.claim, "chris", rid)
    assert state(db, rid) == "in_review"
    page = perform(db, queries.review_page, "dana", rid)
    assert page["reviews_done"] == 1
    assert events(db, action="export.reviewed", actor="chris", outcome="denied")


@pytest.mark.parametrize(
    ("who", "message"),
    [
        ("olga", "olga is not an output checker on project p1"),
        ("alice", "alice made export request"),
        ("sam", "sam is suspended"),
        ("nobody", "nobody is unknown"),
    ],
)
def test_only_active_checkers_of_that_project_review(db, store, who, message):
    rid = make_request(db, store)
    with pytest.raises(errors.Refused, match=message):
        perform(db, actions.claim, who, rid)
    with pytest.raises(errors.Refused, match=message):
        review(db, who, rid, "approve") if who != "alice" else perform(
            db, actions.submit_review, who, rid, 1, {}
        )
    assert state(db, rid) == "submitted"
    assert len(events(db, actor=who, outcome="denied")) >= 2


def test_checkers_do_not_see_each_others_decisions_before_their_own(db, store):
    rid = make_request(db, store)
    perform(db, actions.claim, "dana", rid)
    review(db, "chris", rid, {"out/summary.csv": "changes", "analysis.ipynb": "approve"})
    page = perform(db, queries.review_page, "dana", rid)
    assert page["others"] == [] and page["others_hidden"] is True
    assert page["can_review"] is True and page["reviews_done"] == 1
    # the requester sees nothing of an undecided round either
    own = perform(db, queries.get_own, "alice", PROJECT, rid)
    assert all(f["outcome"] is None and f["comments"] == [] for f in own["files"])
    review(db, "dana", rid, "approve")
    page = perform(db, queries.review_page, "dana", rid)
    assert [o["checker"] for o in page["others"]] == ["chris"]
    assert page["others_hidden"] is False


def test_returned_then_resubmitted_as_version_2_where_old_reviews_do_not_count(db, store):
    rid = make_request(db, store)
    review(db, "chris", rid, {"out/summary.csv": "changes", "analysis.ipynb": "approve"})
    assert review(db, "dana", rid, "approve")["outcome"] == "returned"

    own = perform(db, queries.get_own, "alice", PROJECT, rid)
    assert own["state"] == "returned"
    csv_file = own["files"][0]
    assert csv_file["outcome"] == "changes requested"
    assert csv_file["comments"] == [
        {
            "decision": "changes",
            "reason_code": "small-cell-count",
            "comment": "chris on out/summary.csv",
        }
    ]
    assert "checker" not in json.dumps(own)  # comments reach the requester without names
    assert own["files"][1]["outcome"] == "approved"

    # resubmitting the same version is refused: a resubmission is a new snapshot
    with pytest.raises(errors.IllegalTransition, match="create a new version"):
        perform(db, actions.submit, "alice", PROJECT, rid)

    fixed = b"region,n\nnorth,120\nsouth+east,98\n"
    res = perform(
        db, actions.new_version, "alice", PROJECT, rid, body({"out/summary.csv": fixed}, "v2")
    )
    assert res["version"] == 2 and res["state"] == "returned"
    with pytest.raises(errors.Refused, match="not uploaded"):
        perform(db, actions.submit, "alice", PROJECT, rid)
    upload_all(db, store, "alice", rid, {"out/summary.csv": fixed})
    assert perform(db, actions.submit, "alice", PROJECT, rid)["version"] == 2
    assert state(db, rid) == "submitted"

    # chris and dana reviewed version 1; they may review version 2 — one review isn't enough
    assert review(db, "chris", rid, "approve")["outcome"] is None
    page = perform(db, queries.review_page, "dana", rid)
    assert page["req"]["version"] == 2 and [f["path"] for f in page["files"]] == ["out/summary.csv"]
    assert page["history"][0]["number"] == 1
    assert page["history"][0]["files"][0]["outcome"] == "changes requested"
    assert review(db, "dana", rid, "approve")["outcome"] == "approved"
    m = json.loads(perform(db, queries.release_manifest, "alice", rid)[2])
    assert m["version"] == 2 and m["justification"] == "v2"
    assert m["files"] == [
        {
            "path": "out/summary.csv",
            "description": "about out/summary.csv",
            "size": len(fixed),
            "sha256": sha256(fixed),
            "checks": {"status": "not_run", "findings": [], "overrides": []},
        }
    ]


def test_stale_review_form_of_an_old_version_is_refused(db, store):
    rid = make_request(db, store)
    old = perform(db, queries.review_page, "erin", rid)
    review(db, "chris", rid, "changes")
    review(db, "dana", rid, "approve")
    files = {"out/summary.csv": CSV}
    perform(db, actions.new_version, "alice", PROJECT, rid, body(files))
    upload_all(db, store, "alice", rid, files)
    perform(db, actions.submit, "alice", PROJECT, rid)
    verdicts = {f["id"]: FileVerdict("approve") for f in old["files"]}
    with pytest.raises(errors.Refused, match="is now at version 2"):
        perform(db, actions.submit_review, "erin", rid, 1, verdicts)


def test_any_reject_rejects_and_rejected_is_final(db, store):
    rid = make_request(db, store)
    review(db, "chris", rid, {"out/summary.csv": "reject", "analysis.ipynb": "approve"})
    assert review(db, "dana", rid, "approve")["outcome"] == "rejected"
    with pytest.raises(errors.Refused, match="only follow a returned review"):
        perform(db, actions.new_version, "alice", PROJECT, rid, body({"a.csv": CSV}))
    with pytest.raises(errors.Refused, match="nothing is approved"):
        perform(db, queries.release_file, "alice", rid, 1)
    with pytest.raises(errors.Refused, match="not waiting for review"):
        review(db, "erin", rid, "approve")


def test_review_needs_a_decision_and_reason_for_every_file(db, store):
    rid = make_request(db, store)
    page = perform(db, queries.review_page, "chris", rid)
    a, b = (f["id"] for f in page["files"])
    cases = [
        ({a: FileVerdict("approve")}, "no decision for analysis.ipynb"),
        ({a: FileVerdict("approve"), b: FileVerdict("changes")}, "a reason is required"),
        ({a: FileVerdict("approve"), b: FileVerdict("maybe")}, "decision must be"),
        ({a: FileVerdict("approve"), b: FileVerdict("reject", "nope")}, "unknown reason"),
        ({a: FileVerdict("approve"), b: FileVerdict("approve"), 999: FileVerdict("approve")},
         "not in this version"),
    ]  # fmt: skip
    for verdicts, message in cases:
        with pytest.raises(errors.Invalid, match=message):
            perform(db, actions.submit_review, "chris", rid, 1, verdicts)
    assert perform(db, queries.review_page, "chris", rid)["reviews_done"] == 0


def test_files_are_a_snapshot_once_submitted(db, store):
    rid = make_request(db, store)
    with pytest.raises(errors.Refused, match="its files are fixed") as err:
        perform(db, actions.upload_target, "alice", PROJECT, rid, 0)
    assert err.value.status == 409
    assert events(db, action="export.file.uploaded", outcome="denied")


def test_submit_needs_every_file_uploaded(db, store):
    files = {"a.csv": CSV, "b.csv": CSV + b"x,1\n"}
    res = perform(db, actions.create_request, "alice", PROJECT, PROJECT, body(files))
    target = perform(db, actions.upload_target, "alice", PROJECT, res["id"], 0)
    content = check_bytes("a.csv", CSV)
    perform(db, actions.accept_upload, "alice", PROJECT, target, store.put(CSV), content=content)
    with pytest.raises(errors.Refused, match=r"1 file\(s\) not uploaded yet: b.csv"):
        perform(db, actions.submit, "alice", PROJECT, res["id"])
    assert state(db, res["id"]) == "draft"
    # bytes that are not the declared ones are refused
    target = perform(db, actions.upload_target, "alice", PROJECT, res["id"], 1)
    with pytest.raises(errors.Invalid, match="do not match"):
        content = check_bytes("b.csv", CSV + b"x,1\n")
        perform(
            db, actions.accept_upload, "alice", PROJECT, target, sha256(b"other"), content=content
        )


def test_a_workspace_only_sees_and_touches_its_own_requests(db, store):
    rid = make_request(db, store)
    for user, project in [("bob", PROJECT), ("alice", "p2")]:
        with pytest.raises(errors.NotFound, match="there is no export request"):
            perform(db, actions.upload_target, user, project, rid, 0)
        with pytest.raises(errors.NotFound):
            perform(db, actions.withdraw, user, project, rid)
        assert perform(db, queries.list_own, user, project) == []
    assert [r["id"] for r in perform(db, queries.list_own, "alice", PROJECT)] == [rid]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"justification": "x", "files": [], "requester": "bob"}, "unknown field"),
        ({"justification": "x", "files": [], "project": "p2"}, "unknown field"),
        ({"justification": " ", "files": [{}]}, "justification"),
        ({"justification": "x", "files": []}, "at least one file"),
        ({"justification": "x", "files": [{"path": "../etc/passwd", "size": 1,
                                           "sha256": "a" * 64}]}, "not a plain path"),
        ({"justification": "x", "files": [{"path": "a", "size": -1, "sha256": "a" * 64}]},
         "non-negative"),
        ({"justification": "x", "files": [{"path": "a", "size": 1, "sha256": "XYZ"}]},
         "64 lowercase hex"),
        ({"justification": "x", "files": [{"path": "a", "size": 10**12, "sha256": "a" * 64}]},
         "over the export limit"),
        ({"justification": "x", "files": [{"path": "a", "size": 1, "sha256": "a" * 64}] * 2},
         "listed twice"),
    ],
)  # fmt: skip
def test_create_validates_the_body_and_never_takes_identity_from_it(db, payload, message):
    with pytest.raises(errors.Invalid, match=message):
        perform(db, actions.create_request, "alice", PROJECT, PROJECT, payload)
    assert events(db, action="export.created", outcome="denied")[-1]["actor"] == "alice"


def test_withdraw_by_requester_only(db, store):
    rid = make_request(db, store)
    with pytest.raises(errors.NotFound):
        perform(db, actions.withdraw, "chris", PROJECT, rid)
    assert perform(db, actions.withdraw, "alice", PROJECT, rid)["state"] == "withdrawn"
    with pytest.raises(errors.IllegalTransition, match="cannot become withdrawn"):
        perform(db, actions.withdraw, "alice", PROJECT, rid)


def test_release_only_to_the_requester(db, store):
    rid = make_request(db, store)
    review(db, "chris", rid, "approve")
    review(db, "dana", rid, "approve")
    for who in ("chris", "bob"):
        with pytest.raises(errors.Refused, match=r"only the requester \(alice\)"):
            perform(db, queries.release_file, who, rid, 1)
    assert state(db, rid) == "approved"
    # the checker may read the manifest; someone unrelated may not
    assert perform(db, queries.release_manifest, "chris", rid)[0] == rid
    with pytest.raises(errors.Refused, match="neither the requester nor a checker"):
        perform(db, queries.release_manifest, "olga", rid)


def test_queue_lists_submitted_requests_of_checked_projects(db, store):
    draft = make_request(db, store, submit=False)
    rid = make_request(db, store)
    own = make_request(db, store, user="bob")
    q = perform(db, queries.queue, "bob")
    assert [i["id"] for i in q["items"]] == [rid, own]
    assert [i["own"] for i in q["items"]] == [False, True]
    assert draft not in [i["id"] for i in perform(db, queries.queue, "chris")["items"]]
    assert perform(db, queries.queue, "olga")["items"] == []
    perform(db, actions.claim, "chris", rid)
    items = perform(db, queries.queue, "chris")["items"]
    assert items[0]["mine"] == "claimed" and items[0]["state"] == "in_review"
    flt = queries.QueueFilter(state="in_review")
    assert [i["id"] for i in perform(db, queries.queue, "chris", flt)["items"]] == [rid]
    flt = queries.QueueFilter(older_than_days=1)
    assert perform(db, queries.queue, "chris", flt)["items"] == []
    flt = queries.QueueFilter(project="p2")
    assert perform(db, queries.queue, "chris", flt)["items"] == []


def _submit_at_once(db, rid: int, checkers: tuple[str, ...]) -> tuple[dict, list]:
    import threading

    pages = {c: perform(db, queries.review_page, c, rid) for c in checkers}
    barrier = threading.Barrier(len(checkers))
    results, errors = {}, []

    def submit(checker):
        verdicts = {f["id"]: FileVerdict("approve") for f in pages[checker]["files"]}
        barrier.wait()
        try:
            results[checker] = perform(db, actions.submit_review, checker, rid, 1, verdicts)
        except Exception as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(c,)) for c in checkers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_simultaneous_reviews_complete_the_round(db, store):
    """Two checkers submitting at the same moment: the later one sees the earlier review."""
    for _ in range(5):
        rid = make_request(db, store)
        results, errors = _submit_at_once(db, rid, ("chris", "dana"))
        assert errors == []
        assert sorted(str(r["outcome"]) for r in results.values()) == ["None", "approved"]
        assert state(db, rid) == "approved"


def summary_checks(sha: str) -> AutomatedChecks:
    """The automated checks as the service passes them: summary.csv fails two rules."""
    report = sdc.Report(
        "table",
        ["3 rows"],
        [
            sdc.Finding("threshold", sdc.FAIL, "column 'n'", "1 cell under the threshold"),
            sdc.Finding("zero", sdc.FAIL, "column 'n'", "1 zero count"),
            sdc.Finding("manual", sdc.REVIEW, "file", "look by eye"),
        ],
    )
    return AutomatedChecks.of({sha: report}, sdc.Rules(threshold=7, rounding="5"))


def test_approving_a_file_that_fails_automated_rules_needs_a_comment_and_is_recorded(db, store):
    rid = make_request(db, store)
    page = perform(db, queries.review_page, "chris", rid)
    by_path = {f["path"]: f for f in page["files"]}
    summary = by_path["out/summary.csv"]
    checks = summary_checks(summary["sha256"])
    bare = {f["id"]: FileVerdict("approve") for f in page["files"]}
    with pytest.raises(
        errors.Refused, match=r"fails automated disclosure rules \(threshold, zero\)"
    ):
        perform(db, actions.submit_review, "chris", rid, 1, bare, checks)
    assert events(db, action="export.reviewed", outcome="allowed") == []
    why = "The 0 is structural (no men in the maternity cohort)"
    explained = {**bare, summary["id"]: FileVerdict("approve", None, why)}
    perform(db, actions.submit_review, "chris", rid, 1, explained, checks)
    (reviewed,) = events(db, action="export.reviewed", outcome="allowed")
    decisions = {d["path"]: d for d in reviewed["details"]["decisions"]}
    assert decisions["out/summary.csv"]["failed_checks"] == ["threshold", "zero"]
    assert "failed_checks" not in decisions["analysis.ipynb"]
    second = {**explained, summary["id"]: FileVerdict("approve", None, "ok")}
    perform(db, actions.submit_review, "dana", rid, 1, second, checks)

    m = json.loads(perform(db, queries.release_manifest, "alice", rid)[2])
    at = {r["checker"]: r["submitted_at"] for r in m["reviews"]}
    assert m["format"] == "sde-release-manifest/2"
    assert m["checks"] == {
        "rule_set": sdc.RULE_SET_VERSION,
        "rules": {
            "threshold": 7,
            "dof_threshold": 10,
            "zeros_are_disclosive": True,
            "rounding": "5",
        },
    }
    assert [(f["path"], f["checks"]) for f in m["files"]] == [
        (
            "out/summary.csv",
            {
                "status": "fail",
                "findings": [
                    {
                        "rule": "threshold",
                        "severity": "fail",
                        "location": "column 'n'",
                        "message": "1 cell under the threshold",
                    },
                    {
                        "rule": "zero",
                        "severity": "fail",
                        "location": "column 'n'",
                        "message": "1 zero count",
                    },
                    {
                        "rule": "manual",
                        "severity": "review",
                        "location": "file",
                        "message": "look by eye",
                    },
                ],
                "overrides": [
                    {
                        "checker": "chris",
                        "rules": ["threshold", "zero"],
                        "comment": why,
                        "at": at["chris"],
                    },
                    {
                        "checker": "dana",
                        "rules": ["threshold", "zero"],
                        "comment": "ok",
                        "at": at["dana"],
                    },
                ],
            },
        ),
        # no automated checks were given for the notebook: the record says so
        ("analysis.ipynb", {"status": "not_run", "findings": [], "overrides": []}),
    ]
