"""``sde-admin outputs check``: the checkers' disclosure checks on files, with the exit codes
and the JSON shape that independent acceptance checks read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from sde_spawner.cli import main

NHS = "9434765919"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["outputs", "check", *args])
    return result.exit_code, result.output


def test_a_passing_file_exits_0_and_a_failing_one_3(tmp_path):
    safe = tmp_path / "safe.csv"
    safe.write_text("region,n\nnorth,120\nsouth,45\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"region,n\nnorth,120\nsouth,4\nref {NHS},50\n")
    code, out = run(str(safe))
    assert code == 0 and f"{safe}: pass" in out
    code, out = run(str(safe), str(bad), "--json")
    assert code == 3
    doc = json.loads(out)
    assert doc["status"] == "fail"
    assert doc["files"][str(safe)]["status"] == "pass"
    report = doc["files"][str(bad)]
    assert report["status"] == "fail"
    by_rule = {f["rule"]: f for f in report["findings"]}
    assert {"threshold", "nhs_number"} <= set(by_rule)
    assert set(by_rule["threshold"]) >= {"rule", "severity", "location", "message"}
    assert by_rule["threshold"]["severity"] == "fail"
    assert by_rule["threshold"]["location"] == "column 'n'"


def test_against_an_earlier_release_finds_differencing(tmp_path):
    first = tmp_path / "release1.csv"
    first.write_text("region,n\nnorth,120\nsouth,45\n")
    second = tmp_path / "now.csv"
    second.write_text("region,n\nnorth,117\nsouth,45\n")
    assert run(str(second))[0] == 0
    code, out = run(str(second), "--against", str(first), "--json")
    assert code == 3
    (finding,) = json.loads(out)["files"][str(second)]["findings"]
    assert finding["rule"] == "differencing" and "release1.csv" in finding["message"]


def test_options_override_the_settings(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("g,n\na,12\nb,0\n")
    assert run(str(f), "--zeros-are-not-disclosive")[0] == 0
    assert run(str(f), "--threshold", "15")[0] == 3
    code, out = run(str(f), "--zeros-are-not-disclosive", "--rounding", "5", "--json")
    assert code == 3 and "rounding" in out
    code, out = run(str(f), "--rounding", "seven")
    assert code == 2 and "rounding" in out


def test_bad_input_is_one_clear_error(tmp_path):
    code, out = run(str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in out
    code, out = run(str(tmp_path))
    assert code == 2
    code, out = run()
    assert code == 2 and "FILES" in out


def test_the_console_script_runs_the_same_code(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("call 07700 900123\n")
    env = {**os.environ, "SDE_SDC_THRESHOLD": "10"}
    res = subprocess.run(
        [sys.executable, "-m", "sde_spawner.cli", "outputs", "check", "--json", str(f)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 3, res.stderr
    (finding,) = json.loads(res.stdout)["files"][str(f)]["findings"]
    assert finding["rule"] == "phone"
    help_text = subprocess.run(
        [sys.executable, "-m", "sde_spawner.cli", "outputs", "check", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_text.returncode == 0 and "--against" in help_text.stdout


def test_counts_in_a_semicolon_csv_and_in_json_fail_through_the_command(tmp_path):
    semicolon = tmp_path / "excel_export.csv"
    semicolon.write_text("region;n\nnorth;120\nsouth;4\n")
    as_json = tmp_path / "counts.json"
    as_json.write_text(json.dumps({"n": {"north": 120, "south": 4}}))  # DataFrame.to_json()
    code, out = run(str(semicolon), str(as_json), "--json")
    assert code == 3
    files = json.loads(out)["files"]
    for path in (semicolon, as_json):
        report = files[str(path)]
        assert report["status"] == "fail"
        assert [f["rule"] for f in report["findings"]] == ["threshold"], report
