"""Which files may leave (path confinement, file types, policy) and the snapshot they leave as.

Pure file-system tests of :mod:`egress_extension.files`: every refusal carries one code and
one readable reason; a snapshot fixes the bytes of the open file by their size and SHA-256
without copying them, and notices when the file is written to afterwards.
"""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from egress_extension.files import (
    ExportPolicy,
    ExportRefused,
    list_candidates,
    open_confined,
    relative_path,
    take_snapshot,
)
from sde_airlock.rules import ExportRules


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    (root / "results.csv").write_text("region,n\nnorth,120\n")
    (root / "sub").mkdir()
    (root / "sub" / "table.tsv").write_text("a\tb\n")
    outside = tmp_path / "extract"
    outside.mkdir()
    (outside / "patients.csv").write_text("nhs_number,hba1c\n999,52\n")
    return root


@pytest.fixture
def policy(home):
    return ExportPolicy(root=str(home))


def refusal(policy, path) -> ExportRefused:
    with pytest.raises(ExportRefused) as raised:
        fd, _st, _rel = open_confined(policy, path)
        os.close(fd)
    return raised.value


def test_a_regular_file_in_home_opens_with_its_relative_path(policy, home):
    for given in ("results.csv", "./results.csv", str(home / "results.csv")):
        fd, st, rel = open_confined(policy, given)
        os.close(fd)
        assert rel == "results.csv" and stat.S_ISREG(st.st_mode)
    fd, _st, rel = open_confined(policy, "sub//table.tsv")
    os.close(fd)
    assert rel == "sub/table.tsv"


@pytest.mark.parametrize(
    ("path", "code", "status", "words"),
    [
        ("../data/patients.csv", "parent", 400, "'..' is not allowed"),
        ("sub/../../data/patients.csv", "parent", 400, "'..' is not allowed"),
        ("/etc/passwd", "outside", 403, "outside your home directory"),
        ("", "bad_path", 400, "no file path given"),
        ("nope.csv", "missing", 400, "no such file"),
        ("sub", "directory", 400, "is a directory"),
        ("/", "outside", 403, "outside your home directory"),
    ],
)
def test_paths_that_do_not_name_a_file_in_home_are_refused(policy, path, code, status, words):
    refused = refusal(policy, path)
    assert (refused.code, refused.status) == (code, status)
    assert words in refused.message


def test_the_home_directory_itself_is_not_a_file(policy, home):
    refused = refusal(policy, str(home) + "/")
    assert refused.code == "directory" and "home directory, not a file" in refused.message


def test_an_absolute_path_with_dotdot_under_home_is_refused(policy, home):
    refused = refusal(policy, f"{home}/../data/patients.csv")
    assert refused.code == "parent"


def test_a_symlink_to_a_file_outside_home_is_refused_naming_its_target(policy, home, tmp_path):
    (home / "patients.csv").symlink_to(tmp_path / "extract" / "patients.csv")
    (home / "passwd.txt").symlink_to("/etc/passwd")
    refused = refusal(policy, "patients.csv")
    assert refused.code == "symlink"
    assert f"symbolic link to {tmp_path / 'extract' / 'patients.csv'}" in refused.message
    assert "outside your home directory" in refused.message
    assert refusal(policy, "passwd.txt").code == "symlink"


def test_a_symlink_inside_home_is_refused_too_but_says_export_the_file(policy, home):
    (home / "alias.csv").symlink_to("results.csv")
    refused = refusal(policy, "alias.csv")
    assert refused.code == "symlink" and "export the file itself" in refused.message


def test_a_symlinked_folder_leading_outside_is_not_followed(policy, home, tmp_path):
    (home / "data").symlink_to(tmp_path / "extract")
    refused = refusal(policy, "data/patients.csv")
    assert refused.code == "symlink" and "data is a symbolic link" in refused.message


def test_a_file_with_two_hard_links_is_refused(policy, home):
    os.link(home / "results.csv", home / "copy.csv")
    refused = refusal(policy, "copy.csv")
    assert refused.code == "hardlink" and "2 hard links" in refused.message


def test_a_fifo_is_refused_without_blocking(policy, home):
    os.mkfifo(home / "pipe.csv")
    refused = refusal(policy, "pipe.csv")
    assert refused.code == "special" and "named pipe" in refused.message


def test_a_socket_is_refused(policy, home):
    import socket

    path = home / "s.csv"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        refused = refusal(policy, "s.csv")
    assert refused.code == "special" and "a socket" in refused.message


def test_a_device_is_refused():
    refused = refusal(
        ExportPolicy(root="/dev", rules=ExportRules(allowed_suffixes=("null",))), "null"
    )
    assert refused.code == "special" and "a device" in refused.message


def test_a_file_over_the_size_limit_is_refused_before_reading(policy, home):
    big = home / "big.csv"
    with open(big, "wb") as fh:  # sparse: nothing is written
        fh.truncate(200 * 1024 * 1024 + 1)
    refused = refusal(policy, "big.csv")
    assert refused.code == "too_large"
    assert "200.0 MiB" in refused.message and "over the export limit" in refused.message


@pytest.mark.parametrize("name", ["cohort.sqlite", "bundle.zip", "model.pkl", "README"])
def test_file_types_outside_the_policy_are_refused(policy, home, name):
    (home / name).write_bytes(b"x")
    refused = refusal(policy, name)
    assert refused.code == "type_not_allowed" and "may not be exported" in refused.message
    assert ".csv" in refused.message  # says what is allowed


def test_suffixes_are_case_insensitive_and_configurable(home):
    (home / "FIG.PNG").write_bytes(b"\x89PNG")
    fd, _st, _rel = open_confined(ExportPolicy(root=str(home)), "FIG.PNG")
    os.close(fd)
    refused = refusal(
        ExportPolicy(root=str(home), rules=ExportRules(allowed_suffixes=(".csv",))), "FIG.PNG"
    )
    assert refused.code == "type_not_allowed" and "(allowed: .csv)" in refused.message


def test_relative_path_refuses_nul_bytes(policy):
    with pytest.raises(ExportRefused) as raised:
        relative_path(policy, "a\x00.csv")
    assert raised.value.code == "bad_path"


def test_a_snapshot_is_the_size_and_sha256_of_the_open_file(policy, home):
    data = os.urandom(3 * 1024 * 1024 + 17)
    (home / "blob.csv").write_bytes(data)
    fd, _st, _rel = open_confined(policy, "blob.csv")
    try:
        os.lseek(fd, 5, os.SEEK_SET)  # the descriptor's position does not matter
        snap = take_snapshot(fd, chunk=1024 * 1024)
        assert (snap.fd, snap.size) == (fd, len(data))
        assert snap.sha256 == hashlib.sha256(data).hexdigest()
        assert not snap.changed()
    finally:
        os.close(fd)
    assert snap.changed()  # a closed descriptor counts as changed, never as unchanged


def append(path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


@pytest.mark.parametrize(
    ("edit", "changed"),
    [
        pytest.param(lambda p: p.write_bytes(b"b" * 4096), True, id="rewritten-same-size"),
        pytest.param(lambda p: os.truncate(p, 10), True, id="truncated"),
        pytest.param(lambda p: append(p, b"more"), True, id="appended"),
        pytest.param(lambda p: os.utime(p, ns=(0, 0)), False, id="touched-only"),
    ],
)
def test_a_snapshot_knows_whether_the_bytes_changed_since(policy, home, edit, changed):
    path = home / "t.csv"
    path.write_bytes(b"a" * 4096)
    fd, _st, _rel = open_confined(policy, "t.csv")
    try:
        snap = take_snapshot(fd)
        edit(path)
        assert snap.changed() is changed
    finally:
        os.close(fd)


def test_snapshot_of_an_empty_file(policy, home):
    (home / "empty.txt").write_bytes(b"")
    fd, _st, _rel = open_confined(policy, "empty.txt")
    snap = take_snapshot(fd)
    os.close(fd)
    assert (snap.size, snap.sha256) == (0, hashlib.sha256(b"").hexdigest())


def test_snapshot_refuses_a_file_that_grew_past_the_limit(policy, home):
    (home / "grows.csv").write_bytes(b"x" * 5000)
    fd, _st, _rel = open_confined(policy, "grows.csv")
    with pytest.raises(ExportRefused) as raised:
        take_snapshot(fd, max_size=4096, chunk=1024)
    os.close(fd)
    assert raised.value.code == "too_large"


def test_candidates_list_files_with_reasons_and_skip_hidden(policy, home, tmp_path):
    (home / ".secret.csv").write_text("x")
    (home / "db.sqlite").write_bytes(b"x")
    (home / "link.csv").symlink_to(tmp_path / "extract" / "patients.csv")
    items = {i["path"]: i for i in list_candidates(policy)}
    assert ".secret.csv" not in items
    assert items["results.csv"]["exportable"] is True
    assert items["sub/table.tsv"]["exportable"] is True
    assert items["db.sqlite"]["exportable"] is False and ".sqlite" in items["db.sqlite"]["reason"]
    assert (
        items["link.csv"]["exportable"] is False and "symbolic link" in items["link.csv"]["reason"]
    )


def test_a_file_swapped_between_check_and_open_is_refused(policy, home, monkeypatch):
    (home / "other.csv").write_text("something else\n")
    real_open = os.open

    def racing_open(path, flags, *args, **kwargs):
        if path == "results.csv" and kwargs.get("dir_fd") is not None:
            os.replace(home / "other.csv", home / "results.csv")  # after the checks
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", racing_open)
    refused = refusal(policy, "results.csv")
    assert (refused.code, refused.status) == ("changed", 409)
    assert "changed while it was being checked" in refused.message


def test_a_symlink_swapped_in_between_check_and_open_is_not_followed(
    policy, home, tmp_path, monkeypatch
):
    real_open = os.open

    def racing_open(path, flags, *args, **kwargs):
        if path == "results.csv" and kwargs.get("dir_fd") is not None:
            os.unlink(home / "results.csv")
            os.symlink(tmp_path / "extract" / "patients.csv", home / "results.csv")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", racing_open)
    refused = refusal(policy, "results.csv")
    assert refused.code == "changed" and "Too many levels of symbolic links" in refused.message


def test_svg_is_not_exportable_by_default_its_points_are_the_data(home):
    (home / "scatter.svg").write_text('<svg><circle cx="52.1" cy="61.3" r="1"/></svg>')
    refused = refusal(ExportPolicy(root=str(home)), "scatter.svg")
    assert refused.code == "type_not_allowed" and ".svg may not be exported" in refused.message


@pytest.mark.parametrize("name", ["cohort.parquet", "paper.pdf"])
def test_formats_checkers_cannot_see_are_not_exportable_by_default(home, name):
    (home / name).write_bytes(b"PAR1\x00\x01" if name.endswith("parquet") else b"%PDF-1.7\n")
    refused = refusal(ExportPolicy(root=str(home)), name)
    assert refused.code == "type_not_allowed" and "may not be exported" in refused.message


@pytest.mark.parametrize(
    ("name", "data", "code", "words"),
    [
        ("results.csv", b"\x7fELF\x02\x01\x01" + b"\x00" * 600, "type_mismatch", "programs are"),
        ("fig.png", b"PK\x03\x04" + b"\x00" * 600, "type_mismatch", "archives are never"),
        ("analysis.ipynb", b'{"cells": [', "type_mismatch", "not valid JSON"),
    ],
)
def test_a_snapshot_refuses_bytes_that_are_not_what_the_name_says(home, name, data, code, words):
    """Early feedback in the workspace: the same byte check the service makes on upload."""
    (home / name).write_bytes(data)
    fd, _st, rel = open_confined(ExportPolicy(root=str(home)), name)
    try:
        with pytest.raises(ExportRefused) as raised:
            take_snapshot(fd, inspect=rel)
        assert take_snapshot(fd).size == len(data)  # without the check: only a digest
    finally:
        os.close(fd)
    refused = raised.value
    assert (refused.code, refused.status, refused.path) == (code, 422, name)
    assert refused.message.startswith(f"{name}: ") and words in refused.message


def test_a_snapshot_of_a_real_csv_passes_the_byte_check(policy, home):
    fd, _st, rel = open_confined(policy, "results.csv")
    try:
        snap = take_snapshot(fd, inspect=rel, chunk=3)
    finally:
        os.close(fd)
    assert snap.sha256 == hashlib.sha256(b"region,n\nnorth,120\n").hexdigest()
