"""Tables R and Stata print into logs and text outputs (:mod:`sde_airlock.sdc.stata`, and the
tibble and two-way ``table()`` forms of :func:`sde_airlock.sdc.tables.text_tables`): their
counts go through the cell rules; a regression table's estimates are not counts."""

from __future__ import annotations

import pytest

from sde_airlock import sdc
from sde_airlock.sdc.stata import stata_tables

STATA_ONEWAY = """. tabulate region

     region |      Freq.     Percent        Cum.
------------+-----------------------------------
      north |        120       96.77       96.77
      south |          {n}        3.23      100.00
------------+-----------------------------------
      Total |        124      100.00
"""
STATA_TWOWAY = """. tabulate region sex

           |          sex
    region |         F          M |     Total
-----------+----------------------+----------
     north |        50         70 |       120
south east |         {n}         40 |        43
-----------+----------------------+----------
     Total |        53        110 |       163
"""
R_TIBBLE = """# A tibble: 2 x 2
  region     n
  <chr>  <int>
1 north    120
2 south      {n}
"""
R_TWOWAY = """       sex
region   F   M
  north 50  70
  south  {n}  40
"""


def threshold_findings(report: sdc.Report) -> list[sdc.Finding]:
    return [f for f in report.findings if f.rule == "threshold"]


@pytest.mark.parametrize(
    ("name", "text", "column"),
    [
        ("tab.log", STATA_ONEWAY, "Freq."),
        ("tab.log", STATA_TWOWAY, "F"),
        ("out.txt", R_TIBBLE, "n"),
        ("out.txt", R_TWOWAY, "F"),
    ],
)
def test_a_small_count_in_a_printed_r_or_stata_table_fails(name, text, column):
    (finding,) = threshold_findings(sdc.check(name, text.format(n=3).encode()))
    assert finding.status == "fail"
    assert finding.where.endswith(f"column {column!r}") and "row 2: 3" in finding.message
    assert threshold_findings(sdc.check(name, text.format(n=30).encode())) == []


def test_stata_labels_keep_their_spaces_and_rules_are_dropped():
    ((line, rows),) = stata_tables(STATA_TWOWAY.format(n=3))
    assert line == 3
    assert rows[0] == ["region", "F", "M", "Total"]
    assert rows[2] == ["south east", "3", "40", "43"]


STATA_REGRESS = """      Source |       SS           df       MS      Number of obs   =        74
-------------+----------------------------------   F(1, 72)        =    134.62
       Model |  1591.9902         1   1591.9902   Prob > F        =    0.0000
    Residual |  851.469256        {df}  11.8259619   R-squared       =    0.6515
-------------+----------------------------------   Adj R-squared   =    0.6467
       Total |  2443.45946        73  33.4720474   Root MSE        =    3.4389

------------------------------------------------------------------------------
         mpg | Coefficient  Std. err.      t    P>|t|     [95% conf. interval]
-------------+----------------------------------------------------------------
      weight |  -.0060087   .0005179   -11.60   0.000    -.0070411   -.0049763
       _cons |   39.44028   1.614003    24.44   0.000     36.22283    42.65774
------------------------------------------------------------------------------
"""


def test_a_stata_regression_is_estimates_with_its_residual_df():
    report = sdc.check("model.log", STATA_REGRESS.format(df=72).encode())
    assert not {"threshold", "zero"} & {f.rule for f in report.findings}, report.findings
    assert report.status != "fail"
    few = sdc.check("model.log", STATA_REGRESS.format(df=" 7").encode())
    assert ("dof", "fail") in {(f.rule, f.status) for f in few.findings}
