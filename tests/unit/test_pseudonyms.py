"""Per-project pseudonyms: keyed HMAC-SHA256, the key file's safety, SQL equal to Python."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import pytest

from sde_spawner.datasets.extract import connect
from sde_spawner.datasets.nhs_number import is_valid, valid_sql, validate_lines, with_check_digit
from sde_spawner.datasets.pseudonyms import (
    PseudonymKeyError,
    key_id,
    load_or_create_master_key,
    pads,
    project_key,
    pseudonym,
    pseudonym_sql,
)


def test_master_key_is_created_0600_in_a_0700_directory_and_kept(tmp_path):
    path = tmp_path / "keys" / "master.key"
    key = load_or_create_master_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_master_key(path) == key  # same key on every later use


def test_unsafe_key_files_are_refused(tmp_path):
    path = tmp_path / "master.key"
    load_or_create_master_key(path)
    path.chmod(0o644)
    with pytest.raises(PseudonymKeyError, match="readable by others"):
        load_or_create_master_key(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(PseudonymKeyError, match="must hold 32 bytes"):
        load_or_create_master_key(path)
    link = tmp_path / "link.key"
    os.symlink(path, link)
    with pytest.raises(PseudonymKeyError, match="cannot be read"):
        load_or_create_master_key(link)


def test_projects_get_different_keys_and_pseudonyms_stable_within_one():
    master = bytes(range(32))
    a, b = project_key(master, "study-a"), project_key(master, "study-b")
    assert a != b and key_id(a) != key_id(b)
    assert pseudonym(a, "9434765919") == pseudonym(a, "9434765919")
    assert pseudonym(a, "9434765919") != pseudonym(b, "9434765919")
    assert (
        pseudonym(a, "9434765919") == (hmac.new(a, b"9434765919", hashlib.sha256).hexdigest()[:32])
    )
    assert key_id(a) not in a.hex()  # the public id is not a piece of the key


def test_sql_pseudonym_equals_the_python_reference():
    key = project_key(b"m" * 32, "p")
    ipad, opad = pads(key)
    numbers = ["9434765919", "9999999999", "4010232137", ""]
    with connect(threads=1) as con:
        got = [
            con.execute(
                f"SELECT {pseudonym_sql('$v')}", {"v": n, "ipad": ipad, "opad": opad}
            ).fetchone()[0]
            for n in numbers
        ]
    assert got == [pseudonym(key, n) for n in numbers]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("9434765919", True),
        ("4010232137", True),
        ("9434765918", False),  # wrong check digit
        ("943476591", False),  # nine digits
        ("94347659190", False),
        ("943476591X", False),
        ("1000000010", False),  # check digit would be 10: no valid number
        ("", False),
    ],
)
def test_modulus_11_in_python_and_sql_agree(value, ok):
    assert is_valid(value) is ok
    with connect(threads=1) as con:
        assert (
            con.execute(f"SELECT coalesce({valid_sql('$v')}, false)", {"v": value}).fetchone()[0]
            is ok
        )


def test_check_digit_completion():
    assert with_check_digit("943476591") == "9434765919"
    assert with_check_digit("100000001") is None


def test_every_bad_line_is_reported_with_its_number():
    got = validate_lines(
        ["9434765919\n", "\n", "12345\n", "943 476 5919\n", "9434765918\n", "abc\n", "4010232137"]
    )
    assert got.numbers == ("9434765919", "4010232137")
    assert got.duplicates == 1  # the spaced form of the first number
    assert got.errors == (
        "line 3: '12345' is not 10 digits",
        "line 5: 9434765918 fails the NHS number Modulus 11 check",
        "line 6: 'abc' is not 10 digits",
    )
