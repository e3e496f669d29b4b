"""The evidence report: its catalogue, JUnit reading, the join, and ``sde-admin evidence``.

JUnit files come from real pytest runs in a subprocess; facts from a real demo registry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sde_spawner import firewall
from sde_spawner.cli import main
from sde_spawner.evidence import catalogue, facts, junit, report

REPO = Path(__file__).resolve().parents[2]

SAMPLE = textwrap.dedent(
    """
    import pytest

    def test_ok():
        pass

    def test_bad():
        assert 1 == 2, "<script>alert(1)</script>"

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n):
        pass

    @pytest.mark.skip(reason="not here")
    def test_skipped():
        pass

    class TestGroup:
        def test_inside(self):
            pass
    """
)


def run_sample(tmp_path: Path) -> Path:
    """A real pytest run of SAMPLE as tests/unit/test_sample.py; its JUnit XML."""
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "unit" / "test_sample.py").write_text(SAMPLE)
    out = tmp_path / "results.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         f"--rootdir={tmp_path}", f"--junitxml={out}", "tests/unit/test_sample.py"],
        cwd=tmp_path, capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.exists()
    return out


SMALL = {
    "source": {"name": "SATRE specification", "version": "2.0.1", "url": "https://example.org/"},
    "controls": {
        "good": {"title": "Good", "modules": ["m.py"], "tests": ["tests/unit/test_sample.py::test_ok", "tests/unit/test_sample.py::test_param"]},  # noqa: E501
        "bad": {"title": "Bad", "modules": ["m.py"], "tests": ["tests/unit/test_sample.py::test_bad"]},  # noqa: E501
        "absent": {"title": "Absent", "modules": ["m.py"], "tests": ["tests/unit/test_sample.py::test_skipped", "tests/unit/test_other.py"]},  # noqa: E501
        "partly": {"title": "Partly", "modules": ["m.py"], "tests": ["tests/unit/test_sample.py::test_inside", "tests/unit/test_other.py"]},  # noqa: E501
    },
    "safes": [
        {"id": s, "title": s, "claim": s, "controls": [c]}
        for s, c in [("people", "good"), ("projects", "bad"), ("settings", "absent"),
                     ("data", "partly"), ("outputs", "good")]
    ],
    "statements": [
        {"id": "1.1", "summary": "met", "status": "implemented", "controls": ["good"]},
        {"id": "1.2", "summary": "failing", "status": "implemented", "controls": ["good", "bad"]},
        {"id": "1.3", "summary": "unproven", "status": "implemented", "controls": ["partly"]},
        {"id": "1.4", "summary": "no", "status": "not_met", "reason": "not built"},
    ],
}  # fmt: skip


def test_the_shipped_catalogue_is_valid_and_names_only_tests_and_modules_that_exist():
    cat = catalogue.load()
    assert [s.id for s in cat.safes] == ["people", "projects", "settings", "data", "outputs"]
    assert catalogue.missing_references(cat, REPO) == []
    assert {s.status for s in cat.statements} == {"implemented", "not_met"}


def test_a_reference_to_a_renamed_test_is_reported(tmp_path):
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "unit" / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "m.py").write_text("")
    cat = catalogue.parse(SMALL)
    assert catalogue.missing_references(cat, tmp_path) == [
        "controls.absent: no test file tests/unit/test_other.py",
        "controls.partly: no test file tests/unit/test_other.py",
    ]
    (tmp_path / "m.py").unlink()
    assert "controls.good: no module m.py" in catalogue.missing_references(cat, tmp_path)


def test_an_invalid_catalogue_lists_every_problem_with_its_path():
    bad = {
        "source": {"name": "x"},
        "controls": {"c": {"title": "", "modules": "m.py", "tests": []}},
        "safes": [{"id": "people", "title": "P", "claim": "c", "controls": ["c", "nope"]}],
        "statements": [
            {"id": "1", "summary": "s", "status": "implemented", "controls": []},
            {"id": "1", "summary": "s", "status": "not_met"},
            {"id": "2", "summary": "s", "status": "done"},
        ],
    }
    with pytest.raises(catalogue.CatalogueError) as err:
        catalogue.parse(bad)
    assert err.value.problems == [
        "source.version: required text",
        "source.url: required text",
        "controls.c.title: required text",
        "controls.c.modules: must be a list of non-empty strings",
        "controls.c.tests: a control needs at least one proving test",
        "safes[0].controls[1]: unknown control 'nope'",
        "statements[0].controls: an implemented statement names its controls",
        "statements[1].id: 1 is listed twice",
        "statements[1].reason: a statement not met says why",
        "statements[2].status: must be one of implemented, not_met",
        "safes: the Five Safes are five, found 1",
    ]


def test_junit_of_a_real_run_is_read_and_matched(tmp_path):
    results = junit.read(run_sample(tmp_path))
    outcomes = {r.nodeid: r.outcome for r in results}
    assert outcomes == {
        "tests.unit.test_sample::test_ok": "passed",
        "tests.unit.test_sample::test_bad": "failed",
        "tests.unit.test_sample::test_param[1]": "passed",
        "tests.unit.test_sample::test_param[2]": "passed",
        "tests.unit.test_sample::test_skipped": "skipped",
        "tests.unit.test_sample.TestGroup::test_inside": "passed",
    }
    names = lambda ref: sorted(r.name for r in junit.matching(ref, results))  # noqa: E731
    assert names("tests/unit/test_sample.py::test_param") == ["test_param[1]", "test_param[2]"]
    assert names("tests/unit/test_sample.py::test_inside") == ["test_inside"]
    assert names("tests/unit/test_sample.py::test_o") == []  # a prefix is not a match
    assert len(names("tests/unit/test_sample.py")) == 6
    assert names("tests/unit/test_sampl.py") == []
    assert junit.totals(results) == {"passed": 4, "failed": 1, "error": 0, "skipped": 1}


def test_a_file_that_is_not_junit_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.xml"
    bad.write_text("<html></html>")
    with pytest.raises(junit.JUnitError, match="not JUnit XML"):
        junit.read(bad)
    bad.write_text("<!DOCTYPE x [<!ENTITY a 'aaaa'>]><testsuites>&a;</testsuites>")
    with pytest.raises(junit.JUnitError, match="not a readable JUnit XML"):
        junit.read(bad)


def test_the_report_joins_claims_and_results_whole(tmp_path):
    results = junit.read(run_sample(tmp_path))
    data = report.build(catalogue.parse(SMALL), results, None, junit_files=["r.xml"],
                        generated_at=__import__("datetime").datetime(2026, 12, 1))  # fmt: skip
    assert {c: v["status"] for c, v in data["controls"].items()} == {
        "good": "proven",
        "bad": "failing",
        "absent": "not proven",
        "partly": "partly proven",
    }
    assert [(s["id"], s["status"]) for s in data["safes"]] == [
        ("people", "proven"),
        ("projects", "failing"),
        ("settings", "not proven"),
        ("data", "partly proven"),
        ("outputs", "proven"),
    ]
    assert data["statements"] == [
        {"id": "1.1", "summary": "met", "status": "met", "controls": ["good"], "reason": ""},
        {"id": "1.2", "summary": "failing", "status": "failing", "controls": ["good", "bad"],
         "reason": ""},
        {"id": "1.3", "summary": "unproven", "status": "not proven in this run",
         "controls": ["partly"], "reason": ""},
        {"id": "1.4", "summary": "no", "status": "not met", "controls": [],
         "reason": "not built"},
    ]  # fmt: skip
    assert data["statement_counts"] == {
        "met": 1,
        "failing": 1,
        "not proven in this run": 1,
        "not met": 1,
    }
    bad = data["controls"]["bad"]["tests"][0]
    assert bad["status"] == "failed" and "<script>" in bad["cases"][0]["message"]
    html = report.render_html(data)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_firewall_fact_needs_the_jump_and_the_closing_rule():
    lines = ["-N SDE-INPUT"] + [
        "-A SDE-INPUT " + " ".join(rule) for rule in firewall.rules([8081, 8000])
    ]
    ok = facts.chain_state(lines, jumped=True)
    assert ok["ok"] is True and ok["open_ports"] == [8000, 8081] and ok["rules"] == 5
    assert facts.chain_state(lines, jumped=False)["ok"] is False
    assert facts.chain_state(lines[:-2], jumped=True)["ok"] is False  # no reject rule at the end
    assert facts.chain_state([], jumped=True) == {
        "ok": False,
        "detail": "chain SDE-INPUT is not installed",
        "rules": 0,
    }


def test_sde_admin_evidence_writes_the_report_with_live_facts(tmp_path, monkeypatch):
    monkeypatch.setenv("SDE_STATE_DIR", str(tmp_path / "state"))
    db = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    runner = CliRunner()
    seeded = runner.invoke(main, ["--db", db, "demo-seed", str(tmp_path / "data")])
    assert seeded.exit_code == 0, seeded.output
    xml = run_sample(tmp_path / "run")
    out = tmp_path / "evidence"
    result = runner.invoke(main, ["--db", db, "evidence", "--junit", str(xml), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "SATRE statements" in result.output
    data = json.loads((out / "report.json").read_text())
    assert data["facts"]["audit"]["ok"] is True
    assert data["facts"]["audit"]["events"] > 0
    assert {x["name"] for x in data["facts"]["optouts"]["lists"]} == {
        "national",
        "local:demo-trust",
    }
    assert [a["project"] for a in data["facts"]["agreements"]["in_force"]] == ["diabetes-outcomes"]
    assert data["facts"]["firewall"]["ok"] in (True, False, None)
    assert "3.2.04" in (out / "index.html").read_text()
    # a missing registry is one clear error, and nothing is written
    empty = tmp_path / "none"
    missing = runner.invoke(
        main,
        ["--db", f"sqlite:///{tmp_path / 'no.sqlite'}", "evidence", "--junit", str(xml),
         "--out", str(empty)],
    )  # fmt: skip
    assert missing.exit_code == 1 and "no registry database" in missing.output
    assert not empty.exists() and not (tmp_path / "no.sqlite").exists()
