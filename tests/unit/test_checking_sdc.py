"""Automated disclosure checks (:mod:`sde_airlock.sdc`) on the kinds of outputs
researchers export: each rule on a case it must catch and a near miss it must not, with
ACRO's default thresholds (10 per cell, 10 residual degrees of freedom, zeros disclosive).
"""

from __future__ import annotations

import io
import json

import pytest

from sde_airlock import sdc
from sde_airlock.sdc import tables as sdc_tables
from sde_airlock.sdc import values as sdc_values


def rules_hit(report: sdc.Report) -> set[tuple[str, str]]:
    return {(f.rule, f.status) for f in report.findings}


def check_csv(text: str, **rules) -> sdc.Report:
    return sdc.check("t.csv", text.encode(), sdc.Rules(**rules))


# --- tables -------------------------------------------------------------------------------


def test_a_safe_frequency_table_passes():
    report = check_csv("region,n\nnorth,120\nsouth,10\n")
    assert (report.status, report.findings) == ("pass", [])
    assert report.checked == ["table of 2 columns: all 2 rows (threshold 10)"]


def test_a_crosstab_cell_under_the_threshold_and_a_zero_fail_with_their_cells():
    report = check_csv(",female,male\nasthma,12,4\ncopd,0,25\nflu,9,10\n")
    assert report.status == "fail"
    by_rule = {f.rule: f for f in report.findings}
    assert by_rule["threshold"].status == "fail"
    assert by_rule["threshold"].cells == ((1, "male"),)
    assert "row 1: 4" in by_rule["threshold"].message
    assert by_rule["zero"].cells == ((2, "female"),)
    female_small = [f for f in report.findings if f.rule == "threshold" and "female" in f.where]
    assert female_small[0].cells == ((3, "female"),)  # 9 fails, 10 passes: "under" is strict


def test_zeros_are_for_review_when_the_deployment_says_they_are_not_disclosive():
    report = check_csv("group,n\na,0\nb,50\n", zeros_are_disclosive=False)
    assert rules_hit(report) == {("zero", "review")}


def test_the_threshold_is_a_setting():
    assert check_csv("g,n\na,12\n", threshold=15).status == "fail"
    assert check_csv("g,n\na,12\n", threshold=10).status == "pass"


def test_a_pandas_index_column_is_a_label_not_a_count_with_a_zero():
    report = check_csv(",region,count\n0,north,120\n1,south,98\n2,east,40\n")
    assert report.status == "pass", report.findings


@pytest.mark.parametrize(
    "header",
    ["year,n", "age,n", "region_code,n", "rank,n", "imd_decile,n"],
)
def test_label_like_integer_columns_are_not_taken_for_counts(header):
    label = header.split(",")[0]
    report = check_csv(f"{header}\n1,50\n2,60\n3,70\n")
    assert report.status == "pass", (label, report.findings)


def test_suppression_markers_are_not_counts():
    assert check_csv("region,n\nnorth,120\nsouth,<10\neast,[c]\nwest,*\n").status == "pass"


def test_a_magnitude_table_checks_its_counts_and_asks_for_dominance():
    report = check_csv("region,n,mean_hba1c\nnorth,120,52.1\nsouth,7,49.0\n")
    assert rules_hit(report) == {("threshold", "fail"), ("dominance", "review")}
    assert "dominance" in next(f.message for f in report.findings if f.rule == "dominance")


def test_percentages_beside_their_counts_need_no_dominance_check():
    assert check_csv("region,n,pct\nnorth,120,55.0\nsouth,98,45.0\n").status == "pass"
    assert check_csv("region,n,share\nnorth,120,55.0%\nsouth,98,45.0%\n").status == "pass"
    report = check_csv("region,n,pct\nnorth,120,94.5\nsouth,7,5.5\n")
    assert rules_hit(report) == {("threshold", "fail")}


def test_percentages_without_counts_are_for_review():
    report = check_csv("region,pct_diabetic\nnorth,12.5\nsouth,33.3\n")
    (finding,) = report.findings
    assert (finding.rule, finding.status) == ("dominance", "review")
    assert "without the counts behind them" in finding.message


def test_means_without_counts_cannot_be_checked_and_say_so():
    report = check_csv("region,mean_cost\nnorth,1520.5\nsouth,980.25\n")
    (finding,) = report.findings
    assert (finding.rule, finding.status) == ("dominance", "review")
    assert "no count column" in finding.message


def test_a_count_under_the_threshold_fails_whatever_else_the_table_holds():
    report = check_csv("region,mean_cost,patients_seen_by_gp\nnorth,1520.5,3\n")
    assert ("threshold", "fail") in rules_hit(report)
    # Regression: one magnitude column beside a frequency table turned its small counts
    # from fail into review.
    assert check_csv("region,widgets\nnorth,3\nsouth,50\n").status == "fail"
    report = check_csv("region,widgets,mean_cost\nnorth,3,1520.5\nsouth,50,10.0\n")
    assert ("threshold", "fail") in rules_hit(report)


@pytest.mark.parametrize("column", ["max_age", "min_weight", "Maximum", "highest_bmi"])
def test_minima_and_maxima_fail(column):
    report = check_csv(f"region,n,{column}\nnorth,120,98\n")
    assert ("min_max", "fail") in rules_hit(report)


@pytest.mark.parametrize(
    "column",
    [
        "nhs_number",
        "NHSNumber",
        "patient_id",
        "record_id",
        "eid",
        "dob",
        "date_of_birth",
        "date_of_death",
        "postcode",
        "surname",
    ],
)
def test_direct_identifier_columns_fail(column):
    report = check_csv(f"{column},hba1c\nx,52\n")
    rule = {
        "nhs_number": "nhs_number",
        "NHSNumber": "nhs_number",
        "dob": "date_of_birth",
        "date_of_birth": "date_of_birth",
        "postcode": "postcode",
    }.get(column, "identifier")
    assert (rule, "fail") in rules_hit(report)


def test_identifier_values_fail_wherever_they_are():
    # 943 476 5919 is a valid NHS number (check digit 9); 943 476 5918 is not
    report = check_csv("ref,value\n943 476 5919,1.5\n9434765918,2.5\n")
    (ident,) = [f for f in report.findings if f.rule == "nhs_number"]
    assert ident.status == "fail" and "1 NHS number" in ident.message
    report = check_csv("where,value\nSW1A 1AA,1.5\nM1 1AE,2.5\n")
    assert "2 full UK postcodes" in next(f.message for f in report.findings)
    report = check_csv("contact,value\njo@example.org,1.5\n")
    assert "1 e-mail address" in next(f.message for f in report.findings)


def test_postcode_districts_and_invalid_nhs_numbers_are_not_identifiers():
    report = check_csv("district,n\nSW1A,120\nM1,300\n")
    assert report.status == "pass", report.findings
    assert not sdc.valid_nhs_number("9434765918")
    assert not sdc.valid_nhs_number("0000000000")
    assert sdc.valid_nhs_number("9434765919")


def test_many_distinct_rows_without_counts_look_like_record_level_data():
    rows = "".join(f"P{i:05d},{50 + i % 7}.5\n" for i in range(150))
    report = check_csv("ref,hba1c\n" + rows)
    assert ("record_level", "review") in rules_hit(report)
    rows = "".join(f"R{i:05d},{100 + i}\n" for i in range(150))
    assert check_csv("area,n\n" + rows).status == "pass"  # an aggregate with counts


def test_every_row_is_checked_and_the_columns_roles_come_from_the_first_max_rows():
    # Regression: rows past max_rows were never checked, so a small count there passed.
    rows = "".join(f"r{i},{100 + i}\n" for i in range(50)) + "last,3\n"
    report = check_csv("g,n\n" + rows, max_rows=20)
    assert report.checked == [
        "table of 2 columns: all 51 rows, column roles from the first 20 (threshold 10)"
    ]
    (finding,) = report.findings
    assert (finding.rule, finding.status, finding.cells) == ("threshold", "fail", ((51, "n"),))


def test_a_very_wide_table_is_read_up_to_the_cell_budget(monkeypatch):
    monkeypatch.setattr(sdc_tables, "MAX_CELLS", 1000)
    header = ",".join(f"c{i}" for i in range(100))
    rows = "".join(",".join(["50"] * 100) + "\n" for _ in range(30))
    report = check_csv(header + "\n" + rows)
    assert report.checked == [
        "table of 100 columns: all 30 rows, column roles from the first 10 (threshold 10)"
    ]
    assert report.status == "pass"


def test_tsv_and_parquet_tables_are_read_too():
    report = sdc.check("t.tsv", b"region\tn\nnorth\t3\n")
    assert ("threshold", "fail") in rules_hit(report)
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"nhs_number": ["9434765919"], "n": [3]}), buf)
    report = sdc.check("t.parquet", buf.getvalue())
    assert {("nhs_number", "fail"), ("threshold", "fail")} <= rules_hit(report)


def test_documents_over_the_size_limit_are_left_to_the_checker(monkeypatch):
    monkeypatch.setattr(sdc, "MAX_DOCUMENT", 20)
    report = sdc.check("big.ipynb", notebook())
    assert report.status == "not_fully_checked"
    assert "identifiers only" in report.checked[0]


def test_an_unreadable_file_is_not_fully_checked_not_a_crash():
    report = sdc.check("t.parquet", b"not parquet at all")
    assert report.status == "fail" and report.findings[0].rule == "type_mismatch"
    # Text that is not the notebook it claims to be: the bytes are a mismatch, and what
    # could not be read is said too.
    report = sdc.check("t.ipynb", b"{not json")
    assert [f.rule for f in report.findings] == ["type_mismatch", "not_fully_checked"]
    deep = b'{"cells": [{"cell_type": "markdown", "source": ' + b"[" * 100_000 + b"]" * 100_000
    report = sdc.check("deep.ipynb", deep + b"}]}")  # no RecursionError
    assert [f.rule for f in report.findings] == ["type_mismatch", "not_fully_checked"]


# --- text ---------------------------------------------------------------------------------

STATSMODELS = """                            OLS Regression Results
==============================================================================
Dep. Variable:                  hba1c   R-squared:                       0.412
Model:                            OLS   Adj. R-squared:                  0.201
No. Observations:                   8   AIC:                             40.12
Df Residuals:                       5   BIC:                             40.36
Df Model:                           2
"""


def test_a_regression_with_too_few_residual_degrees_of_freedom_fails():
    report = sdc.check("model.txt", STATSMODELS.encode())
    assert rules_hit(report) == {("dof", "fail")}
    assert "5 residual degrees of freedom" in report.findings[0].message
    ok = STATSMODELS.replace("Df Residuals:                       5", "Df Residuals:  497")
    assert sdc.check("model.txt", ok.encode()).status == "pass"
    r_lm = "Residual standard error: 1.2 on 6 degrees of freedom\n"
    assert rules_hit(sdc.check("lm.txt", r_lm.encode())) == {("dof", "fail")}


def test_a_table_of_model_estimates_asks_for_the_degrees_of_freedom():
    report = check_csv("term,coef,std err,P>|t|\nconst,1.2,0.3,0.001\nage,0.04,0.01,0.02\n")
    (finding,) = report.findings
    assert (finding.rule, finding.status) == ("dof", "review")
    assert "residual degrees of freedom" in finding.message


def test_text_reporting_small_groups_is_for_review():
    report = sdc.check("notes.md", b"Of the cohort (n = 4) three had a stroke; controls n=250.")
    (finding,) = report.findings
    assert (finding.rule, finding.status) == ("small_n", "review")
    assert "n=4" in finding.message and "250" not in finding.message


def test_figures_are_left_to_the_eye():
    from tests.unit.test_checking_sdc_rules import png

    report = sdc.check("fig.png", png())
    assert (report.kind, report.status) == ("figure", "info")


# --- notebooks ----------------------------------------------------------------------------


def notebook(*outputs, markdown: str = "") -> bytes:
    cells = []
    if markdown:
        cells.append({"cell_type": "markdown", "metadata": {}, "source": markdown})
    for out in outputs:
        cells.append(
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 1,
                "source": "x",
                "outputs": [out],
            }
        )
    return json.dumps({"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": cells}).encode()


def html_output(html: str) -> dict:
    return {"output_type": "execute_result", "metadata": {}, "execution_count": 1,
            "data": {"text/html": html, "text/plain": "df"}}  # fmt: skip


PANDAS_HEAD = """<div><table border="1" class="dataframe">
  <thead><tr style="text-align: right;"><th></th><th>nhs_number</th><th>hba1c</th></tr></thead>
  <tbody><tr><th>0</th><td>9434765919</td><td>52</td></tr>
         <tr><th>1</th><td>4010232137</td><td>61</td></tr></tbody></table></div>"""

PANDAS_GROUPBY = """<table border="1" class="dataframe">
  <thead><tr style="text-align: right;"><th></th><th>n</th></tr>
         <tr><th>region</th><th></th></tr></thead>
  <tbody><tr><th>north</th><td>120</td></tr><tr><th>south</th><td>6</td></tr></tbody></table>"""


def test_a_notebook_showing_record_level_rows_fails():
    report = sdc.check("a.ipynb", notebook(html_output(PANDAS_HEAD)))
    (finding,) = [f for f in report.findings if f.rule == "nhs_number"]
    assert finding.status == "fail" and finding.where.startswith("cell 1 output, table 1")


def test_a_notebook_groupby_table_is_checked_cell_by_cell():
    report = sdc.check("a.ipynb", notebook(html_output(PANDAS_GROUPBY)))
    (finding,) = report.findings
    assert (finding.rule, finding.status, finding.cells) == ("threshold", "fail", ((2, "n"),))
    assert report.checked == [
        "1 output table, 2 text parts (sources, outputs, metadata; threshold 10, residual df 10)"
    ]


def test_a_notebook_text_output_and_markdown_are_read_and_figures_listed():
    stream = {"output_type": "stream", "name": "stdout", "text": STATSMODELS}
    figure = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBO"}}
    report = sdc.check("a.ipynb", notebook(stream, figure, markdown="Cases (n=3) were excluded."))
    assert rules_hit(report) == {("dof", "fail"), ("small_n", "review"), ("manual", "info")}


def test_a_safe_notebook_passes():
    safe = PANDAS_GROUPBY.replace("<td>6</td>", "<td>60</td>")
    report = sdc.check("a.ipynb", notebook(html_output(safe), markdown="All cells n >= 10."))
    assert report.status == "pass", report.findings


def test_the_report_serialises_for_the_api():
    as_dict = check_csv("g,n\na,3\n").to_dict()
    assert as_dict["status"] == "fail"
    assert as_dict["findings"][0]["cells"] == [[1, "n"]]
    json.dumps(as_dict)


BOMB_CHECK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
from sde_airlock import sdc
from sde_airlock.sdc import tables as sdc_tables
from sde_airlock.sdc import values as sdc_values
report = sdc.check("t.parquet", open(sys.argv[1], "rb").read())
print(report.status, "ok")
"""


def test_a_small_parquet_that_decodes_to_terabytes_is_checked_within_bounds(tmp_path):
    """3 KB on disk, one 30 MB string repeated through a dictionary 100,000 times (3 TB
    decoded): read naively, the service would be killed for memory by one export."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    big = pa.array(["x" * (30 * 1024 * 1024)])
    notes = pa.DictionaryArray.from_arrays(pa.array([0] * 100_000, pa.int32()), big)
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"note": notes, "n": [12] * 100_000}), path, compression="zstd")
    assert path.stat().st_size < 100_000
    res = subprocess.run(
        [sys.executable, "-c", BOMB_CHECK, str(path)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["pass", "ok"]
    table = sdc.read_parquet(path.read_bytes(), max_rows=10)
    assert table.total_rows == 100_000 and len(table.rows) == 10
    assert {len(row[0]) for row in table.rows} == {sdc.MAX_CELL_CHARS}


@pytest.mark.parametrize(
    "text",
    [
        "a@" + "a." * 500_000,  # quadratic with an unbounded e-mail pattern (minutes)
        "a@" + "a-" * 500_000 + "!",
        ("x" * 60 + "@" + "b." * 40) * 5_000,
    ],
    ids=["dots", "dashes", "mixed"],
)
def test_adversarial_text_is_checked_in_linear_time(tmp_path, text):
    """A workspace chooses what the service scans: a pattern with quadratic backtracking
    would let one export tie up the checks for hours. Run in a subprocess so a regression
    fails by timeout instead of hanging the suite."""
    import subprocess
    import sys

    path = tmp_path / "notes.txt"
    path.write_text(text)
    code = (
        "import sys; from sde_airlock import sdc; "
        "print(sdc.check('notes.txt', open(sys.argv[1], 'rb').read()).status)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0 and res.stdout.strip() in ("pass", "fail", "review"), res.stderr


def test_e_mail_addresses_are_still_found_with_the_bounded_pattern():
    found = sdc_values.identifiers_in("jo.bloggs@nhs.net, a.b@example.co.uk; not@this; x@y.z")
    assert found == {"email": 2}


# --- delimiters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("semicolon.csv", "region;n\nnorth;120\nsouth;4\n"),  # a European-locale spreadsheet
        ("pipe.csv", "region|n\nnorth|120\nsouth|4\n"),
        ("tabs.csv", "region\tn\nnorth\t120\nsouth\t4\n"),
        ("commas.tsv", "region,n\nnorth,120\nsouth,4\n"),
        ("decimal_commas.csv", "region;n;mean\nnorth;120;1,5\nsouth;4;2,25\n"),
    ],
)
def test_a_table_in_another_delimiter_is_still_read_as_a_table(name, text):
    report = sdc.check(name, text.encode(), sdc.Rules())
    assert report.kind == "table"
    assert ("threshold", "fail") in rules_hit(report), report.findings
    assert any("as the delimiter" in c for c in report.checked)
    columns = 3 if name == "decimal_commas.csv" else 2  # "1,5" is one cell, not two
    assert report.checked[0].startswith(f"table of {columns} columns"), report.checked


def test_the_suffix_delimiter_wins_when_it_fits():
    # commas are the delimiter; the semicolons are inside labels
    report = check_csv("label,n\nA; B,120\nC; D,4\n")
    assert ("threshold", "fail") in rules_hit(report)
    assert not any("as the delimiter" in c for c in report.checked)
    assert sdc.table_delimiter(".csv", b"label,n\nA; B,120\nC; D,4\n") == ","
    # one column of text (no delimiter fits) stays the suffix's
    assert sdc.table_delimiter(".csv", b"just text\nmore text\n") == ","
    assert sdc.table_delimiter(".tsv", b"a\tb\n1\t2\n") == "\t"


# --- JSON ---------------------------------------------------------------------------------

COUNTS = {"north": 120, "south": 4}  # south is a group of four


def _pandas_json(orient: str | None, counts: dict) -> bytes:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"region": list(counts), "n": list(counts.values())})
    if orient == "series":
        return df.set_index("region")["n"].to_json().encode()
    frame = df.set_index("region") if orient in (None, "columns", "index", "split") else df
    return (frame.to_json() if orient is None else frame.to_json(orient=orient)).encode()


ORIENTS = [None, "columns", "index", "split", "records", "values", "series"]


@pytest.mark.parametrize("orient", ORIENTS)
def test_counts_written_by_pandas_to_json_get_the_cell_rules(orient):
    report = sdc.check("counts.json", _pandas_json(orient, COUNTS))
    assert ("threshold", "fail") in rules_hit(report), (orient, report.findings)
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert finding.where.startswith("JSON $")
    safe = sdc.check("counts.json", _pandas_json(orient, {"north": 120, "south": 40}))
    assert safe.status == "pass", (orient, safe.findings)


def test_a_table_deep_in_a_json_document_and_a_single_record():
    nested = {"meta": {"title": "cohort"}, "results": [{"tables": {"n": {"a": 15, "b": 4}}}]}
    report = sdc.check("out.json", json.dumps(nested).encode())
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert finding.where == "JSON $.results[0].tables, column 'n'"
    record = sdc.check("out.json", b'{"title": "cohort", "n": 4}')
    assert ("threshold", "fail") in rules_hit(record)
    assert sdc.check("out.json", b'{"title": "cohort", "n": 40}').status == "pass"


def test_json_that_does_not_parse_is_text_and_says_so():
    report = sdc.check("out.json", b'{"n": 4, "note": "unterminated')
    assert ("not_fully_checked", "not_fully_checked") in rules_hit(report)
    deep = b"[" * 100_000 + b"]" * 100_000  # deeper than the parser goes
    assert sdc.check("deep.json", deep).status in ("not_fully_checked", "fail")


def test_json_tables_are_differenced_too():
    first = json.dumps({"n": {"north": 120, "south": 45}}).encode()
    second = json.dumps({"n": {"north": 117, "south": 45}}).encode()
    reports = sdc.check_many([("t2.json", second)], against=[("t1.json", first)])
    assert "differencing" in {f.rule for f in reports["t2.json"].findings}


def _notebook_with_output(mime: str, value) -> bytes:
    output = {"output_type": "display_data", "metadata": {}, "data": {mime: value}}
    cell = {
        "cell_type": "code",
        "id": "c1",
        "metadata": {},
        "execution_count": 1,
        "source": "fig.show()",
        "outputs": [output],
    }
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}
    return json.dumps(nb).encode()


@pytest.mark.parametrize(
    ("mime", "chart"),
    [
        (
            "application/vnd.plotly.v1+json",
            lambda s: {"data": [{"type": "bar", "x": ["north", "south"], "y": [120, s]}]},
        ),
        (
            "application/vnd.vegalite.v5+json",
            lambda s: {
                "mark": "bar",
                "data": {"values": [{"region": "north", "n": 120}, {"region": "south", "n": s}]},
            },
        ),
    ],
)
def test_the_data_behind_a_chart_in_a_notebook_output_is_checked(mime, chart):
    report = sdc.check("analysis.ipynb", _notebook_with_output(mime, chart(4)))
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert finding.status == "fail" and "JSON $" in finding.where
    safe = sdc.check("analysis.ipynb", _notebook_with_output(mime, chart(40)))
    assert "threshold" not in {f.rule for f in safe.findings}


def test_json_columns_as_lists():
    doc = {"region": ["north", "south"], "n": [120, 4], "note": "to_dict('list')"}
    report = sdc.check("counts.json", json.dumps(doc).encode())
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert finding.where == "JSON $, column 'n'"


def test_parquet_struct_fields_are_columns_and_list_columns_say_they_were_not_counted():
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(table) -> bytes:
        out = io.BytesIO()
        pq.write_table(table, out)
        return out.getvalue()

    nested = pa.table({"region": ["north", "south"], "s": [{"n": 120}, {"n": 4}]})
    (finding,) = [
        f for f in sdc.check("t.parquet", parquet(nested)).findings if f.rule == "threshold"
    ]
    assert finding.where == "column 's.n'"
    lists = pa.table({"region": ["north", "south"], "l": [[120, 4], [5, 6]]})
    report = sdc.check("t.parquet", parquet(lists))
    assert report.status == "not_fully_checked"
    assert "list or map columns (l)" in report.findings[-1].message
