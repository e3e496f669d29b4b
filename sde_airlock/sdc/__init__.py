"""Automated statistical disclosure control (SDC) checks of exported files, for checkers.

Pure: ``check(path, data, rules) -> Report`` for one file, ``check_many(files, rules,
against=...)`` for the files of one request compared with each other and with earlier
releases (differencing). The checks run on the *finished* output (the file that would
leave), not on the microdata behind it, and tell a checker where to look; the decision stays
with two people. Rules, names and defaults follow ACRO (AI-SDC/ACRO, ``acro/default.yaml``:
``safe_threshold: 10``, ``safe_dof_threshold: 10``, ``zeros_are_disclosive: True``), the
checking tool of the UK SACRO project. The rule ids and what each means are in
``docs/disclosure-rules.md`` and :data:`~sde_airlock.sdc.core.RULES`.

Every byte of a file is read: all rows of a table (its columns' roles are decided on the
first ``max_rows``, the cell rules run over every row, streamed); every part of a notebook
(sources, every output MIME type, tracebacks, hidden cells, attachments, metadata); the text,
comments, scripts and external references of HTML and SVG; tables printed as text
(``print(df)``, Markdown) are read as tables. Where a file cannot be read whole the report
says ``not_fully_checked``, and approving it needs an explicit override comment.

The modules: :mod:`.core` (statuses, :class:`Rules`, :class:`Finding`,
:class:`Report`), :mod:`.values` (numbers and identifiers), :mod:`.tables` (tables
and their rules), :mod:`.docs` (notebooks, HTML, SVG, images), :mod:`.types` (what
the bytes of a file are).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath

from sde_airlock.sdc import docs as sdc_docs
from sde_airlock.sdc import jsontables as sdc_jsontables
from sde_airlock.sdc import latex as sdc_latex
from sde_airlock.sdc import pdf as sdc_pdf
from sde_airlock.sdc import stata as sdc_stata
from sde_airlock.sdc import tables as sdc_tables
from sde_airlock.sdc.core import (
    FAIL,
    INFO,
    NOT_FULLY_CHECKED,
    PASS,
    REVIEW,
    RULE_SET_VERSION,
    RULES,
    Finding,
    Report,
    Rules,
    plural,
)
from sde_airlock.sdc.tables import MAX_CELL_CHARS, MAX_CELLS, Table, check_table
from sde_airlock.sdc.types import type_mismatch
from sde_airlock.sdc.values import identifiers_in, merge_counts, valid_nhs_number

__all__ = [
    "FAIL",
    "INFO",
    "MAX_CELLS",
    "MAX_CELL_CHARS",
    "NOT_FULLY_CHECKED",
    "PASS",
    "REVIEW",
    "RULES",
    "RULE_SET_VERSION",
    "Finding",
    "Report",
    "Rules",
    "check",
    "check_many",
    "decode_text",
    "differencing_findings",
    "open_text",
    "read_parquet",
    "valid_nhs_number",
]

# --- text --------------------------------------------------------------------------------------

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


CHUNK = 8 * 1024 * 1024


def text_chunks(data: bytes) -> Iterator[str]:
    """The decoded text of ``data`` in pieces of about ``CHUNK`` bytes cut at line ends (no
    identifier spans a line), so a file of any size is scanned in bounded memory."""
    if len(data) <= CHUNK:
        yield decode_text(data)
        return
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while start < len(data):
        end = data.find(b"\n", start + CHUNK)
        end = len(data) if end < 0 else end + 1
        yield data[start:end].decode("utf-8", "replace")
        start = end


_DOF = (
    re.compile(r"Df Residuals:\s+(\d+)"),  # statsmodels summary()
    re.compile(r"on (\d+) degrees of freedom"),  # R's summary.lm
    re.compile(r"[Rr]esidual (?:[Dd]egrees of freedom|DF|df)\s*[:=]?\s*(\d+)"),
    re.compile(r"^\s*Residual\s*\|\s*[\d.eE+-]+\s+(\d+)\s", re.MULTILINE),  # Stata's ANOVA
)
_SMALL_N = re.compile(r"(?<![A-Za-z0-9_])[nN]\s*=\s*(\d{1,6})(?![\d.])")


def check_text(text: str, where: str, rules: Rules, *, code: bool = False) -> list[Finding]:
    """The text rules over free text: identifiers everywhere; for prose and outputs (not
    code) also residual degrees of freedom, small group sizes and tables printed as text."""
    findings = sdc_tables.identifier_findings(identifiers_in(text), where)
    if code:
        return findings
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
    small = sorted({int(m.group(1)) for m in _SMALL_N.finditer(text)} & set(range(rules.threshold)))
    if small:
        findings.append(
            Finding(
                "small_n",
                REVIEW,
                where,
                f"the text reports group sizes under {rules.threshold} "
                f"({', '.join(f'n={n}' for n in small[: rules.max_examples])})",
            )
        )
    for table in printed_tables(text, f"{where}, "):
        findings += check_table(table, rules, scan_values=False)
    return findings


def printed_tables(text: str, where: str = "") -> list[Table]:
    """The tables written into ``text``: printed by pandas or R, Markdown pipe tables, LaTeX
    tabulars and Stata's ruled tables, each named by where it starts (``where`` first)."""
    return [
        sdc_tables.table_from_rows(rows, f"{where}{kind} table at line {line}")
        for kind, tables in (
            ("printed", sdc_tables.text_tables(text)),
            ("LaTeX", sdc_latex.latex_tables(text)),
            ("Stata", sdc_stata.stata_tables(text)),
        )
        for line, rows in tables
    ]


# --- files -------------------------------------------------------------------------------------

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
TEXT_SUFFIXES = frozenset({".txt", ".md", ".json", ".log", ".tex", ".rst"})
DOCUMENT_SUFFIXES = TEXT_SUFFIXES | {".ipynb", ".html", ".htm", ".svg"}
FIGURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".pdf"})

#: Largest notebook or HTML file parsed as a document (as the preview does); larger ones are
#: scanned as text for identifiers, and say they were not fully checked.
MAX_DOCUMENT = 64 * 1024 * 1024
#: Tables read whole cell by cell (with column names in the findings); larger ones have their
#: identifiers found by scanning the file's text.
CELL_SCAN_CELLS = 1_000_000


def read_parquet(data: bytes, max_rows: int) -> Table:
    return sdc_tables.read_parquet(data, max_rows)


#: Delimiters a ``.csv`` or ``.tsv`` file may really use: spreadsheets set to a European
#: locale write ``;`` (the comma is their decimal mark), some tools ``|``.
OTHER_DELIMITERS = (",", "\t", ";", "|")
DELIMITER_SAMPLE_LINES = 50


def table_delimiter(ext: str, data: bytes) -> str:
    """The delimiter the table in ``data`` uses: its suffix's (``,`` for ``.csv``) unless that
    splits the header into one field, or most of the first rows into a different number of
    fields than the header, while another of :data:`OTHER_DELIMITERS` splits the header in two
    or more and at least 80% of the rows alike (the one that fits most rows). Read wrongly, a
    ``;`` file is one column of text, and its counts are never checked."""
    lines = [
        line
        for line in decode_text(data[: 256 * 1024]).splitlines()[: DELIMITER_SAMPLE_LINES * 2]
        if line.strip()
    ][:DELIMITER_SAMPLE_LINES]

    def fit(delimiter: str) -> float:
        try:
            widths = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        except csv.Error:
            return 0.0
        if not widths or widths[0] < 2:
            return 0.0
        body = widths[1:] or widths
        return sum(w == widths[0] for w in body) / len(body)

    default = TABLE_DELIMITERS[ext]
    if fit(default) >= 0.8:
        return default
    scores = [(fit(d), -i, d) for i, d in enumerate(OTHER_DELIMITERS) if d != default]
    best, _, delimiter = max(scores)
    return delimiter if best >= 0.8 else default


def read_table(path: str, data: bytes, rules: Rules) -> Table:
    ext = PurePosixPath(path).suffix.lower()
    if ext == ".parquet":
        return sdc_tables.read_parquet(data, rules.max_rows)
    delimiter = table_delimiter(ext, data)
    return sdc_tables.read_delimited(data, delimiter, rules.max_rows, open_text)


def check(path: str, data: bytes, rules: Rules | None = None) -> Report:
    """Run every rule that applies to ``path``'s kind over ``data``."""
    rules = rules or Rules()
    ext = PurePosixPath(path).suffix.lower()
    mismatch, readable = type_mismatch(path, data)
    if not readable:
        return Report("other", ["what the bytes are"], [mismatch])
    report = _check_content(path, ext, data, rules)
    if mismatch is not None:
        report.findings.insert(0, mismatch)
    return report


def _check_content(path: str, ext: str, data: bytes, rules: Rules) -> Report:
    try:
        if ext in TABLE_DELIMITERS or ext == ".parquet":
            return _check_table_file(path, data, rules)
        if ext in DOCUMENT_SUFFIXES and len(data) > MAX_DOCUMENT:
            return _too_large(data, rules)
        if ext == ".ipynb":
            return _check_notebook(data, rules)
        if ext in (".html", ".htm", ".svg"):
            return _check_html(data, rules, svg=ext == ".svg")
        if ext == ".json":
            return _check_json(data, rules)
        if ext == ".pdf":
            return _check_pdf(data, rules)
        if ext in TEXT_SUFFIXES:
            report = Report("text", ["the whole text"])
            report.findings = check_text(decode_text(data), "text", rules)
            return report
    except (csv.Error, ValueError, OSError, ImportError, RecursionError, MemoryError) as exc:
        return Report(
            "other",
            ["nothing: the file could not be read"],
            [
                Finding(
                    NOT_FULLY_CHECKED,
                    NOT_FULLY_CHECKED,
                    "file",
                    f"the automated checks could not read it ({str(exc)[:200]}): check it by "
                    "eye in the raw view",
                )
            ],
        )
    if ext in FIGURE_SUFFIXES:
        findings = sdc_docs.image_metadata(data, "figure")
        findings.append(
            Finding(
                "manual",
                INFO,
                "figure",
                "check by eye: axis ranges, labels and annotations can show small counts, "
                "outliers or single people",
            )
        )
        return Report("figure", ["the image's metadata; not the picture itself"], findings)
    return Report(
        "other",
        ["nothing"],
        [Finding("manual", INFO, "file", "no automated checks for this file type")],
    )


def _check_pdf(data: bytes, rules: Rules) -> Report:
    """A PDF: the text and identifier rules over its text (pages, annotations, form fields,
    document information; :mod:`sde_airlock.sdc.pdf`), what it hides, and its figures by eye."""
    if len(data) > MAX_DOCUMENT:
        return _too_large(data, rules)
    content = sdc_pdf.read(data)
    report = Report("figure", [f"its text ({len(content.texts)} parts); not its pictures"])
    for where, text in content.texts:
        report.findings += check_text(text, f"PDF {where}", rules)
    if content.scripts:
        report.findings.append(
            Finding(
                "script",
                FAIL,
                "PDF",
                f"JavaScript or actions a viewer runs: {', '.join(content.scripts[:5])}",
            )
        )
    if content.embedded:
        names = ", ".join(content.embedded[:5])
        report.findings.append(
            Finding(
                "attachment",
                NOT_FULLY_CHECKED,
                "PDF",
                f"{len(content.embedded)} file(s) embedded in it, not checked: {names}",
            )
        )
    for why in content.incomplete:
        report.findings.append(
            Finding(NOT_FULLY_CHECKED, NOT_FULLY_CHECKED, "PDF", f"{why}: check it by eye")
        )
    report.findings.append(
        Finding(
            "manual",
            INFO,
            "figure",
            "check by eye: the pictures in it (axis ranges, labels and annotations can show "
            "small counts, outliers or single people)",
        )
    )
    return report


def _json_doc(text: str):
    """The parsed JSON, or None when the text is not JSON (or nests too deep to parse)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _check_json(data: bytes, rules: Rules) -> Report:
    """A JSON file: its text as any text file's, and the tables its structure holds
    (:mod:`sde_airlock.sdc.jsontables`) through the cell rules, as a CSV's."""
    text = decode_text(data)
    report = Report("text", ["the whole text"])
    report.findings = check_text(text, "text", rules)
    doc = _json_doc(text)
    if doc is None:
        report.findings.append(
            Finding(
                NOT_FULLY_CHECKED,
                NOT_FULLY_CHECKED,
                "file",
                "not valid JSON: read as text only, any table in it was not checked; check it "
                "by eye in the raw view",
            )
        )
        return report
    tables, whole = sdc_jsontables.json_tables(doc, "JSON $")
    for table in tables:
        report.findings += check_table(table, rules, scan_values=False)
    report.checked.append(f"{len(tables)} table(s) in its JSON structure")
    if not whole:
        report.findings.append(
            Finding(
                NOT_FULLY_CHECKED,
                NOT_FULLY_CHECKED,
                "file",
                f"more tables in its JSON than the checks read ({len(tables)} read): check the "
                "rest by eye",
            )
        )
    return report


def _check_table_file(path: str, data: bytes, rules: Rules) -> Report:
    table = read_table(path, data, rules)
    width = max((len(r) for r in table.rows), default=len(table.header))
    cell_scan = not table.sampled and width * max(len(table.rows), 1) <= CELL_SCAN_CELLS
    report = Report("table", [_table_summary(table, rules)])
    usual = TABLE_DELIMITERS.get(PurePosixPath(path).suffix.lower(), "")
    if table.delimiter != usual:
        report.checked.append(f"read with {table.delimiter!r} as the delimiter, not {usual!r}")
    report.findings = check_table(table, rules, scan_values=cell_scan)
    if cell_scan:
        # The header (with any rows folded into it) is carried out too.
        header_hits = identifiers_in("\n".join(table.header))
        report.findings += sdc_tables.identifier_findings(header_hits, "header")
    elif PurePosixPath(path).suffix.lower() != ".parquet":
        hits: dict[str, int] = {}
        for piece in text_chunks(data):
            merge_counts(hits, identifiers_in(piece))
        report.findings += sdc_tables.identifier_findings(hits, "file (every line)")
    else:
        hits = {}
        for row in table.every_row():
            for cell in row:
                if len(cell) > 4:
                    merge_counts(hits, identifiers_in(cell))
        report.findings += sdc_tables.identifier_findings(hits, "file (every row)")
    return report


def _too_large(data: bytes, rules: Rules) -> Report:
    hits: dict[str, int] = {}
    for piece in text_chunks(data):
        merge_counts(hits, identifiers_in(piece))
    findings = sdc_tables.identifier_findings(hits, "file (every line)")
    findings.append(
        Finding(
            NOT_FULLY_CHECKED,
            NOT_FULLY_CHECKED,
            "file",
            f"over {MAX_DOCUMENT // 2**20} MiB: only scanned for identifiers, not read as a "
            "document (tables, counts, models); check it by eye",
        )
    )
    return Report("other", ["every line, for identifiers only"], findings)


def _table_summary(table: Table, rules: Rules) -> str:
    width = max((len(r) for r in table.rows), default=len(table.header))
    read = (
        f"all {plural(table.total_rows, 'row')}, column roles from the first {len(table.rows):,}"
        if table.sampled
        else f"all {plural(table.total_rows, 'row')}"
    )
    return f"table of {width} columns: {read} (threshold {rules.threshold})"


def _check_html(data: bytes, rules: Rules, *, svg: bool = False) -> Report:
    report = Report("figure" if svg else "text")
    tables, text, scripts, external = sdc_docs.html_parts(decode_text(data))
    for n, rows in enumerate(tables, 1):
        report.findings += check_table(sdc_tables.table_from_rows(rows, f"table {n}"), rules)
    report.findings += check_text(text, "text", rules)
    report.findings += sdc_docs.active_content("document", scripts, external)
    report.checked.append(
        f"{'SVG' if svg else 'HTML'}: {plural(len(tables), 'table')}, the text, comments and "
        "attributes"
    )
    if svg:
        report.findings.append(
            Finding(
                "manual",
                INFO,
                "figure",
                "check by eye: a vector figure holds the exact value behind every plotted point",
            )
        )
    return report


def _check_notebook(data: bytes, rules: Rules) -> Report:
    nb = json.loads(decode_text(data))
    if not isinstance(nb, dict):
        raise ValueError("not a notebook")
    report = Report("notebook")
    tables = texts = figures = 0
    for where, kind, content in sdc_docs.notebook_parts(nb):
        if kind == "finding":
            report.findings.append(content)
        elif kind == "figure":
            figures += 1
            report.findings += sdc_docs.image_metadata(sdc_docs.decoded_image(content), where)
        elif kind == "json":
            found_tables, _ = sdc_jsontables.json_tables(content, f"{where}, JSON $")
            for table in found_tables:
                tables += 1
                report.findings += check_table(table, rules, scan_values=False)
        elif kind == "html":
            found, text, scripts, external = sdc_docs.html_parts(content)
            for n, rows in enumerate(found, 1):
                tables += 1
                table = sdc_tables.table_from_rows(rows, f"{where}, table {n}")
                report.findings += check_table(table, rules)
            report.findings += check_text(text, where, rules)
            report.findings += sdc_docs.active_content(where, scripts, external)
        else:
            texts += 1
            report.findings += check_text(content, where, rules, code=kind == "code")
    report.checked.append(
        f"{plural(tables, 'output table')}, {plural(texts, 'text part')} (sources, outputs, "
        f"metadata; threshold {rules.threshold}, residual df {rules.dof_threshold})"
    )
    if figures:
        report.findings.append(
            Finding(
                "manual",
                INFO,
                "figures",
                f"{plural(figures, 'figure')} not read automatically: check axes, labels and "
                "annotations by eye",
            )
        )
    return report


# --- several files: differencing ----------------------------------------------------------------


def _tables_of(path: str, data: bytes, rules: Rules) -> list[Table]:
    ext = PurePosixPath(path).suffix.lower()
    try:
        if ext in TABLE_DELIMITERS or ext == ".parquet":
            return [read_table(path, data, rules)]
        if ext == ".json" and len(data) <= MAX_DOCUMENT:
            doc = _json_doc(decode_text(data))
            return [] if doc is None else sdc_jsontables.json_tables(doc)[0]
        if ext in TEXT_SUFFIXES and len(data) <= MAX_DOCUMENT:
            return printed_tables(decode_text(data))
    except (csv.Error, ValueError, OSError, ImportError):
        return []
    return []


def differencing_findings(
    files: Iterable[tuple[str, bytes]],
    against: Iterable[tuple[str, str, bytes]],
    rules: Rules,
) -> dict[str, list[Finding]]:
    """The ``differencing`` findings of each of ``files`` (``(path, data)``, the files of one
    request): each of its tables compared with the tables of the other files and with those
    of ``against`` (``(label, path, data)``, earlier releases; ``label`` names the release in
    the finding, e.g. "export request 7's released file table.csv"). One finding per table and
    other output it can be differenced against."""
    files = list(files)
    tables = {path: _tables_of(path, data, rules) for path, data in files}
    earlier = [(label, _tables_of(p, d, rules)) for label, p, d in against]
    found: dict[str, list[Finding]] = {path: [] for path, _ in files}
    for path, own in tables.items():
        others = [(f"{p} in this request", t) for p, t in tables.items() if p != path] + earlier
        for table in own:
            for label, theirs in others:
                finding = next(
                    (
                        f
                        for other in theirs
                        if (f := sdc_tables.differencing(table, other, label, rules)) is not None
                    ),
                    None,
                )
                if finding is not None:
                    found[path].append(finding)
    return found


def check_many(
    files: Iterable[tuple[str, bytes]],
    rules: Rules | None = None,
    against: Iterable[tuple[str, bytes]] = (),
) -> dict[str, Report]:
    """:func:`check` of each file, plus ``differencing``: each table compared with the
    tables of the other files and of ``against`` (the project's earlier releases)."""
    rules = rules or Rules()
    files = list(files)
    reports = {path: check(path, data, rules) for path, data in files}
    earlier = [(f"the earlier release {p}", p, d) for p, d in against]
    for path, found in differencing_findings(files, earlier, rules).items():
        reports[path].findings.extend(found)
    return reports
