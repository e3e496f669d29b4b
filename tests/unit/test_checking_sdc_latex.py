"""LaTeX tables (:mod:`sde_airlock.sdc.latex`): the counts of a ``tabular`` go through the cell
rules wherever it is (a ``.tex`` file, Markdown, a notebook's ``text/latex`` output), as a
CSV's do; a regression table is not a table of counts."""

from __future__ import annotations

import json

import pytest

from sde_airlock import sdc
from sde_airlock.sdc.latex import latex_tables

pd = pytest.importorskip("pandas")


def rules_hit(report: sdc.Report) -> set[tuple[str, str]]:
    return {(f.rule, f.status) for f in report.findings}


def frame(south: int):
    return pd.DataFrame({"region": ["north", "south"], "n": [120, south]})


@pytest.mark.parametrize(
    "write",
    [
        lambda df: df.to_latex(index=False),
        lambda df: df.set_index("region").to_latex(),  # the index name on a row of its own
        lambda df: df.style.hide(axis="index").to_latex(),
        lambda df: df.to_latex(index=False, longtable=True),
    ],
)
def test_counts_in_tables_pandas_writes_as_latex(write):
    report = sdc.check("table1.tex", write(frame(4)).encode())
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert finding.status == "fail" and "LaTeX table at line" in finding.where
    assert sdc.check("table1.tex", write(frame(40)).encode()).status == "pass"


def test_a_hand_written_tabular_with_spanning_headers_rules_and_comments():
    tex = r"""
\begin{table}\caption{Admissions}
\begin{tabular}{lrr}
\toprule
 & \multicolumn{2}{c}{Sex} \\ \cmidrule(lr){2-3}
Region & Male & Female \\
\midrule
North \& East & 120 & 45 \\
South & 30 & \textbf{3} \\ % suppressed later?
\bottomrule
\end{tabular}
\end{table}
"""
    ((line, rows),) = latex_tables(tex)
    assert line == 3
    assert rows[-2] == ["North & East", "120", "45"]  # \& is text, not a cell break
    assert rows[-1] == ["South", "30", "3"]
    report = sdc.check("t.tex", tex.encode())
    (finding,) = [f for f in report.findings if f.rule == "threshold"]
    assert "row 2: 3" in finding.message


def test_latex_in_markdown_and_in_a_notebook_output():
    tex = frame(4).to_latex(index=False)
    assert ("threshold", "fail") in rules_hit(sdc.check("notes.md", f"# T1\n\n{tex}".encode()))
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "id": "a1",
                "metadata": {},
                "execution_count": 1,
                "source": "display(Latex(t))",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"text/latex": tex, "text/plain": "<Latex object>"},
                    }
                ],
            }
        ],
    }
    report = sdc.check("analysis.ipynb", json.dumps(nb).encode())
    assert ("threshold", "fail") in rules_hit(report), report.findings


def test_a_regression_table_is_not_a_table_of_counts():
    tex = r"""\begin{tabular}{@{\extracolsep{5pt}}lc}
\\[-1.8ex]\hline
 & \textit{Dependent variable: y} \\
\hline \\[-1.8ex]
 age & 0.123$^{***}$ \\
  & (0.045) \\
 Observations & 1,234 \\
\hline
\end{tabular}"""
    assert "threshold" not in {f.rule for f in sdc.check("model.tex", tex.encode()).findings}


def test_latex_tables_are_differenced():
    first = frame(45).to_latex(index=False).encode()
    second = frame(42).to_latex(index=False).encode()  # three people fewer in the south
    reports = sdc.check_many([("t2.tex", second)], against=[("t1.tex", first)])
    assert "differencing" in {f.rule for f in reports["t2.tex"].findings}


def test_text_without_a_tabular_has_no_latex_table():
    assert latex_tables(r"\section{Results} a & b \\ c & d") == []
    assert latex_tables(r"\begin{tabular}{ll} only one row \\ \end{tabular}") == []
