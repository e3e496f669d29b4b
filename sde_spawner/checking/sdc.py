"""Automated statistical disclosure control (SDC) checks of exported files, for checkers.

Pure: ``check(path, data, rules) -> Report``. The checks run on the *finished* output (the
file that would leave), not on the microdata behind it, and tell a checker where to look; the
decision stays with two people. Rules, names and defaults follow ACRO (AI-SDC/ACRO,
``acro/default.yaml``: ``safe_threshold: 10``, ``safe_dof_threshold: 10``,
``zeros_are_disclosive: True``), the checking tool of the UK SACRO project:

===============  ========  ==================================================================
rule             status    when
===============  ========  ==================================================================
``threshold``    fail      a count cell is above 0 and under ``threshold``
``zeros``        fail      a count cell is 0 (``review`` with ``zeros_are_disclosive=False``)
``min-max``      fail      a column of minima or maxima: each is one person's value
``identifier``   fail      a column named like a direct identifier (NHS number, date of
                           birth, postcode, name, ...) or values that are valid NHS numbers,
                           full UK postcodes or e-mail addresses
``dof``          fail      regression output with residual degrees of freedom under
                           ``dof_threshold`` (``review``: a table of estimates without them)
``threshold``    review    an unnamed integer column beside magnitude columns that may be
                           counts has cells under ``threshold`` or 0
``magnitude``    review    magnitude values (means, sums, costs): dominance (p-ratio, n-k)
                           needs the contributors' values; without a count column the
                           threshold cannot be checked either. Percentages and rates are
                           fine beside their counts, for review without them
``row-level``    review    many rows, no counts, a label column whose values are all
                           distinct: it may be record-level data
``small-n``      review    text that reports ``n = 4`` and the like, under ``threshold``
``manual``       info      figures, PDFs and files nothing here can read
===============  ========  ==================================================================

A table is read from CSV/TSV, Parquet, or the HTML tables of a notebook's outputs (pandas'
``to_html``); a pandas index column (empty header, 0..n-1) is a label, not a count. Text is
read from text files, JSON, Markdown and notebooks' text outputs and Markdown cells. Only
the first ``max_rows`` rows of a table are checked (the report says so).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath

FAIL, REVIEW, INFO, PASS = "fail", "review", "info", "pass"
_RANK = {PASS: 0, INFO: 1, REVIEW: 2, FAIL: 3}


@dataclass(frozen=True)
class Rules:
    """Deployment settings (``SDE_SDC_*``); the defaults are ACRO's."""

    threshold: int = 10
    dof_threshold: int = 10
    zeros_are_disclosive: bool = True
    max_rows: int = 200_000
    max_examples: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Rules:
        """``SDE_SDC_THRESHOLD``, ``SDE_SDC_DOF_THRESHOLD``, ``SDE_SDC_ZEROS_ARE_DISCLOSIVE``
        (the hub passes them on to workspaces, so researchers' pre-checks use the same)."""
        default = cls()
        zeros = env.get("SDE_SDC_ZEROS_ARE_DISCLOSIVE", "").strip().lower()
        return cls(
            threshold=int(env.get("SDE_SDC_THRESHOLD") or default.threshold),
            dof_threshold=int(env.get("SDE_SDC_DOF_THRESHOLD") or default.dof_threshold),
            zeros_are_disclosive=(
                default.zeros_are_disclosive if not zeros else zeros in ("1", "true", "yes")
            ),
        )


@dataclass(frozen=True)
class Finding:
    rule: str
    status: str
    where: str  # "column n", "cell 4, table 1, column count", "line 12"
    message: str
    cells: tuple[tuple[int, str], ...] = ()  # (1-based data row, column) of table findings


@dataclass
class Report:
    """What the automated checks found in one file."""

    kind: str  # table | notebook | text | figure | other
    checked: list[str] = field(default_factory=list)  # what was read, for the checker
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst status of any finding; ``pass`` when the checks found nothing."""
        return max((f.status for f in self.findings), key=_RANK.__getitem__, default=PASS)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "status": self.status,
            "checked": list(self.checked),
            "findings": [
                {
                    "rule": f.rule,
                    "status": f.status,
                    "where": f.where,
                    "message": f.message,
                    "cells": [list(c) for c in f.cells],
                }
                for f in self.findings
            ],
        }


# --- values -------------------------------------------------------------------------------

#: Cells that hold no value: blanks and the usual suppression markers.
MISSING = frozenset(
    {"", "na", "n/a", "nan", "none", "null", "-", "*", "**", "..", ":", "c", "x", "[c]", "[x]",
     "[z]", "suppressed", "redacted", "<5", "<10", "< 5", "< 10", "<=5", "<=10"}
)  # fmt: skip
_INT = re.compile(r"^[+-]?\d{1,3}(,\d{3})+$|^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?%?$")


def _int(text: str) -> int | None:
    t = text.strip()
    if _INT.match(t):
        return int(t.replace(",", ""))
    if re.match(r"^[+-]?\d+\.0+$", t):  # 12.0: pandas writes counts of a float column so
        return int(float(t))
    return None


def _numeric(text: str) -> bool:
    t = text.strip()
    return bool(_INT.match(t) or _FLOAT.match(t))


def _tokens(name: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return {t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t}


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
#: Column names of direct identifiers (as tokens or whole names).
_IDENTIFIER_NAMES = (
    re.compile(
        r"^(nhs_?(no|num|number)?|chi(_?(no|number))?|mrn|hospital_?(no|number)|"
        r"(patient|person|subject|participant|pseudo|study|client|member|individual|record|"
        r"case|encounter|episode|admission|visit|sample|specimen)_?(id|key|no|number)|"
        r"pid|eid|dob|date_?of_?birth|birth_?date|birth_?dt|dod|date_?of_?death|death_?date|"
        r"post_?code|postal_?code|zip(_?code)?|"
        r"address(_?line_?\d)?|street|name|full_?name|first_?name|last_?name|surname|forenames?|"
        r"given_?name|e_?mail|email_?address|phone|telephone|mobile|ni_?(no|number)|"
        r"national_?insurance(_?(no|number))?)$"
    ),
)


def _identifier_column(name: str) -> bool:
    norm = re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()).strip("_")
    return any(p.match(norm) for p in _IDENTIFIER_NAMES)


def valid_nhs_number(digits: str) -> bool:
    """A 10-digit NHS number with a valid modulus-11 check digit."""
    if len(digits) != 10 or not digits.isdigit() or len(set(digits)) == 1:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(digits[9])


_NHS_IN_TEXT = re.compile(r"(?<![\d.])(\d{3})[ -]?(\d{3})[ -]?(\d{4})(?![\d.])")
_POSTCODE = re.compile(
    r"\b(GIR ?0AA|[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2})\b", re.IGNORECASE
)
#: Bounded repeats (RFC 5321 lengths) keep matching linear: with ``+`` a long run such as
#: ``a@a.a.a.…`` costs quadratic time, a denial of service on the checks.
_EMAIL = re.compile(
    r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"
)


def _identifiers_in(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for m in _NHS_IN_TEXT.finditer(text):
        if valid_nhs_number("".join(m.groups())):
            found["NHS number"] = found.get("NHS number", 0) + 1
    for _m in _POSTCODE.finditer(text):
        found["full UK postcode"] = found.get("full UK postcode", 0) + 1
    for _m in _EMAIL.finditer(text):
        found["e-mail address"] = found.get("e-mail address", 0) + 1
    return found


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


# --- tables -------------------------------------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    total_rows: int  # rows in the source (may be more than read)
    where: str = ""  # "" for a file that is one table; "cell 4, table 1" in a notebook


def _column(table: Table, index: int) -> list[str]:
    return [row[index] if index < len(row) else "" for row in table.rows]


def _is_index(name: str, values: list[str]) -> bool:
    """pandas' index written out: no name (or "Unnamed: 0") and 0..n-1 or 1..n."""
    if name.strip() and not name.startswith("Unnamed:"):
        return False
    ints = [_int(v) for v in values]
    if not ints or any(i is None for i in ints):
        return False
    start = ints[0]
    return start in (0, 1) and ints == list(range(start, start + len(ints)))


def _mostly_text(values: list[str]) -> bool:
    return sum(_numeric(v) for v in values) < 0.9 * len(values)


def _roles(table: Table) -> list[str]:
    """Per column: label | count | integer | share | magnitude | minmax | identifier | empty."""
    roles = []
    for i in range(max(len(table.header), max((len(r) for r in table.rows), default=0))):
        name = table.header[i] if i < len(table.header) else ""
        cells = _column(table, i)
        values = [v for v in cells if v.strip().lower() not in MISSING]
        tokens = _tokens(name)
        if _identifier_column(name):
            roles.append("identifier")
        elif not values:
            roles.append("empty")
        elif _mostly_text(values) or _is_index(name, cells):
            roles.append("label")
        elif tokens & _MINMAX_WORDS:
            roles.append("minmax")
        elif tokens & _AGGREGATE_COUNT_WORDS and all(_int(v) is not None for v in values):
            roles.append("count")  # "count / cost / a": pandas' aggfunc names the level
        elif tokens & _MAGNITUDE_WORDS:
            roles.append("magnitude")
        elif tokens & _SHARE_WORDS or all(v.strip().endswith("%") for v in values):
            roles.append("share")
        elif tokens & _COUNT_WORDS and not tokens & _NOT_COUNT_WORDS:
            roles.append("count" if all(_int(v) is not None for v in values) else "magnitude")
        elif tokens & _NOT_COUNT_WORDS:
            roles.append("label")
        elif all((x := _int(v)) is not None and x >= 0 for v in values):
            roles.append("integer")
        else:
            roles.append("magnitude")
    return roles


def _where(table: Table, column: str) -> str:
    col = f"column {column!r}" if column else "an unnamed column"
    return f"{table.where}, {col}" if table.where else col


def check_table(table: Table, rules: Rules) -> list[Finding]:
    """The table rules (threshold, zeros, min-max, identifier, magnitude, row-level)."""
    roles = _roles(table)
    names = [table.header[i] if i < len(table.header) else "" for i in range(len(roles))]
    findings: list[Finding] = []
    magnitude = [n for n, r in zip(names, roles, strict=True) if r in ("magnitude", "minmax")]
    shares = [n for n, r in zip(names, roles, strict=True) if r == "share"]
    counts = [i for i, r in enumerate(roles) if r == "count"]
    integers = [i for i, r in enumerate(roles) if r == "integer"]
    # A table of only labels and non-negative integers is a frequency table: those are counts.
    frequency_table = not magnitude and bool(counts or integers)
    sure = counts + (integers if frequency_table else [])
    maybe = [] if frequency_table else integers

    column_rules = {
        "identifier": (
            "identifier",
            "is a direct identifier column: record-level data about people must not leave",
        ),
        "minmax": ("min-max", "holds minima or maxima: each is a single person's value"),
    }
    for i, role in enumerate(roles):
        if role in column_rules:
            rule, says = column_rules[role]
            findings.append(Finding(rule, FAIL, _where(table, names[i]), f"{names[i]!r} {says}"))
    for i in sure + maybe:
        findings += _count_cells(table, i, names[i], rules, sure=i in sure)
    findings += _identifier_values(table, roles, names)
    tokens = set().union(*(_tokens(n) for n in names)) if names else set()
    if tokens & _ESTIMATE_WORDS and tokens & _ERROR_WORDS:
        findings.append(
            Finding(
                "dof",
                REVIEW,
                table.where or "table",
                "model estimates (coefficients with standard errors or p-values): the "
                f"residual degrees of freedom (at least {rules.dof_threshold}) are not in this "
                "file; ask for the model summary or the number of observations",
            )
        )
    elif magnitude:
        if counts:
            message = (
                f"magnitude values ({', '.join(magnitude[:4])}): the counts are checked above, "
                "but dominance (p-ratio, n-k rules) needs the contributors' values; ask for "
                "the largest contributions or an ACRO check of this table"
            )
        else:
            message = (
                f"magnitude values ({', '.join(magnitude[:4])}) with no count column: neither "
                f"the threshold ({rules.threshold} contributors per cell) nor dominance can "
                "be checked; ask for the number of contributors per cell"
            )
        findings.append(Finding("magnitude", REVIEW, table.where or "table", message))
    if shares and not sure and not maybe:
        findings.append(
            Finding(
                "magnitude",
                REVIEW,
                table.where or "table",
                f"percentages or rates ({', '.join(shares[:4])}) without the counts behind "
                f"them: a cell of fewer than {rules.threshold} people cannot be seen; ask for "
                "the numerators and denominators",
            )
        )
    labels = [i for i, r in enumerate(roles) if r == "label"]
    if not sure and table.total_rows >= 100 and labels:
        for i in labels:
            values = [v for v in _column(table, i) if v.strip()]
            if len(values) >= 100 and len(set(values)) == len(values):
                findings.append(
                    Finding(
                        "row-level",
                        REVIEW,
                        _where(table, names[i]),
                        f"{table.total_rows:,} rows, no counts, and every value of "
                        f"{names[i]!r} is different: this may be record-level data, not an "
                        "aggregate",
                    )
                )
                break
    return findings


def _count_cells(table: Table, i: int, name: str, rules: Rules, *, sure: bool) -> list[Finding]:
    small: list[tuple[int, int]] = []
    zeros: list[int] = []
    empty = 0
    for number, value in enumerate(_column(table, i), 1):
        if not value.strip() and (len(table.rows[number - 1]) > i or sure):
            # pandas writes a group with no one in it as an empty cell (NaN): a zero, as in
            # ACRO. Suppressed cells carry a marker ("[c]", "*", "<10") and are skipped.
            zeros.append(number)
            empty += 1
            continue
        if value.strip().lower() in MISSING:
            continue
        n = _int(value)
        if n is None:
            continue
        if n == 0:
            zeros.append(number)
        elif 0 < n < rules.threshold:
            small.append((number, n))
    out = []
    maybe = "" if sure else " (an integer column beside magnitude values: it may be counts)"
    if small:
        shown = ", ".join(f"row {r}: {n}" for r, n in small[: rules.max_examples])
        more = f" and {len(small) - rules.max_examples:,} more" if len(small) > 5 else ""
        out.append(
            Finding(
                "threshold",
                FAIL if sure else REVIEW,
                _where(table, name),
                f"{_plural(len(small), 'cell')} under the threshold of {rules.threshold} "
                f"({shown}{more}){maybe}",
                tuple((r, name) for r, _n in small),
            )
        )
    if zeros:
        shown = ", ".join(f"row {r}" for r in zeros[: rules.max_examples])
        more = f" and {len(zeros) - rules.max_examples:,} more" if len(zeros) > 5 else ""
        status = FAIL if sure and rules.zeros_are_disclosive else REVIEW
        out.append(
            Finding(
                "zeros",
                status,
                _where(table, name),
                f"{_plural(len(zeros), 'zero count')} ({shown}{more}"
                f"{f'; {empty} of them empty cells' if empty else ''}): a zero can disclose "
                f"that nobody in a group has a characteristic{maybe}",
                tuple((r, name) for r in zeros),
            )
        )
    return out


def _identifier_values(table: Table, roles: list[str], names: list[str]) -> list[Finding]:
    out = []
    for i, role in enumerate(roles):
        if role in ("identifier", "empty"):
            continue
        found: dict[str, int] = {}
        for value in _column(table, i):
            if len(value) > 4:
                for kind, n in _identifiers_in(value).items():
                    found[kind] = found.get(kind, 0) + n
        if found:
            what = ", ".join(_plural(n, kind) for kind, n in found.items())
            out.append(
                Finding(
                    "identifier",
                    FAIL,
                    _where(table, names[i]),
                    f"values that identify people: {what}",
                )
            )
    return out


MAX_HEADER_ROWS = 6


def fold_header(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """One header from several: pandas writes a table with multi-level columns (a
    ``pivot_table`` with two aggregations, say) as one header row per level and a row naming
    the index, all before the first row of numbers. Those rows are joined per column
    (``"count / cost / a"``) so every column keeps the names that say what it holds."""
    block = [header]
    body = rows
    while body and len(block) < MAX_HEADER_ROWS:
        rest = [c for c in body[0][1:] if c.strip()]
        if any(_numeric(c) for c in rest):
            break
        block.append(body[0])
        body = body[1:]
    if len(block) == 1 or not body:  # no numbers below: it was a table of text after all
        return header, rows
    width = max(len(r) for r in block)
    merged = [
        " / ".join(r[j].strip() for r in block if j < len(r) and r[j].strip()) for j in range(width)
    ]
    return merged, body


#: Cells of one table the checks hold at once (rows are cut to fit): a wide file of tiny
#: cells would otherwise take gigabytes of memory in the service.
MAX_CELLS = 4_000_000


def read_delimited(data: bytes, delimiter: str, max_rows: int) -> Table:
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
    return Table(header, body, total - (len(rows) - len(body)))


#: Bytes of decoded Parquet the checks will hold at once, and the longest cell they keep: a
#: small file can decode to a huge one (a long string repeated through a dictionary).
PARQUET_BUDGET = 256 * 1024 * 1024
MAX_CELL_CHARS = 256


class TooLarge(ValueError):
    pass


def read_parquet(data: bytes, max_rows: int) -> Table:
    """The first ``max_rows`` rows of a Parquet file as text cells, within a memory budget.

    Strings stay dictionary-encoded while read and are cut to ``MAX_CELL_CHARS``; row groups
    whose declared decoded size is over ``PARQUET_BUDGET`` are not read at all.
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
    pf = pq.ParquetFile(io.BytesIO(data), read_dictionary=texts)
    header = list(pf.schema_arrow.names)
    columns: list[list[str]] = [[] for _ in header]
    taken = held = 0
    for g in range(meta.num_row_groups):
        if taken >= max_rows:
            break
        held += meta.row_group(g).total_byte_size
        if held > PARQUET_BUDGET:
            if taken == 0:
                raise TooLarge("its row groups decode to more than the checks' memory budget")
            break
        for batch in pf.iter_batches(batch_size=4096, row_groups=[g]):
            batch = batch.slice(0, max_rows - taken)
            for i, column in enumerate(batch.columns):
                columns[i] += _cells(column, pa, pc)
            taken += batch.num_rows
            if taken >= max_rows:
                break
    rows = [list(r) for r in zip(*columns, strict=True)] if header else []
    return Table(header, rows, meta.num_rows)


def _cells(column, pa, pc) -> list[str]:
    if pa.types.is_dictionary(column.type):
        values = column.dictionary
        if pa.types.is_binary(values.type):
            values = values.cast(pa.string(), safe=False)
        short = pc.utf8_slice_codeunits(values, 0, MAX_CELL_CHARS).to_pylist()
        return ["" if i is None else str(short[i]) for i in column.indices.to_pylist()]
    return ["" if v is None else str(v)[:MAX_CELL_CHARS] for v in column.to_pylist()]


STREAM_TEXT_OVER = 16 * 1024 * 1024


def open_text(data: bytes) -> io.TextIOBase:
    """A text stream over an exported file for ``csv``: small files decoded whole (UTF-8, else
    Latin-1), large ones decoded as they are read (UTF-8, undecodable bytes replaced), so a
    250 MiB table is not held two or three times over."""
    if len(data) <= STREAM_TEXT_OVER:
        return io.StringIO(decode_text(data), newline="")
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace", newline="")


def decode_text(data: bytes) -> str:
    """Text of an exported file: UTF-8 (a byte-order mark dropped), else Latin-1."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _HTMLTables(HTMLParser):
    """The tables of an HTML fragment (pandas ``to_html``) and the text outside them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._stack: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table":
            self._stack.append([])
        elif tag == "tr" and self._stack:
            self._stack[-1].append([])
        elif tag in ("td", "th") and self._stack:
            if not self._stack[-1]:
                self._stack[-1].append([])
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None and self._stack:
            self._stack[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._stack:
            self.tables.append(self._stack.pop())

    def handle_data(self, data):
        if self._skip:
            return
        if self._cell is not None:
            self._cell.append(data)
        elif not self._stack:
            self.text.append(data)


def html_tables(fragment: str) -> tuple[list[list[list[str]]], str]:
    parser = _HTMLTables()
    parser.feed(fragment)
    parser.close()
    return [t for t in parser.tables if t], " ".join(parser.text)


def _table_from_rows(rows: list[list[str]], where: str) -> Table:
    """pandas ``to_html``: one header row (a second, index-name row is folded in)."""
    header, body = fold_header(list(rows[0]), rows[1:])
    if body and len(header) == len(body[0]) - 1:
        header = ["", *header]
    return Table(header, body, len(body), where)


# --- text ---------------------------------------------------------------------------------

_DOF = (
    re.compile(r"Df Residuals:\s+(\d+)"),  # statsmodels summary()
    re.compile(r"on (\d+) degrees of freedom"),  # R's summary.lm
    re.compile(r"[Rr]esidual (?:[Dd]egrees of freedom|DF|df)\s*[:=]?\s*(\d+)"),
)
_SMALL_N = re.compile(r"(?<![A-Za-z0-9_])[nN]\s*=\s*(\d{1,6})(?![\d.])")


def check_text(text: str, where: str, rules: Rules) -> list[Finding]:
    """The text rules (dof, identifier, small-n) over free text."""
    findings: list[Finding] = []
    dofs = [int(m.group(1)) for p in _DOF for m in p.finditer(text)]
    low = [d for d in dofs if d < rules.dof_threshold]
    if low:
        findings.append(
            Finding(
                "dof",
                FAIL,
                where,
                f"a model with {min(low)} residual degrees of freedom (under "
                f"{rules.dof_threshold}): its estimates describe too few people",
            )
        )
    found = _identifiers_in(text)
    if found:
        what = ", ".join(_plural(n, kind) for kind, n in found.items())
        findings.append(Finding("identifier", FAIL, where, f"values that identify people: {what}"))
    small = sorted({int(m.group(1)) for m in _SMALL_N.finditer(text)} & set(range(rules.threshold)))
    if small:
        findings.append(
            Finding(
                "small-n",
                REVIEW,
                where,
                f"the text reports group sizes under {rules.threshold} "
                f"({', '.join(f'n={n}' for n in small[: rules.max_examples])})",
            )
        )
    return findings


# --- files --------------------------------------------------------------------------------

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
TEXT_SUFFIXES = frozenset({".txt", ".md", ".json", ".log", ".tex", ".rst"})
DOCUMENT_SUFFIXES = TEXT_SUFFIXES | {".ipynb", ".html", ".htm"}
FIGURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf"})


#: Largest notebook, HTML or text file the checks parse (as the preview does for notebooks).
MAX_DOCUMENT = 64 * 1024 * 1024


def check(path: str, data: bytes, rules: Rules | None = None) -> Report:
    """Run every rule that applies to ``path``'s kind over ``data``."""
    rules = rules or Rules()
    ext = PurePosixPath(path).suffix.lower()
    try:
        if ext in TABLE_DELIMITERS or ext == ".parquet":
            table = (
                read_parquet(data, rules.max_rows)
                if ext == ".parquet"
                else read_delimited(data, TABLE_DELIMITERS[ext], rules.max_rows)
            )
            report = Report("table", [_table_summary(table, rules)])
            report.findings = check_table(table, rules)
            return report
        if ext in DOCUMENT_SUFFIXES and len(data) > MAX_DOCUMENT:
            return Report(
                "other",
                [f"nothing: over {MAX_DOCUMENT // 2**20} MiB, too large to read automatically"],
                [Finding("manual", REVIEW, "file", "too large for the automated checks")],
            )
        if ext == ".ipynb":
            return _check_notebook(data, rules)
        if ext in (".html", ".htm"):
            report = Report("text")
            tables, text = html_tables(decode_text(data))
            for n, rows in enumerate(tables, 1):
                report.findings += check_table(_table_from_rows(rows, f"table {n}"), rules)
            report.findings += check_text(text, "text", rules)
            report.checked.append(f"HTML: {_plural(len(tables), 'table')} and the text")
            return report
        if ext in TEXT_SUFFIXES:
            report = Report("text", ["the whole text"])
            report.findings = check_text(decode_text(data), "text", rules)
            return report
    except (csv.Error, ValueError, OSError, ImportError, RecursionError, MemoryError) as exc:
        return Report(
            "other",
            ["nothing: the file could not be read"],
            [Finding("manual", REVIEW, "file", f"automated checks could not read it: {exc}")],
        )
    if ext in FIGURE_SUFFIXES:
        return Report(
            "figure",
            ["nothing: figures are not read automatically"],
            [
                Finding(
                    "manual",
                    INFO,
                    "figure",
                    "check by eye: axis ranges, labels and annotations can show small counts, "
                    "outliers or single people",
                )
            ],
        )
    return Report(
        "other",
        ["nothing"],
        [Finding("manual", INFO, "file", "no automated checks for this file type")],
    )


def _table_summary(table: Table, rules: Rules) -> str:
    width = max((len(r) for r in table.rows), default=len(table.header))
    read = (
        f"the first {len(table.rows):,} of {table.total_rows:,} rows"
        if table.total_rows > len(table.rows)
        else f"all {_plural(table.total_rows, 'row')}"
    )
    return f"table of {width} columns: {read} (threshold {rules.threshold})"


def _notebook_parts(nb: dict) -> Iterator[tuple[str, str, str]]:
    """``(where, kind, content)`` for each Markdown cell and text or HTML output."""
    for number, cell in enumerate(nb.get("cells") or [], 1):
        if not isinstance(cell, dict):
            continue
        if cell.get("cell_type") == "markdown":
            yield f"cell {number} (Markdown)", "text", _joined(cell.get("source"))
            continue
        for output in cell.get("outputs") or []:
            if not isinstance(output, dict):
                continue
            if output.get("output_type") == "stream":
                yield f"cell {number} output", "text", _joined(output.get("text"))
                continue
            bundle = output.get("data") or {}
            if not isinstance(bundle, dict):
                continue
            if "text/html" in bundle:
                yield f"cell {number} output", "html", _joined(bundle["text/html"])
            elif "text/plain" in bundle:
                yield f"cell {number} output", "text", _joined(bundle["text/plain"])
            if any(str(k).startswith("image/") for k in bundle):
                yield f"cell {number} output", "figure", ""


def _joined(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def _check_notebook(data: bytes, rules: Rules) -> Report:
    nb = json.loads(decode_text(data))
    if not isinstance(nb, dict):
        raise ValueError("not a notebook")
    report = Report("notebook")
    tables = texts = figures = 0
    for where, kind, content in _notebook_parts(nb):
        if kind == "figure":
            figures += 1
        elif kind == "html":
            found, text = html_tables(content)
            for n, rows in enumerate(found, 1):
                tables += 1
                report.findings += check_table(_table_from_rows(rows, f"{where}, table {n}"), rules)
            report.findings += check_text(text, where, rules)
        else:
            texts += 1
            report.findings += check_text(content, where, rules)
    report.checked.append(
        f"{_plural(tables, 'output table')}, {_plural(texts, 'text part')} "
        f"(threshold {rules.threshold}, residual df {rules.dof_threshold})"
    )
    if figures:
        report.findings.append(
            Finding(
                "manual",
                INFO,
                "figures",
                f"{_plural(figures, 'figure')} not read automatically: check axes, labels and "
                "annotations by eye",
            )
        )
    return report
