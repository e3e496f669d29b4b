"""The export rules (:mod:`sde_airlock.rules`): one set of defaults, settings read whole, and
every problem of a request listed at once."""

from __future__ import annotations

import pytest

from sde_airlock.rules import (
    EXPORT_SETTINGS,
    DeclaredFile,
    ExportRules,
    Problem,
    summary,
)

ALLOWED = ".csv, .tsv, .txt, .md, .png, .jpg, .jpeg, .ipynb, .html, .json"


def test_the_defaults_are_one_set_and_the_same_with_no_settings():
    assert ExportRules.from_env({}) == ExportRules()
    assert ExportRules().to_dict() == {
        "allowed_suffixes": [
            ".csv",
            ".tsv",
            ".txt",
            ".md",
            ".png",
            ".jpg",
            ".jpeg",
            ".ipynb",
            ".html",
            ".json",
        ],
        "max_file_bytes": 200 * 1024 * 1024,
        "max_files": 20,
        "max_justification": 10_000,
        "max_description": 5_000,
        "max_path": 1024,
    }


def test_settings_are_read_whole_and_round_trip():
    env = {
        "SDE_EXPORT_ALLOWED_TYPES": "csv, .PNG,.pdf",
        "SDE_EXPORT_MAX_FILE_BYTES": "1_048_576",
        "SDE_EXPORT_MAX_FILES": "3",
        "SDE_EXPORT_MAX_JUSTIFICATION": "100",
        "SDE_EXPORT_MAX_DESCRIPTION": "50",
        "SDE_EXPORT_MAX_PATH": "64",
        "SDE_SDC_THRESHOLD": "10",  # not ours
    }
    rules = ExportRules.from_env(env)
    assert rules == ExportRules(
        allowed_suffixes=(".csv", ".png", ".pdf"),
        max_file_bytes=1_048_576,
        max_files=3,
        max_justification=100,
        max_description=50,
        max_path=64,
    )
    assert set(rules.to_env()) == set(EXPORT_SETTINGS)
    assert ExportRules.from_env(rules.to_env()) == rules


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SDE_EXPORT_MAX_FILES": "many"}, "SDE_EXPORT_MAX_FILES='many' is not a whole number"),
        ({"SDE_EXPORT_MAX_FILE_BYTES": "0"}, "max_file_bytes must be a positive whole number"),
        (
            {"SDE_EXPORT_ALLOWED_TYPES": ".csv,.zip"},
            ".zip cannot be an allowed export type: archives are never exported",
        ),
        ({"SDE_EXPORT_ALLOWED_TYPES": ".csv,.exe"}, "programs are never exported"),
        ({"SDE_EXPORT_ALLOWED_TYPES": ".csv,.tar.gz"}, ".tar.gz cannot be an allowed"),
        ({"SDE_EXPORT_ALLOWED_TYPES": ".csv,.nii.txt"}, "'.nii.txt' is not one file name ending"),
    ],
)
def test_a_bad_setting_is_one_clear_error(env, message):
    with pytest.raises(ValueError, match=r"export settings|not a whole number") as raised:
        ExportRules.from_env(env)
    assert message in str(raised.value)


def test_types_by_name_case_insensitive_and_never_archives_or_programs():
    rules = ExportRules()
    assert rules.check_type("out/Fig.PNG") == []
    assert rules.check_type("tool.exe") == [
        Problem(
            "type_not_allowed",
            "tool.exe: files of type .exe may not be exported under any policy: programs are "
            f"never exported (allowed: {ALLOWED})",
            "tool.exe",
        )
    ]
    assert rules.check_type("scatter.svg") == [
        Problem(
            "type_not_allowed",
            "scatter.svg: files of type .svg may not be exported under this project's policy "
            f"(allowed: {ALLOWED})",
            "scatter.svg",
        )
    ]
    assert rules.check_type("README")[0].message.startswith("README: files of type (none)")
    assert [p.code for p in rules.check_type("bundle.tar.gz")] == ["type_not_allowed"]


def test_a_request_lists_every_problem():
    rules = ExportRules(max_files=3, max_description=10, max_path=40)
    files = [
        DeclaredFile("tool.exe", "a program", 10),
        DeclaredFile("../data/patients.csv", "rows", 10),
        DeclaredFile("results.csv", "", 10),
        DeclaredFile("big.csv", "far too long a description", 300 * 1024 * 1024),
        DeclaredFile("results.csv", "again", 1),
        DeclaredFile("a\nb.csv", "newline", 1),
        DeclaredFile("x" * 41 + ".csv", "long", 1),
    ]
    problems = rules.check_request(" ", files)
    assert [(p.code, p.path) for p in problems] == [
        ("justification", ""),
        ("too_many_files", ""),
        ("type_not_allowed", "tool.exe"),
        ("bad_path", "../data/patients.csv"),
        ("description", "results.csv"),
        ("description", "big.csv"),
        ("too_large", "big.csv"),
        ("duplicate", "results.csv"),
        ("bad_path", "a\nb.csv"),
        ("bad_path", ""),
    ]
    assert problems[1].message == "one request holds at most 3 files (7 given)"
    assert problems[6].message == (
        "big.csv is 300.0 MiB, over the export limit of 200.0 MiB per file"
    )
    assert summary(problems).startswith("10 problems: a justification is required")
    assert summary(problems[:1]) == problems[0].message


def test_a_good_request_has_no_problems_and_the_limits_are_inclusive():
    rules = ExportRules(max_files=2, max_justification=5, max_description=5)
    files = [DeclaredFile("out/t1.csv", "12345", rules.max_file_bytes), DeclaredFile("f.png", "x")]
    assert rules.check_request("12345", files) == []
    assert [p.code for p in rules.check_request("123456", files)] == ["justification"]
    assert [p.code for p in rules.check_request("j", [])] == ["no_files"]
    assert [p.code for p in rules.check_files([DeclaredFile(None, "d")])] == ["bad_path"]


def test_rules_check_bytes_with_the_files_own_path():
    check = ExportRules().check_bytes("out/results.csv", b"\x7fELF" + b"\x00" * 600)
    assert check.name == "out/results.csv"
    assert [p.code for p in check.problems] == ["type_mismatch", "executable"]
