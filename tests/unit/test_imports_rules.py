"""The import rules (sde_airlock.imports): plain names only, allowed types, sizes, and the
airlock's byte inspector deciding what a file really is."""

from __future__ import annotations

import pytest

from sde_airlock.imports import DEFAULT_IMPORT_SUFFIXES, ImportRules

RULES = ImportRules()


def codes(problems) -> list[str]:
    return [p.code for p in problems]


@pytest.mark.parametrize(
    "name",
    [
        "../x.csv",
        "a/b.csv",
        "a\\b.csv",
        "..",
        ".bashrc",
        "x\x00.csv",
        "x\u202e.csv",
        "x.csv ",
        "-rf.csv",
        "a..b.csv",
        "",
        "x" * 300 + ".csv",
    ],
)
def test_names_that_could_point_elsewhere_are_refused(name):
    assert codes(RULES.check_name(name)) == ["bad_name"]


@pytest.mark.parametrize("name", ["codes.csv", "Lookup Table (v2).csv", "icd10_2024-03.tsv"])
def test_plain_names_pass(name):
    assert RULES.check_name(name) == []


def test_programs_and_archives_are_refused_by_name_whatever_the_policy():
    for name in ("tool.exe", "lib.so", "run.sh", "data.zip", "x.tar", "y.tgz"):
        assert codes(RULES.check_type(name)) == ["type_not_allowed"], name
    with pytest.raises(ValueError, match="cannot be an allowed import type"):
        ImportRules(allowed_suffixes=(".csv", ".zip"))
    assert RULES.check_type("codes.csv") == [] and RULES.check_type("model.r") == []
    assert ".py" in DEFAULT_IMPORT_SUFFIXES


def test_the_bytes_decide():
    elf = b"\x7fELF\x02\x01\x01" + b"\x00" * 100
    assert "executable" in codes(RULES.check_bytes("codes.csv", elf).problems)
    assert "archive" in codes(
        RULES.check_bytes("notes.txt", b"\x1f\x8b\x08" + b"\x00" * 50).problems
    )
    assert "executable" in codes(RULES.check_bytes("load.py", b"#!/usr/bin/env python\n").problems)
    assert codes(RULES.check_bytes("x.json", b"{not json").problems) == ["type_mismatch"]
    assert RULES.check_bytes("load.py", b"import csv\n").ok  # control


def test_a_request_lists_every_problem():
    rules = ImportRules(max_file_bytes=10, max_files=2, max_request_bytes=15)
    got = codes(rules.check_request("", None, [("a.csv", 11), ("a.csv", 5), ("b.exe", 1)]))
    assert sorted(got) == sorted(
        [
            "justification",
            "too_many_files",
            "too_large",
            "duplicate",
            "type_not_allowed",
            "too_large",
        ]
    )
    assert rules.check_request("why", "", [("a.csv", 10)]) == []


def test_settings_are_read_and_bad_ones_named():
    rules = ImportRules.from_env(
        {"SDE_IMPORT_ALLOWED_TYPES": ".csv, R", "SDE_IMPORT_MAX_FILES": "3"}
    )
    assert rules.allowed_suffixes == (".csv", ".r") and rules.max_files == 3
    with pytest.raises(ValueError, match="SDE_IMPORT_MAX_FILE_BYTES"):
        ImportRules.from_env({"SDE_IMPORT_MAX_FILE_BYTES": "lots"})
