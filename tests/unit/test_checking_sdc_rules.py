"""The disclosure checks without false passes: one regression test per case found by trying
the checks on ordinary outputs, and the new rules (rounding, secondary suppression,
differencing, type mismatch, active content, image metadata), each with a near miss.

Rule ids are the public vocabulary of ``docs/disclosure-rules.md``.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

from sde_airlock import sdc
from sde_airlock.sdc import tables as sdc_tables
from sde_airlock.sdc import values as sdc_values

NHS = "9434765919"  # valid check digit
NOT_NHS = "9434765918"


def rules(report: sdc.Report) -> set[tuple[str, str]]:
    return {(f.rule, f.status) for f in report.findings}


def rule_ids(report: sdc.Report) -> set[str]:
    return {f.rule for f in report.findings}


def csv(text: str, **kw) -> sdc.Report:
    return sdc.check("t.csv", text.encode(), sdc.Rules(**kw))


def nb(*cells: dict, metadata: dict | None = None) -> bytes:
    return json.dumps(
        {"nbformat": 4, "nbformat_minor": 4, "metadata": metadata or {}, "cells": list(cells)}
    ).encode()


def code_cell(source: str = "x", outputs=(), metadata: dict | None = None, **extra) -> dict:
    return {
        "cell_type": "code",
        "metadata": metadata or {},
        "execution_count": 1,
        "source": source,
        "outputs": list(outputs),
        **extra,
    }


def result(bundle: dict) -> dict:
    return {"output_type": "execute_result", "metadata": {}, "execution_count": 1, "data": bundle}


# --- CSV header rows --------------------------------------------------------------------------


def test_nhs_numbers_in_the_first_rows_of_a_text_file_are_found():
    # Regression: "id,note" rows with text in every non-numeric column were folded into the
    # header (up to five of them) and never scanned.
    lines = "".join(f"{NHS},seen in clinic\n" for _ in range(5))
    report = csv("id,note\n" + lines)
    assert ("nhs_number", "fail") in rules(report)
    assert csv("id,note\n" + "".join(f"{NOT_NHS},seen\n" for _ in range(5))).status != "fail"


def test_a_pandas_multi_level_header_is_still_folded():
    report = csv(",count,count\nsex,female,male\nregion,,\nnorth,12,4\nsouth,30,40\n")
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert finding.cells == ((1, "count / male"),)


# --- notebooks: every part ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    [
        # text/plain beside an HTML output
        code_cell(outputs=[result({"text/html": "<b>ok</b>", "text/plain": f"id {NHS}"})]),
        code_cell(outputs=[result({"text/markdown": f"patient {NHS}"})]),
        code_cell(outputs=[result({"application/json": {"id": NHS}})]),
        code_cell(
            outputs=[
                {
                    "output_type": "error",
                    "ename": "KeyError",
                    "evalue": NHS,
                    "traceback": [f"KeyError: {NHS}"],
                }
            ]
        ),
        code_cell(source=f"lookup('{NHS}')"),
        {"cell_type": "raw", "metadata": {"format": "text/x-python"}, "source": f"{NHS}"},
        code_cell(outputs=[result({"application/vnd.custom+thing": {"v": NHS}})]),
        code_cell(metadata={"notes": f"{NHS}"}),
    ],
    ids=["plain-beside-html", "markdown", "json", "traceback", "source", "raw", "custom", "meta"],
)
def test_every_part_of_a_notebook_is_scanned(cell):
    report = sdc.check("a.ipynb", nb(cell))
    assert ("nhs_number", "fail") in rules(report), report.findings


def test_hidden_and_collapsed_cells_are_flagged_and_still_read():
    hidden = code_cell(
        outputs=[{"output_type": "stream", "name": "stdout", "text": f"{NHS}\n"}],
        metadata={"jupyter": {"outputs_hidden": True, "source_hidden": True}},
    )
    report = sdc.check("a.ipynb", nb(hidden))
    assert {("hidden_cell", "review"), ("nhs_number", "fail")} <= rules(report)
    assert "hidden_cell" not in rule_ids(sdc.check("a.ipynb", nb(code_cell())))


def test_attachments_and_unusual_notebook_metadata_are_flagged():
    md = {
        "cell_type": "markdown",
        "metadata": {},
        "source": "![x](attachment:t.csv)",
        "attachments": {"t.csv": {"text/plain": f"{NHS}\n"}},
    }
    report = sdc.check("a.ipynb", nb(md, metadata={"stash": "x" * 100}))
    assert {"attachment", "hidden_cell", "nhs_number"} <= rule_ids(report)


def test_markdown_comments_and_html_comments_are_read():
    md = {"cell_type": "markdown", "metadata": {}, "source": f"Fine <!-- {NHS} -->"}
    assert ("nhs_number", "fail") in rules(sdc.check("a.ipynb", nb(md)))
    html = f"<p>ok</p><!-- {NHS} --><template>{NHS}</template>".encode()
    assert ("nhs_number", "fail") in rules(sdc.check("a.html", html))


# --- tables printed as text -----------------------------------------------------------------

PRINTED = """   region    n
0   north  120
1   south    4
"""
MARKDOWN = """Results

| region | n   |
|--------|-----|
| north  | 120 |
| south  | 4   |
"""


def test_tables_printed_as_text_are_read_as_tables():
    out = {"output_type": "stream", "name": "stdout", "text": PRINTED}
    assert ("threshold", "fail") in rules(sdc.check("a.ipynb", nb(code_cell(outputs=[out]))))
    assert ("threshold", "fail") in rules(sdc.check("table.md", MARKDOWN.encode()))
    assert ("threshold", "fail") in rules(sdc.check("table.txt", PRINTED.encode()))
    safe = MARKDOWN.replace("| 4   |", "| 40  |")
    assert sdc.check("table.md", safe.encode()).status == "pass"


# --- identifiers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,rule",
    [
        ("call 07700 900123 today", "phone"),
        ("tel: +44 20 7946 0958", "phone"),
        ("(01632) 960123", "phone"),
        ("DOB: 12/03/1954", "date_of_birth"),
        ("born 1954-03-12 in Leeds", "date_of_birth"),
        ("date of birth 12 March 1954", "date_of_birth"),
        (f"NHS number {NHS}.", "nhs_number"),
        ("NHS number 943  476  5919, seen", "nhs_number"),
        ("943-476-5919;", "nhs_number"),
        ("9434 765 919", "nhs_number"),
        ("ref 943.476.5919", "nhs_number"),
        ("ref 943/476/5919.", "nhs_number"),
        ("lives at SW1A  1AA", "postcode"),
    ],
)
def test_identifiers_that_were_missed(text, rule):
    assert (rule, "fail") in rules(sdc.check("notes.txt", text.encode()))


@pytest.mark.parametrize(
    "text",
    [
        "n = 120 in 2024-03-12",
        "ref 12345678901234",
        "call extension 4471",
        "SW1A district",
        "p = 0.943476591",  # a float's decimals are not grouped 3-3-4
        "943.476/5919",  # mixed separators
    ],
)
def test_near_misses_are_not_identifiers(text):
    assert not rule_ids(sdc.check("notes.txt", text.encode())) & set(sdc_values.IDENTIFIER_KINDS)


def test_a_column_of_birth_dates_is_found_by_its_values():
    rows = "".join(f"P{i},19{50 + i}-0{1 + i % 9}-1{i % 9}\n" for i in range(8))
    assert ("date_of_birth", "fail") in rules(csv("ref,when\n" + rows))
    recent = "".join(f"2026-0{1 + i % 9}-1{i},{100 + i}\n" for i in range(8))
    assert csv("day,admissions\n" + recent).status == "pass"


# --- active content and image metadata ----------------------------------------------------


def test_svg_and_html_with_scripts_or_external_references():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    assert ("script", "fail") in rules(sdc.check("plot.svg", svg))
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><rect onload="x()"/></svg>'
    assert ("script", "fail") in rules(sdc.check("plot.svg", svg))
    html = b'<p>table</p><img src="https://tracker.example/p.gif">'
    assert ("external_reference", "review") in rules(sdc.check("r.html", html))
    html = b"<p style=\"background:url('//tracker.example/x')\">x</p>"
    assert "external_reference" in rule_ids(sdc.check("r.html", html))
    assert not {"script", "external_reference"} & rule_ids(sdc.check("r.html", b"<p>fine</p>"))


def png(*extra: tuple[bytes, bytes], trailing: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00")
    chunks = [chunk(b"IHDR", ihdr), *(chunk(k, b) for k, b in extra), chunk(b"IDAT", idat)]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + chunk(b"IEND", b"") + trailing


def test_image_metadata_and_data_after_the_image_are_found():
    assert "image_metadata" not in rule_ids(sdc.check("f.png", png()))
    report = sdc.check("f.png", png((b"tEXt", b"Comment\x00" + NHS.encode())))
    assert ("image_metadata", "review") in rules(report)
    report = sdc.check("f.png", png(trailing=b"PAR1 hidden table"))
    assert ("image_metadata", "fail") in rules(report)
    exif = b"Exif\x00\x00MM\x00\x2a" + b"\x88\x25" + b"\x00" * 20
    jpeg = b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + b"\xff\xd9"
    assert ("image_metadata", "fail") in rules(sdc.check("f.jpg", jpeg))
    # ... and in a notebook's embedded figures
    figure = {"output_type": "display_data", "metadata": {}, "data": {"image/png": ""}}
    figure["data"]["image/png"] = base64.b64encode(png(trailing=b"x" * 10)).decode()
    assert "image_metadata" in rule_ids(sdc.check("a.ipynb", nb(code_cell(outputs=[figure]))))


# --- whole files ----------------------------------------------------------------------------


def test_large_tables_are_checked_whole():
    rows = "".join(f"g{i},{100 + i % 50}\n" for i in range(300_000))
    report = csv("g,n\n" + rows + "last,3\n")
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert finding.cells == ((300_001, "n"),)
    report = csv("g,n\n" + rows + f"x {NHS},120\n")
    assert ("nhs_number", "fail") in rules(report)


def test_what_cannot_be_read_whole_is_not_fully_checked(monkeypatch):
    monkeypatch.setattr(sdc, "MAX_DOCUMENT", 100)
    report = sdc.check("big.ipynb", nb(code_cell(source="y" * 200 + f" {NHS}")))
    assert report.status == "fail"  # the identifier is found anyway
    assert ("not_fully_checked", "not_fully_checked") in rules(report)
    report = sdc.check("big.ipynb", nb(code_cell(source="y" * 200)))
    assert report.status == "not_fully_checked"


# --- rounding, secondary suppression, differencing -----------------------------------------


def test_rounding_to_a_base_and_midpoint_6():
    assert ("rounding", "fail") in rules(csv("g,n\na,15\nb,23\n", rounding="5"))
    assert csv("g,n\na,15\nb,25\n", rounding="5").status == "pass"
    assert ("rounding", "fail") in rules(csv("g,n\na,15\nb,20\n", rounding="midpoint6"))
    assert csv("g,n\na,15\nb,21\nc,3\n", rounding="midpoint6", threshold=3).status == "pass"
    with pytest.raises(ValueError, match="rounding"):
        sdc.Rules.from_env({"SDE_SDC_ROUNDING": "seven"})


SUPPRESSED = """region,female,male,total
north,[c],40,45
south,30,35,65
total,35,75,110
"""


def test_a_suppressed_cell_that_the_totals_give_back_fails():
    report = csv(SUPPRESSED)
    (finding,) = [f for f in report.findings if f.rule == "secondary_suppression"]
    assert finding.status == "fail" and finding.cells == ((1, "female"),)
    # two suppressed cells in each row and column: nothing can be worked back
    safe = """region,female,male,total
north,[c],[c],45
south,[c],[c],65
total,35,75,110
"""
    assert "secondary_suppression" not in rule_ids(csv(safe))
    # a chain: solving the column opens the row
    chain = """region,a,b,c,total
north,[c],[c],20,60
south,30,25,15,70
total,50,45,35,130
"""
    (finding,) = [f for f in csv(chain).findings if f.rule == "secondary_suppression"]
    assert set(finding.cells) == {(1, "a"), (1, "b")}


def test_differencing_against_an_earlier_release_and_within_a_request():
    first = b"region,n\nnorth,120\nsouth,45\n"
    second = b"region,n\nnorth,117\nsouth,45\n"  # three people removed from north
    reports = sdc.check_many([("t2.csv", second)], against=[("t1.csv", first)])
    (finding,) = [f for f in reports["t2.csv"].findings if f.rule == "differencing"]
    assert finding.status == "fail" and "t1.csv" in finding.message
    reports = sdc.check_many([("a.csv", first), ("b.csv", second)])
    assert "differencing" in rule_ids(reports["b.csv"])
    far = b"region,n\nnorth,150\nsouth,45\n"
    assert "differencing" not in rule_ids(
        sdc.check_many([("c.csv", far)], against=[("t1", first)])["c.csv"]
    )


# --- what the bytes are ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,data",
    [
        ("results.csv", b"\x7fELF\x02\x01\x01" + b"\x00" * 50),
        ("table.png", b"PK\x03\x04" + b"\x00" * 40),
        ("figure.png", b"region,n\nnorth,120\n"),
        ("notes.txt", b"a\x00b"),
        ("tool.exe", b"MZ" + b"\x00" * 58 + struct.pack("<I", 64) + b"PE\x00\x00"),
        ("data.json", b"\x1f\x8b\x08\x00" + b"\x00" * 20),
    ],
)
def test_bytes_that_are_not_what_the_name_says(name, data):
    report = sdc.check(name, data)
    assert ("type_mismatch", "fail") in rules(report)


def test_text_that_starts_like_a_magic_number_is_still_text():
    assert "type_mismatch" not in rule_ids(csv("MZ,n\nMZ region,120\n"))
    assert "type_mismatch" not in rule_ids(sdc.check("f.png", png()))


def test_every_finding_uses_a_known_rule_id():
    with pytest.raises(ValueError, match="unknown disclosure rule"):
        sdc.Finding("identifiers", "fail", "x", "y")
    assert {"threshold", "zero", "rounding", "dominance", "dof", "secondary_suppression",
            "differencing", "record_level", "nhs_number", "postcode", "email", "phone",
            "date_of_birth", "hidden_cell", "attachment", "script", "external_reference",
            "image_metadata", "type_mismatch", "not_fully_checked"} <= set(sdc.RULES)  # fmt: skip


def test_the_table_reader_keeps_its_cell_budget_for_roles(monkeypatch):
    monkeypatch.setattr(sdc_tables, "MAX_CELLS", 100)
    rows = "".join("50,50,50,50\n" for _ in range(100)) + "3,50,50,50\n"
    report = csv("a,b,c,d\n" + rows)
    assert ("threshold", "fail") in rules(report)


def test_the_fast_identifier_scan_counts_what_the_exact_patterns_count():
    import random

    rng = random.Random(3)
    pieces = [
        NHS,
        "943 476 5919.",
        "9434765918",
        "07700 900123",
        "+44 20 7946 0958",
        "SW1A  1AA",
        "jo@example.org",
        "DOB: 12/03/1954",
        "R0001234567",
        "12345678901",
        "x" * 50,
        "0.5,12,",
        "\n",
    ]
    text = "".join(rng.choice(pieces) + rng.choice([" ", ",", "", "\t"]) for _ in range(40_000))
    assert len(text) > sdc_values.FAST_SCAN_OVER
    fast = sdc_values.identifiers_in(text)
    assert fast == sdc_values.exact_identifiers_in(text)
    assert set(fast) == set(sdc_values.IDENTIFIER_KINDS)


def test_a_dotted_nhs_number_is_found_in_large_text_too():
    # over FAST_SCAN_OVER the candidates are found with RE2 first, then checked exactly
    text = ("filler line without digits\n" * 4000) + "ref 943.476.5919\n"
    assert len(text) > sdc_values.FAST_SCAN_OVER
    assert sdc_values.identifiers_in(text) == {"nhs_number": 1}


# --- "n (%)" cells -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell", ["4 (2.0)", "4 (3.2%)", "4 [3.2%]", "4/120 (3.3%)", " 4 ( 3.2 % ) ", "4 (.5)"]
)
def test_a_small_count_beside_its_share_fails(cell):
    table = f'characteristic,cases n (%)\nmale,"1,204 (96.8%)"\nfemale,"{cell}"\n'
    (finding,) = [f for f in csv(table).findings if f.rule == "threshold"]
    assert finding.status == "fail" and "row 2: 4" in finding.message


def test_n_percent_cells_in_a_descriptive_table_and_their_zeros():
    table = "group,cases,controls\nA,120 (60.0),300 (55.0)\nB,0 (0.0),245 (45.0)\n"
    assert ("zero", "fail") in rules(csv(table))
    safe = "group,cases,controls\nA,120 (60.0),300 (55.0)\nB,80 (40.0),245 (45.0)\n"
    assert csv(safe).status == "pass"


def test_a_mean_or_median_with_its_spread_is_not_a_count():
    table = "characteristic,mean (sd),median (IQR)\nage,54 (12),50 (40-60)\nbmi,27 (4),26 (23-30)\n"
    assert "threshold" not in rule_ids(csv(table))


@pytest.mark.parametrize(
    "text,rule",
    [
        ("ref 943\u00a0476\u00a05919", "nhs_number"),  # no-break spaces, as Word and Excel write
        ("ref 943\u2009476\u20095919", "nhs_number"),  # thin spaces
        ("ref 943\u2013476\u20135919", "nhs_number"),  # en dashes
        ("ref \uff19\uff14\uff13\uff14\uff17\uff16\uff15\uff19\uff11\uff19", "nhs_number"),
        ("lives at SW1A\u00a01AA", "postcode"),
        ("mail john\uff20nhs.net", "email"),  # a full-width at sign
        ("call 07700\u00a0900123", "phone"),
    ],
)
def test_identifiers_written_with_look_alike_characters(text, rule):
    assert (rule, "fail") in rules(sdc.check("notes.txt", text.encode()))
    big = ("filler line without digits é\n" * 4000) + text + "\n"  # the RE2 path
    assert sdc_values.identifiers_in(big) == sdc_values.exact_identifiers_in(big) == {rule: 1}
