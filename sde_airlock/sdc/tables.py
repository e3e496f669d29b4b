"""Tables in exported files and the rules that apply to their cells.

Pure. A :class:`Table` is read from CSV/TSV (:func:`read_delimited`), Parquet
(:func:`read_parquet`), the HTML tables of notebook outputs, or tables printed as text
(``print(df)``, Markdown pipe tables: :func:`text_tables`). What each column holds (label,
count, magnitude, ...) is decided from the first ``max_rows`` rows; the cell rules then run
over **every** row, streamed, so a large file is checked whole. Rule ids are those of
:data:`sde_airlock.sdc.core.RULES`.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sde_airlock.sdc.core import FAIL, NOT_FULLY_CHECKED, REVIEW, Finding, Rules, plural
from sde_airlock.sdc.values import (
    IDENTIFIER_KINDS,
    as_count,
    as_int,
    count_with_share,
    identifier_rule_of_column,
    identifiers_in,
    is_missing,
    is_numeric,
    is_suppressed,
    looks_like_birth_dates,
    merge_counts,
    normalised_name,
    tokens,
)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]  # the rows read to decide the columns' roles (all, if small)
    total_rows: int  # rows in the source
    where: str = ""  # "" for a file that is one table; "cell 4 output, table 1" in a notebook
    #: Every data row again, streamed, when ``rows`` holds only the first of them.
    all_rows: Callable[[], Iterable[list[str]]] | None = None
    #: Why part of the table could not be read at all ("" when it was read whole).
    incomplete: str = ""
    #: The delimiter a delimited file was read with ("" for other tables).
    delimiter: str = ""

    @property
    def sampled(self) -> bool:
        return self.total_rows > len(self.rows)

    def every_row(self) -> Iterable[list[str]]:
        return self.all_rows() if (self.all_rows is not None and self.sampled) else self.rows


def _column(rows: list[list[str]], index: int) -> list[str]:
    return [row[index] if index < len(row) else "" for row in rows]


# --- what each column holds --------------------------------------------------------------------

_COUNT_WORDS = frozenset(
    {"n", "count", "counts", "cnt", "freq", "frequency", "num", "number", "total", "totals",
     "patients", "cases", "events", "deaths", "admissions", "people", "persons", "individuals",
     "records", "obs", "observations", "denominator", "numerator", "population", "pop",
     "respondents", "participants", "births", "diagnoses", "referrals", "prescriptions",
     "visits", "attendances", "episodes", "users", "subjects"}
)  # fmt: skip
#: Names of counting aggregations (pandas/ACRO ``aggfunc``): they outrank a magnitude word in
#: the same (multi-level) column name.
_AGGREGATE_COUNT_WORDS = frozenset({"n", "count", "counts", "cnt", "freq", "frequency", "nobs"})
_NOT_COUNT_WORDS = frozenset(
    {"year", "yr", "age", "id", "code", "rank", "month", "day", "week", "quarter", "decile",
     "quintile", "tertile", "quartile", "group", "category", "cat", "band", "level", "index",
     "idx", "period", "wave", "order", "sex", "gender", "flag", "lsoa", "msoa", "region",
     "date", "time", "bin", "class", "cluster", "stage", "grade", "imd", "version", "seq"}
)  # fmt: skip
_MAGNITUDE_WORDS = frozenset(
    {"mean", "avg", "average", "median", "sum", "sd", "std", "stdev", "se", "sem", "var",
     "variance", "ratio", "cost", "amount", "value", "iqr", "q1", "q3", "or", "hr", "rr",
     "coef", "beta", "estimate", "ci", "lower", "upper", "lcl", "ucl", "p", "pvalue"}
)  # fmt: skip
#: Shares of a count (percentages, proportions, rates): not magnitudes for dominance, but
#: without the counts beside them a small group hides behind them.
_SHARE_WORDS = frozenset(
    {"pct", "percent", "percentage", "prop", "proportion", "share", "rate", "prevalence",
     "incidence", "risk"}
)  # fmt: skip
_ESTIMATE_WORDS = frozenset({"coef", "coefficient", "estimate", "beta", "or", "hr", "rr"})
_ERROR_WORDS = frozenset({"se", "std", "err", "stderr", "pvalue", "p", "t", "z", "ci", "lower"})
_MINMAX_WORDS = frozenset({"min", "max", "minimum", "maximum", "lowest", "highest", "range"})
_TOTAL_WORDS = frozenset({"total", "totals", "all", "overall", "sum"})


def _is_index(name: str, values: list[str]) -> bool:
    """pandas' index written out: no name (or "Unnamed: 0") and 0..n-1 or 1..n."""
    if name.strip() and not name.startswith("Unnamed:"):
        return False
    ints = [as_int(v) for v in values]
    if not ints or any(i is None for i in ints):
        return False
    start = ints[0]
    return start in (0, 1) and ints == list(range(start, start + len(ints)))


def _mostly_text(values: list[str]) -> bool:
    return sum(is_numeric(v) for v in values) < 0.9 * len(values)


def roles(table: Table) -> list[str]:
    """Per column: label | count | integer | share | magnitude | minmax | identifier | empty."""
    out = []
    width = max(len(table.header), max((len(r) for r in table.rows), default=0))
    for i in range(width):
        name = table.header[i] if i < len(table.header) else ""
        cells = _column(table.rows, i)
        values = [v for v in cells if not is_missing(v)]
        words = tokens(name)
        if identifier_rule_of_column(name):
            out.append("identifier")
        elif not values:
            out.append("empty")
        elif all(count_with_share(v) is not None for v in values) and not words & (
            _MAGNITUDE_WORDS | _MINMAX_WORDS
        ):
            out.append("count")  # "n (%)": a count with its share, whatever the column's name
        elif _mostly_text(values) or _is_index(name, cells):
            out.append("label")
        elif words & _MINMAX_WORDS:
            out.append("minmax")
        elif words & _AGGREGATE_COUNT_WORDS and all(as_int(v) is not None for v in values):
            out.append("count")  # "count / cost / a": pandas' aggfunc names the level
        elif words & _MAGNITUDE_WORDS:
            out.append("magnitude")
        elif words & _SHARE_WORDS or all(v.strip().endswith("%") for v in values):
            out.append("share")
        elif words & _COUNT_WORDS and not words & _NOT_COUNT_WORDS:
            out.append("count" if all(as_int(v) is not None for v in values) else "magnitude")
        elif words & _NOT_COUNT_WORDS:
            out.append("label")
        elif all((x := as_int(v)) is not None and x >= 0 for v in values):
            out.append("integer")
        else:
            out.append("magnitude")
    return out


def _where(table: Table, column: str) -> str:
    col = f"column {column!r}" if column else "an unnamed column"
    return f"{table.where}, {col}" if table.where else col


# --- the rules ---------------------------------------------------------------------------------

MAX_CELLS_LISTED = 100_000


class _Counts:
    """What the cell rules found in one count column, accumulated row by row."""

    def __init__(self, rules: Rules):
        self.rules = rules
        self.small: list[tuple[int, int]] = []
        self.n_small = 0
        self.zeros: list[int] = []
        self.n_zeros = 0
        self.empty = 0
        self.unrounded: list[tuple[int, int]] = []
        self.n_unrounded = 0

    def add(self, number: int, value: str) -> None:
        if not value.strip():
            # pandas writes a group with no one in it as an empty cell (NaN): a zero, as in
            # ACRO. Suppressed cells carry a marker ("[c]", "*", "<10") and are skipped.
            self._zero(number)
            self.empty += 1
            return
        if is_missing(value):
            return
        n = as_count(value)
        if n is None:
            return
        if n == 0:
            self._zero(number)
        elif 0 < n < self.rules.threshold:
            self.n_small += 1
            if len(self.small) < MAX_CELLS_LISTED:
                self.small.append((number, n))
        if self.rules.rounding and not _rounded(n, self.rules.rounding):
            self.n_unrounded += 1
            if len(self.unrounded) < MAX_CELLS_LISTED:
                self.unrounded.append((number, n))

    def _zero(self, number: int) -> None:
        self.n_zeros += 1
        if len(self.zeros) < MAX_CELLS_LISTED:
            self.zeros.append(number)

    def findings(self, where: str, name: str) -> list[Finding]:
        rules = self.rules
        out = []
        k = rules.max_examples
        if self.small:
            shown = ", ".join(f"row {r}: {n}" for r, n in self.small[:k])
            more = f" and {self.n_small - k:,} more" if self.n_small > k else ""
            out.append(
                Finding(
                    "threshold",
                    FAIL,
                    where,
                    f"{plural(self.n_small, 'cell')} under the threshold of {rules.threshold} "
                    f"({shown}{more})",
                    tuple((r, name) for r, _n in self.small),
                )
            )
        if self.zeros:
            shown = ", ".join(f"row {r}" for r in self.zeros[:k])
            more = f" and {self.n_zeros - k:,} more" if self.n_zeros > k else ""
            empty = f"; {self.empty} of them empty cells" if self.empty else ""
            out.append(
                Finding(
                    "zero",
                    FAIL if rules.zeros_are_disclosive else REVIEW,
                    where,
                    f"{plural(self.n_zeros, 'zero count')} ({shown}{more}{empty}): a zero can "
                    "disclose that nobody in a group has a characteristic",
                    tuple((r, name) for r in self.zeros),
                )
            )
        if self.unrounded:
            shown = ", ".join(f"row {r}: {n}" for r, n in self.unrounded[:k])
            more = f" and {self.n_unrounded - k:,} more" if self.n_unrounded > k else ""
            how = (
                "midpoint-6 rounding (0, 3, 9, 15, ...)"
                if rules.rounding == "midpoint6"
                else f"rounding to a multiple of {rules.rounding}"
            )
            out.append(
                Finding(
                    "rounding",
                    FAIL,
                    where,
                    f"{plural(self.n_unrounded, 'count')} not rounded as the project requires "
                    f"({how}): {shown}{more}",
                    tuple((r, name) for r, _n in self.unrounded),
                )
            )
        return out


def _rounded(n: int, rounding: str) -> bool:
    if rounding == "midpoint6":
        return n == 0 or n % 6 == 3
    return n % int(rounding) == 0


def check_table(table: Table, rules: Rules, *, scan_values: bool = True) -> list[Finding]:
    """Every table rule over ``table``: identifier and min/max columns, counts (threshold,
    zero, rounding) in every row, secondary suppression, identifiers by value (unless the
    caller scans the file's text itself), model estimates, magnitudes, shares, record level."""
    kinds = roles(table)
    names = [table.header[i] if i < len(table.header) else "" for i in range(len(kinds))]
    findings: list[Finding] = []
    magnitude = [n for n, r in zip(names, kinds, strict=True) if r in ("magnitude", "minmax")]
    shares = [n for n, r in zip(names, kinds, strict=True) if r == "share"]
    # A count under the threshold is a fail whatever else the table holds: named counts and
    # unnamed non-negative integer columns alike.
    counts = [i for i, r in enumerate(kinds) if r in ("count", "integer")]

    for i, role in enumerate(kinds):
        if role == "identifier":
            rule = identifier_rule_of_column(names[i]) or "identifier"
            findings.append(
                Finding(
                    rule,
                    FAIL,
                    _where(table, names[i]),
                    f"{names[i]!r} is a direct identifier column: record-level data about "
                    "people must not leave",
                )
            )
        elif role == "minmax":
            findings.append(
                Finding(
                    "min_max",
                    FAIL,
                    _where(table, names[i]),
                    f"{names[i]!r} holds minima or maxima: each is a single person's value",
                )
            )
        elif role == "label" and looks_like_birth_dates(_column(table.rows, i)):
            findings.append(
                Finding(
                    "date_of_birth",
                    FAIL,
                    _where(table, names[i]),
                    f"{names[i]!r} holds day-precise dates, all different, of people born "
                    "years ago: they look like dates of birth",
                )
            )

    accumulators = {i: _Counts(rules) for i in counts}
    found: dict[int, dict[str, int]] = {}
    value_columns = [i for i, r in enumerate(kinds) if r not in ("identifier", "empty")]
    for number, row in enumerate(table.every_row(), 1):
        for i, acc in accumulators.items():
            acc.add(number, row[i] if i < len(row) else "")
        if scan_values:
            for i in value_columns:
                if i < len(row) and len(row[i]) > 4:
                    hits = identifiers_in(row[i])
                    if hits:
                        merge_counts(found.setdefault(i, {}), hits)
    for i, acc in accumulators.items():
        findings += acc.findings(_where(table, names[i]), names[i])
    for i, hits in found.items():
        findings += identifier_findings(hits, _where(table, names[i]))

    if not table.sampled:
        findings += secondary_suppression(table, kinds, names, rules)
    findings += _table_level(table, rules, names, magnitude, shares, counts, kinds)
    if table.incomplete:
        where = table.where or "table"
        findings.append(Finding(NOT_FULLY_CHECKED, NOT_FULLY_CHECKED, where, table.incomplete))
    return findings


def identifier_findings(hits: dict[str, int], where: str) -> list[Finding]:
    return [
        Finding(
            rule, FAIL, where, f"values that identify people: {plural(n, IDENTIFIER_KINDS[rule])}"
        )
        for rule, n in sorted(hits.items())
    ]


def _table_level(table, rules, names, magnitude, shares, counts, kinds) -> list[Finding]:
    findings = []
    words = set().union(*(tokens(n) for n in names)) if names else set()
    where = table.where or "table"
    if words & _ESTIMATE_WORDS and words & _ERROR_WORDS:
        findings.append(
            Finding(
                "dof",
                REVIEW,
                where,
                "model estimates (coefficients with standard errors or p-values): the "
                f"residual degrees of freedom (at least {rules.dof_threshold}) are not in this "
                "file; ask for the model summary or the number of observations",
            )
        )
    elif magnitude:
        if counts:
            message = (
                f"magnitude values ({', '.join(magnitude[:4])}): the counts are checked, "
                "but dominance (p-ratio, n-k rules) needs the contributors' values; ask for "
                "the largest contributions or an ACRO check of this table"
            )
        else:
            message = (
                f"magnitude values ({', '.join(magnitude[:4])}) with no count column: neither "
                f"the threshold ({rules.threshold} contributors per cell) nor dominance can "
                "be checked; ask for the number of contributors per cell"
            )
        findings.append(Finding("dominance", REVIEW, where, message))
    if shares and not counts:
        findings.append(
            Finding(
                "dominance",
                REVIEW,
                where,
                f"percentages or rates ({', '.join(shares[:4])}) without the counts behind "
                f"them: a cell of fewer than {rules.threshold} people cannot be seen; ask for "
                "the numerators and denominators",
            )
        )
    labels = [i for i, r in enumerate(kinds) if r == "label"]
    if not counts and table.total_rows >= 100 and labels:
        for i in labels:
            values = [v for v in _column(table.rows, i) if v.strip()]
            if len(values) >= 100 and len(set(values)) == len(values):
                findings.append(
                    Finding(
                        "record_level",
                        REVIEW,
                        _where(table, names[i]),
                        f"{table.total_rows:,} rows, no counts, and every value of "
                        f"{names[i]!r} is different: this may be record-level data, not an "
                        "aggregate",
                    )
                )
                break
    return findings


# --- secondary suppression -------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _is_total(text: str) -> bool:
    words = tokens(text)
    return bool(words) and words <= (_TOTAL_WORDS | {"grand", "row", "column", "col"})


def secondary_suppression(
    table: Table, kinds: list[str], names: list[str], rules: Rules
) -> list[Finding]:
    """Suppressed cells (``[c]``, ``*``, ``<10``, ...) that the table's margins give back:
    a row (or column) with a total and one held-back cell is solved by subtraction, and what
    one step solves can open the next, so the rows and columns are solved until nothing
    changes."""
    counts = [i for i, r in enumerate(kinds) if r in ("count", "integer")]
    # Columns of cells: counts, and columns that are all numbers or suppression markers.
    cols = [
        i
        for i, r in enumerate(kinds)
        if i in counts
        or (
            r in ("label", "empty")
            and any(is_suppressed(v) for v in _column(table.rows, i))
            and all(is_suppressed(v) or as_int(v) is not None for v in _column(table.rows, i))
        )
    ]
    if len(cols) < 2 and not table.rows:
        return []
    if not any(is_suppressed(row[c]) for row in table.rows for c in cols if c < len(row)):
        return []  # nothing held back: nothing to work back (and no need to look for totals)
    total_col = next((i for i in cols if _is_total(names[i])), None)
    label_cols = [i for i in range(len(kinds)) if i not in cols]
    total_row = next(
        (
            r
            for r, row in enumerate(table.rows)
            if any(_is_total(row[i]) for i in label_cols if i < len(row))
        ),
        None,
    )
    if total_col is None and total_row is None:
        return []
    grid: dict[tuple[int, int], int | None] = {}
    held: set[tuple[int, int]] = set()
    for r, row in enumerate(table.rows):
        for c in cols:
            value = row[c] if c < len(row) else ""
            if is_suppressed(value):
                grid[(r, c)] = None
                held.add((r, c))
            else:
                grid[(r, c)] = as_int(value)
    body_cols = [c for c in cols if c != total_col]
    body_rows = [r for r in range(len(table.rows)) if r != total_row]
    solved: dict[tuple[int, int], int] = {}
    changed = True
    while changed:
        changed = False
        lines = []
        if total_col is not None:
            lines += [((r, total_col), [(r, c) for c in body_cols]) for r in range(len(table.rows))]
        if total_row is not None:
            lines += [((total_row, c), [(r, c) for r in body_rows]) for c in cols]
        for total_key, parts in lines:
            total = grid.get(total_key)
            unknown = [k for k in parts if grid.get(k) is None]
            if total is None or len(unknown) != 1 or unknown[0] not in held:
                continue
            known = [grid[k] for k in parts if k != unknown[0]]
            if any(v is None for v in known):
                continue
            grid[unknown[0]] = total - sum(known)  # type: ignore[arg-type]
            solved[unknown[0]] = grid[unknown[0]]  # type: ignore[assignment]
            changed = True
    if not solved:
        return []
    shown = ", ".join(f"row {r + 1}, {names[c]!r}" for r, c in sorted(solved)[: rules.max_examples])
    return [
        Finding(
            "secondary_suppression",
            FAIL,
            table.where or "table",
            f"{plural(len(solved), 'suppressed cell')} can be worked back from the totals "
            f"({shown}): suppress further cells in the same rows and columns (secondary "
            "suppression) or drop the totals",
            tuple((r + 1, names[c]) for r, c in sorted(solved)),
        )
    ]


# --- differencing ------------------------------------------------------------------------------


def differencing(a: Table, b: Table, other: str, rules: Rules) -> Finding | None:
    """A finding when ``a`` and ``b`` are the same table (same columns, same row labels)
    whose counts differ, and every difference is under the threshold: subtracting one from
    the other discloses a group of fewer than ``threshold`` people."""
    if a.sampled or b.sampled or not a.rows or len(a.rows) != len(b.rows):
        return None
    if [normalised_name(h) for h in a.header] != [normalised_name(h) for h in b.header]:
        return None
    kinds = roles(a)
    if kinds != roles(b):
        return None
    counts = [i for i, r in enumerate(kinds) if r in ("count", "integer")]
    labels = [i for i, r in enumerate(kinds) if r == "label"]
    if not counts:
        return None
    index_a = {tuple(_cell(row, i) for i in labels): row for row in a.rows}
    index_b = {tuple(_cell(row, i) for i in labels): row for row in b.rows}
    if len(index_a) != len(a.rows) or index_a.keys() != index_b.keys():
        return None
    diffs = []
    for key, row_a in index_a.items():
        row_b = index_b[key]
        for i in counts:
            x, y = as_int(_cell(row_a, i)), as_int(_cell(row_b, i))
            if x is None or y is None:
                if (x is None) != (y is None):
                    return None
                continue
            if x != y:
                diffs.append((key, a.header[i] if i < len(a.header) else "", x, y))
    if not diffs or any(abs(x - y) >= rules.threshold for _k, _c, x, y in diffs):
        return None
    shown = ", ".join(
        f"{'/'.join(k) or 'row'} {c!r}: {x} vs {y}" for k, c, x, y in diffs[: rules.max_examples]
    )
    return Finding(
        "differencing",
        FAIL,
        a.where or "table",
        f"the same table as {other}, differing only by cells under the threshold of "
        f"{rules.threshold} ({shown}): subtracting one from the other discloses groups that "
        "small",
    )


def _cell(row: list[str], i: int) -> str:
    return row[i].strip() if i < len(row) else ""


# --- reading -----------------------------------------------------------------------------------

MAX_HEADER_ROWS = 6


def fold_header(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """One header from several: pandas writes a table with multi-level columns (a
    ``pivot_table`` with two aggregations, say) as one header row per level and a row naming
    the index, all before the first row of numbers. Those rows are joined per column
    (``"count / cost / a"``) so every column keeps the names that say what it holds. A row
    whose first cell is a number is data, never a header level."""
    block = [header]
    body = rows
    numbers_below = False
    while body and len(block) <= MAX_HEADER_ROWS:
        first = body[0][0] if body[0] else ""
        rest = [c for c in body[0][1:] if c.strip()]
        if is_numeric(first) or any(is_numeric(c) for c in rest):
            numbers_below = True
            break
        block.append(body[0])
        body = body[1:]
    if len(block) == 1 or not numbers_below:  # no numbers below: a table of text after all
        return header, rows
    width = max(len(r) for r in block)
    merged = [
        " / ".join(r[j].strip() for r in block if j < len(r) and r[j].strip()) for j in range(width)
    ]
    return merged, body


#: Cells of one table the checks hold at once to decide the columns' roles (the rest is
#: streamed): a wide file of tiny cells would otherwise take gigabytes in the service.
MAX_CELLS = 4_000_000


def read_delimited(
    data: bytes, delimiter: str, max_rows: int, open_text: Callable[[bytes], io.TextIOBase]
) -> Table:
    reader = csv.reader(open_text(data), delimiter=delimiter)
    header = next(reader, [])
    rows: list[list[str]] = []
    total = cells = 0
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        total += 1
        cells += len(row)
        if len(rows) < max_rows and cells <= MAX_CELLS:
            rows.append(row)
    header, body = fold_header(header, rows)
    folded = len(rows) - len(body)

    def all_rows() -> Iterable[list[str]]:
        again = csv.reader(open_text(data), delimiter=delimiter)
        next(again, None)
        skipped = 0
        for row in again:
            if not any(c.strip() for c in row):
                continue
            if skipped < folded:
                skipped += 1
                continue
            yield row

    return Table(header, body, total - folded, all_rows=all_rows, delimiter=delimiter)


#: Bytes of decoded Parquet the checks will hold at once, and the longest cell they keep: a
#: small file can decode to a huge one (a long string repeated through a dictionary).
PARQUET_BUDGET = 256 * 1024 * 1024
MAX_CELL_CHARS = 256


class TooLarge(ValueError):
    pass


def read_parquet(data: bytes, max_rows: int) -> Table:
    """The first ``max_rows`` rows of a Parquet file as text cells, within a memory budget
    (the rest streamed for the cell rules, row group by row group).

    Strings stay dictionary-encoded while read and are cut to ``MAX_CELL_CHARS``; row groups
    whose declared decoded size is over ``PARQUET_BUDGET`` are not read at all, and the table
    says it was not fully checked.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    probe = pq.ParquetFile(io.BytesIO(data))
    meta = probe.metadata
    texts = [
        f.name
        for f in probe.schema_arrow
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        or pa.types.is_binary(f.type)
    ]  # fmt: skip
    flat = _flattened(probe.schema_arrow.empty_table(), pa)  # struct fields as "s.n" columns
    header = list(flat.column_names)
    nested = [f.name for f in flat.schema if pa.types.is_nested(f.type)]  # lists and maps
    structs = any(pa.types.is_struct(f.type) for f in probe.schema_arrow)
    readable = []
    skipped = 0
    for g in range(meta.num_row_groups):
        if meta.row_group(g).total_byte_size > PARQUET_BUDGET:
            skipped += meta.row_group(g).num_rows
        else:
            readable.append(g)
    if skipped and not readable:
        raise TooLarge("its row groups decode to more than the checks' memory budget")

    def batches(limit: int | None):
        pf = pq.ParquetFile(io.BytesIO(data), read_dictionary=texts)
        taken = 0
        for g in readable:
            for batch in pf.iter_batches(batch_size=4096, row_groups=[g]):
                if limit is not None:
                    batch = batch.slice(0, limit - taken)
                arrays = batch.columns
                if structs:
                    arrays = [c.combine_chunks() for c in _flattened(pa.table(batch), pa).columns]
                columns = [_cells(array, pa, pc) for array in arrays]
                yield from (list(r) for r in zip(*columns, strict=True))
                taken += batch.num_rows
                if limit is not None and taken >= limit:
                    return

    rows = list(batches(max_rows)) if header else []
    readable_rows = meta.num_rows - skipped
    notes = []
    if skipped:
        notes.append(f"{plural(skipped, 'row')} in row groups too large to decode were not checked")
    if nested:
        notes.append(f"list or map columns ({', '.join(nested[:5])}) were read as text only")
    incomplete = "; ".join(notes)
    return Table(header, rows, readable_rows, all_rows=lambda: batches(None), incomplete=incomplete)


def _flattened(table, pa):
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    return table


def _cells(column, pa, pc) -> list[str]:
    if pa.types.is_dictionary(column.type):
        values = column.dictionary
        if pa.types.is_binary(values.type):
            values = values.cast(pa.string(), safe=False)
        short = pc.utf8_slice_codeunits(values, 0, MAX_CELL_CHARS).to_pylist()
        return ["" if i is None else str(short[i]) for i in column.indices.to_pylist()]
    return ["" if v is None else str(v)[:MAX_CELL_CHARS] for v in column.to_pylist()]


def table_from_rows(rows: list[list[str]], where: str) -> Table:
    """pandas ``to_html``: one header row (a second, index-name row is folded in)."""
    header, body = fold_header(list(rows[0]), rows[1:])
    if body and len(header) == len(body[0]) - 1:
        header = ["", *header]
    return Table(header, body, len(body), where)


# --- tables printed as text --------------------------------------------------------------------

_MD_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
#: Lines around a printed table that are not rows: pandas' footers, and R's tibble title,
#: column-type row (``<chr> <int>``) and "more rows" notes.
_FOOTER = re.compile(
    r"^\s*(\[\d+ rows x \d+ columns\]|\.\.\.|Name: .*dtype: \w+|dtype: \w+|"
    r"# A tibble:.*|# (?:\u2139|i|\u2026|\.\.\.) .*|(?:<[a-z0-9_]+>\s*)+)\s*$"
)


def _md_cells(line: str) -> list[str]:
    cells = [c.strip() for c in line.strip().split("|")]
    if cells and cells[0] == "":
        cells = cells[1:]
    if cells and cells[-1] == "":
        cells = cells[:-1]
    return cells


def text_tables(text: str) -> list[tuple[int, list[list[str]]]]:
    """``(first line, rows)`` of each table printed in ``text``: Markdown pipe tables, and
    whitespace-aligned tables as ``print(df)`` writes them (a header, an optional index-name
    line, then rows of the same number of fields with numbers in them)."""
    lines = text.splitlines()
    found: list[tuple[int, list[list[str]]]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "|" in line and i + 1 < len(lines) and _MD_SEPARATOR.match(lines[i + 1]):
            rows = [_md_cells(line)]
            j = i + 2
            while j < len(lines) and "|" in lines[j] and lines[j].strip():
                rows.append(_md_cells(lines[j]))
                j += 1
            if len(rows) > 1:
                found.append((i + 1, rows))
            i = j
            continue
        block_end = i
        while block_end < len(lines) and lines[block_end].strip() and "|" not in lines[block_end]:
            block_end += 1
        if block_end - i >= 2:
            table = _aligned(lines[i:block_end])
            if table:
                found.append((i + 1, table))
            i = block_end
        else:
            i += 1
    return found


def _aligned(block: list[str]) -> list[list[str]] | None:
    block = [b for b in block if not _FOOTER.match(b)]
    if len(block) < 2:
        return None
    header = block[0].split()
    body = [b.split() for b in block[1:]]
    if len(header) == 1 and len(body) >= 2 and len(body[0]) == len(body[1]) >= 3:
        # R's two-way table(): the column variable's name above "row variable, levels"
        header, body = body[0], body[1:]
    if body and len(body[0]) == 1 and len(body) > 1:
        index_name, body = body[0][0], body[1:]  # "region" under the column names
    else:
        index_name = ""
    if not body:
        return None
    width = len(body[0])
    if width < 2 or any(len(r) != width for r in body) or len(header) not in (width, width - 1):
        return None
    if not any(is_numeric(c) for r in body for c in r[1:]):
        return None
    if len(header) == width - 1:
        header = [index_name, *header]
    return [header, *body]
