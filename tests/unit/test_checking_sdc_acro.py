"""Our disclosure checks against ACRO, the SACRO project's checker, on the same outputs.

ACRO (``acro`` on PyPI) checks a table while the researcher makes it, from the microdata; we
check the finished file the researcher exports (``DataFrame.to_csv()``). On random microdata
of many shapes, with ACRO's defaults on both sides:

* frequency tables (``crosstab``, with and without margins): the same cells fail, rule by
  rule (ACRO's ``MinimumThresholdCheck`` = our ``threshold`` or ``zeros``; its
  ``PresenceOfZeroCheck`` = our ``zeros``);
* magnitude tables with their counts (``pivot_table`` of mean and count): the same count
  cells fail;
* magnitude tables without counts: ACRO sees the contributors, we cannot; we must never say
  "pass" (we say "review");
* regressions (``ols``): the same verdict from the printed summary as from the model.
"""

from __future__ import annotations

import logging

import pytest

from sde_airlock import sdc

# ACRO, pandas and statsmodels warn about their own internals (FutureWarning on groupby
# callables, small-sample statistics); they are the oracle here, not the code under test.
pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning",
    "ignore::RuntimeWarning",
)  # fmt: skip

acro_module = pytest.importorskip("acro")  # in the test extras: installed by `make test`
np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
sm = pytest.importorskip("statsmodels.api")


@pytest.fixture(scope="module")
def acro():
    logging.getLogger("acro").setLevel(logging.ERROR)
    return acro_module.ACRO(suppress=False)


def acro_cells(outcome, only=None) -> tuple[set, set]:
    """ACRO's outcome frame as ``(threshold cells, zero cells)`` in our (row, column) terms."""
    threshold, zeros = set(), set()
    for row, idx in enumerate(outcome.index, 1):
        for col in outcome.columns:
            name = " / ".join(col) if isinstance(col, tuple) else str(col)
            if only and not only(col):
                continue
            text = str(outcome.loc[idx, col])
            if "MinimumThresholdCheck" in text:
                threshold.add((row, name))
            if "PresenceOfZeroCheck" in text:
                zeros.add((row, name))
    return threshold, zeros


def our_cells(report: sdc.Report) -> tuple[set, set]:
    threshold, zeros = set(), set()
    for f in report.findings:
        if f.rule == "threshold":
            threshold |= set(f.cells)
        elif f.rule == "zero":
            zeros |= set(f.cells)
    return threshold, zeros


def microdata(seed: int, n_min: int = 20, n_max: int = 1500):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(n_min, n_max))
    regions = [f"region {i}" for i in range(int(rng.integers(2, 7)))]
    diagnoses = [f"dx{i}" for i in range(int(rng.integers(2, 6)))]
    return pd.DataFrame(
        {
            "region": rng.choice(regions, n, p=rng.dirichlet(np.ones(len(regions)) * 0.7)),
            "dx": rng.choice(diagnoses, n, p=rng.dirichlet(np.ones(len(diagnoses)) * 0.7)),
            "cost": rng.lognormal(5, 1.5, n),
        }
    )


@pytest.mark.parametrize("seed", range(40))
def test_frequency_tables_fail_on_the_same_cells_as_acro(acro, seed):
    df = microdata(seed)
    table = acro.crosstab(df.region, df.dx, margins=seed % 3 == 0)
    theirs_threshold, theirs_zeros = acro_cells(acro.results.get_index(-1).outcome)
    report = sdc.check("table.csv", table.to_csv().encode())
    ours_threshold, ours_zeros = our_cells(report)
    assert ours_threshold | ours_zeros == theirs_threshold
    assert ours_zeros == theirs_zeros
    assert (report.status == "fail") == (acro.results.get_index(-1).status == "fail")


@pytest.mark.parametrize("seed", range(20))
def test_magnitude_tables_with_counts_fail_on_the_same_count_cells(acro, seed):
    df = microdata(100 + seed, n_max=800)
    table = acro.pivot_table(
        df, index=["region"], columns=["dx"], values=["cost"], aggfunc=["mean", "count"]
    )
    outcome = acro.results.get_index(-1).outcome
    theirs_threshold, theirs_zeros = acro_cells(outcome, only=lambda col: col[0] == "count")
    report = sdc.check("table.csv", table.to_csv().encode())
    ours_threshold, ours_zeros = our_cells(report)
    assert ours_threshold | ours_zeros == theirs_threshold
    assert ours_zeros == theirs_zeros
    assert ("dominance", "review") in {(f.rule, f.status) for f in report.findings}


@pytest.mark.parametrize("seed", range(20))
def test_a_magnitude_table_without_counts_is_never_passed(acro, seed):
    df = microdata(200 + seed, n_max=800)
    table = acro.pivot_table(df, index=["region"], columns=["dx"], values=["cost"], aggfunc="mean")
    report = sdc.check("table.csv", table.to_csv().encode())
    assert report.status in ("review", "fail")
    if acro.results.get_index(-1).status == "fail":
        assert report.status != "pass"


@pytest.mark.parametrize("seed", range(20))
def test_regressions_get_acros_verdict_from_their_printed_summary(acro, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    x = pd.DataFrame({"age": rng.normal(60, 10, n), "bmi": rng.normal(28, 4, n)})
    y = 0.3 * x.age + rng.normal(size=n)
    result = acro.ols(y, sm.add_constant(x))
    theirs = acro.results.get_index(-1).status
    report = sdc.check("model.txt", result.summary().as_text().encode())
    assert report.status == ("fail" if theirs == "fail" else "pass"), (n, report.findings)
