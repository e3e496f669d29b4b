"""Build a member's minimum dataset from a CSV or Parquet source, safely.

For each grant, in one pass over the source (DuckDB reads and filters; a person-level
table's NHS number check and pseudonyms are computed in native code, see
:mod:`sde_spawner.datasets.pseudonym_batch`, with the same HMAC in SQL as the fallback, and
written with pyarrow, see :mod:`sde_spawner.datasets.parquet_out`; the source's and the
output's SHA-256 are taken while the extract is built, not read again after it)::

    source rows
      - rows whose identifier is not a valid NHS number
      - everyone on the opt-out lists in force (national always, local lists by project policy)
      -> identifier replaced by the per-project pseudonym (column ``pseudonym``)
      -> row filter, granted columns
      -> Parquet (and CSV when the project asks)

Row filters are a small, safe expression language parsed with :mod:`ast` and translated to
SQL whose values are bound parameters — never evaluated as Python, never pasted into SQL::

    age >= 18 and region in ['north', 'east'] and not (sex == 'U')

Extracts are immutable and versioned: each build goes into a fresh temporary directory that
is made read-only and renamed to ``vNNNN`` beside the earlier versions, so a failed build
leaves nothing half-written and nothing is ever changed in place. A fingerprint of the inputs
(grants, source file, identifier column, opt-out list versions, pseudonym key id, formats)
lets a restart reuse the latest version; any change builds the next one. Each version holds
``MANIFEST.json`` (fingerprint and counts) and a data dictionary for the researcher
(``DATA_DICTIONARY.json`` and ``.md``: columns, types, row counts, version, build date —
counts only, never a removed identifier).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sde_spawner.datasets import parquet_out, pseudonym_batch
from sde_spawner.datasets.nhs_number import valid_sql
from sde_spawner.datasets.pseudonyms import pads, pseudonym_sql

PSEUDONYM_COLUMN = "pseudonym"
MANIFEST = "MANIFEST.json"
DICTIONARY = "DATA_DICTIONARY"
FORMAT_VERSION = 2
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class ExtractError(ValueError):
    """A grant cannot be turned into an extract; the message is shown to the user."""


@dataclass(frozen=True)
class GrantSpec:
    dataset: str  # dataset slug, becomes the file name
    source_path: str
    columns: tuple[str, ...]
    row_filter: str = ""
    identifier_column: str = ""  # the NHS number column; "" when not person-level data


@dataclass(frozen=True)
class OptoutVersion:
    """One opt-out list version in force (its entries are fetched only when building)."""

    name: str
    version: int
    entries: int
    sha256: str


@dataclass(frozen=True)
class SafeData:
    """What makes person-level extracts safe: the project's pseudonym key (kept in memory,
    never written), the opt-out list versions in force and a way to fetch their numbers."""

    project: str = ""
    key: bytes = field(default=b"", repr=False)
    key_id: str = ""
    optouts: tuple[OptoutVersion, ...] = ()
    load_entries: Callable[[OptoutVersion], pa.Table] | None = field(
        default=None, repr=False, compare=False
    )
    write_csv: bool = False


@dataclass(frozen=True)
class BuildResult:
    path: Path  # the version directory, to be mounted at /data
    version: int
    built: bool  # False: an existing version was reused
    manifest: dict


# ---- row filters ------------------------------------------------------------------------
_COMPARE = {
    ast.Eq: "=",
    ast.NotEq: "<>",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}


@dataclass(frozen=True)
class RowFilter:
    """A checked row filter: SQL with ``$fN`` placeholders, their values, the columns used."""

    sql: str
    params: dict
    columns: frozenset[str]


def parse_row_filter(text: str) -> RowFilter | None:
    """Check a row filter and translate it to SQL; ``ExtractError`` when not allowed."""
    if not text.strip():
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExtractError(f"row filter {text!r} is not valid: {exc.msg}") from None
    params: dict = {}
    columns: set[str] = set()
    sql = _expr(tree.body, text, params, columns)
    return RowFilter(sql, params, frozenset(columns))


def _literal(node: ast.AST, text: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        return -node.operand.value
    raise ExtractError(f"row filter {text!r}: only plain values may be compared")


def _param(value, params: dict) -> str:
    name = f"f{len(params)}"
    params[name] = value
    return f"${name}"


def _expr(node: ast.AST, text: str, params: dict, columns: set) -> str:
    if isinstance(node, ast.BoolOp):
        joiner = " AND " if isinstance(node.op, ast.And) else " OR "
        return "(" + joiner.join(_expr(v, text, params, columns) for v in node.values) + ")"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return f"(NOT {_expr(node.operand, text, params, columns)})"
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        if not isinstance(node.left, ast.Name):
            raise ExtractError(f"row filter {text!r}: the left side must be a column name")
        columns.add(node.left.id)
        column = quote(node.left.id)
        op, right = node.ops[0], node.comparators[0]
        if isinstance(op, ast.In | ast.NotIn):
            if not isinstance(right, ast.List | ast.Tuple) or not right.elts:
                raise ExtractError(f"row filter {text!r}: 'in' needs a list of values")
            values = ", ".join(_param(_literal(v, text), params) for v in right.elts)
            neg = "NOT " if isinstance(op, ast.NotIn) else ""
            return f"({column} {neg}IN ({values}))"
        sql_op = _COMPARE.get(type(op))
        if sql_op is None:
            raise ExtractError(f"row filter {text!r}: operator not allowed")
        return f"({column} {sql_op} {_param(_literal(right, text), params)})"
    raise ExtractError(
        f"row filter {text!r}: use comparisons (==, !=, <, <=, >, >=, in) joined by and/or/not"
    )


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal_sql(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---- reading sources --------------------------------------------------------------------
def connect(threads: int | None = None, memory_limit: str | None = None):
    """An in-memory DuckDB that never downloads or loads extensions on its own."""
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    return duckdb.connect(":memory:", config=config)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def source_relation(path: str, identifier: str = "") -> str:
    """SQL reading one source file (the identifier column, when named, read as text)."""
    p = Path(path)
    if not p.is_file():
        raise ExtractError(f"dataset source {path} is missing")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return f"read_parquet({_literal_sql(str(p))})"
    if suffix == ".csv":
        types = f", types={{{_literal_sql(identifier)}: 'VARCHAR'}}" if identifier else ""
        return f"read_csv({_literal_sql(str(p))}, header=true{types})"
    raise ExtractError(f"dataset source {path}: only .csv and .parquet are supported")


def source_columns(con, path: str) -> dict[str, str]:
    """Column name -> DuckDB type of one source; ``ExtractError`` when it cannot be read."""
    relation = source_relation(path)
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as exc:
        raise ExtractError(f"dataset source {path} cannot be read: {_first_line(exc)}") from None
    return {r[0]: r[1] for r in rows}


def check_identifier(path: str, identifier: str) -> None:
    """``ExtractError`` unless ``path`` can be read and has the ``identifier`` column."""
    with contextlib.closing(connect(threads=1)) as con:
        cols = source_columns(con, path)
    if identifier not in cols:
        raise ExtractError(f"dataset source {path} has no identifier column {identifier!r}")


# ---- one dataset --------------------------------------------------------------------------
def _sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    """The file's SHA-256 (hashlib releases the GIL: it may run beside the build); ``stop``
    set: give up (the build failed, nobody will read the result)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            if stop is not None and stop.is_set():
                return ""
            h.update(chunk)
    return h.hexdigest()


def _plan(grant: GrantSpec, source_cols: dict[str, str]) -> tuple[list[str], RowFilter | None]:
    """Check columns, identifier and filter against the source; the output columns."""
    ident = grant.identifier_column
    if not grant.columns:
        raise ExtractError(f"grant on {grant.dataset} names no columns")
    available = set(source_cols)
    if ident:
        if ident not in source_cols:
            raise ExtractError(
                f"dataset {grant.dataset} has no identifier column {ident!r} in its source"
            )
        if PSEUDONYM_COLUMN in source_cols and ident != PSEUDONYM_COLUMN:
            raise ExtractError(
                f"dataset {grant.dataset} already has a column named {PSEUDONYM_COLUMN!r}, "
                "which the pseudonym of its identifier would replace"
            )
        available = (available - {ident}) | {PSEUDONYM_COLUMN}
        if ident in grant.columns and ident != PSEUDONYM_COLUMN:
            raise ExtractError(
                f"column {ident} of {grant.dataset} is the person identifier and never leaves "
                f"the hub: grant {PSEUDONYM_COLUMN!r} for its per-project pseudonym"
            )
    missing = [c for c in grant.columns if c not in available]
    if missing:
        raise ExtractError(f"dataset {grant.dataset} has no column(s): {', '.join(missing)}")
    if len(set(grant.columns)) != len(grant.columns):
        raise ExtractError(f"grant on {grant.dataset} names a column twice")
    row_filter = parse_row_filter(grant.row_filter)
    if row_filter is not None:
        unknown = sorted(row_filter.columns - available)
        if unknown:
            raise ExtractError(
                f"row filter on {grant.dataset} cannot be applied: no column(s) "
                f"{', '.join(unknown)}"
            )
    return list(grant.columns), row_filter


def _extract_error(grant: GrantSpec, row_filter: RowFilter | None, exc: Exception):
    return ExtractError(
        f"row filter on {grant.dataset} cannot be applied: {_first_line(exc)}"
        if row_filter
        else f"dataset {grant.dataset} cannot be extracted: {_first_line(exc)}"
    )


def _copy(con, query: str, params: dict, grant: GrantSpec, row_filter, out: Path) -> None:
    try:
        con.execute(f"COPY ({query}) TO {_literal_sql(str(out))} (FORMAT parquet)", params)
    except duckdb.Error as exc:
        raise _extract_error(grant, row_filter, exc) from None


BATCH_ROWS = 1 << 19


def _write_pseudonymised(
    con,
    grant: GrantSpec,
    columns: list[str],
    row_filter: RowFilter | None,
    ident: str,
    per_list_names: list[str],  # the lists in force: DuckDB tables optout_0, optout_1, ...
    safe: SafeData,
    out: Path,
) -> dict:
    """The person-level extract in one pass; returns its counts and the file's SHA-256.

    DuckDB reads the source once and gives, per row, the identifier as text, whether the row
    filter holds and the granted columns. In worker threads each batch gets, in native code
    with the GIL released, the NHS number check of the identifier with its spaces removed and
    its membership of each list in force
    (:class:`~sde_spawner.datasets.pseudonym_batch.OptoutCheck`: the same answers as the SQL
    path's ``replace(id, ' ', '')``, ``valid`` and ``IN``), is counted and cut to the kept rows
    (valid, not opted out, filter), gets the pseudonyms of the normalised identifiers
    (:class:`~sde_spawner.datasets.pseudonym_batch.Pseudonymiser`), and its low-cardinality
    string columns are made dictionary arrays (native code too, see
    :mod:`~sde_spawner.datasets.parquet_out`: the writer then neither hashes nor compares every
    value; the file reads back as the same plain strings). One writer thread writes the batches
    in order with pyarrow, hashing the file's bytes as they go, so reading, checking, hashing
    and writing overlap. The identifier never reaches the output: only its pseudonym.
    """
    granted = [c for c in columns if c != PSEUDONYM_COLUMN]
    query = (
        f"SELECT CAST({quote(ident)} AS VARCHAR) AS id"
        + (f", coalesce(({row_filter.sql}), false) AS filter_ok" if row_filter else "")
        + "".join(f", {quote(c)}" for c in granted)
        + " FROM src"
    )
    n_lists = len(per_list_names)
    check = pseudonym_batch.OptoutCheck(
        [
            con.sql(f"SELECT CAST(nhs_number AS VARCHAR) FROM optout_{i}").to_arrow_table()[0]
            for i in range(n_lists)
        ]
    )
    pseudonymise = pseudonym_batch.Pseudonymiser(safe.key)
    params = dict(row_filter.params) if row_filter else {}
    counts = {"rows_in": 0, "removed_invalid_identifier": 0, "removed_by_optout": 0}
    per_list = [0] * n_lists

    def count(mask) -> int:
        return pc.sum(mask).as_py() or 0

    def work(batch: pa.RecordBatch):
        valid, on, spaced = check(batch.column("id"))
        opted = pc.and_(valid, pc.not_equal(on, 0))
        n_opted = count(opted)
        on_lists = [n_opted]  # one list in force (the usual case): it is the opt-out flag
        if n_lists > 1:
            bits = [pa.scalar(1 << i, pa.uint32()) for i in range(n_lists)]
            on_lists = [
                count(pc.and_(valid, pc.not_equal(pc.bit_wise_and(on, b), 0))) for b in bits
            ]
        stats = (batch.num_rows, batch.num_rows - count(valid), n_opted, on_lists)
        keep = pc.and_(valid, pc.invert(opted))
        if row_filter:
            keep = pc.and_(keep, batch.column("filter_ok"))
        # only what is written (and the identifier, for its pseudonym) is cut to the kept rows
        kept = batch.select(["id", *granted]).filter(keep)
        ids = kept.column("id")
        if spaced:  # the pseudonym is that of the identifier with its spaces removed
            ids = pc.replace_substring(ids, " ", "")
        arrays = [
            pseudonymise(ids)
            if c == PSEUDONYM_COLUMN
            else parquet_out.as_dictionary(kept.column(c))
            if c in dictionary_columns
            else kept.column(c)
            for c in columns
        ]
        return stats, pa.RecordBatch.from_arrays(arrays, names=columns)

    try:
        reader = con.sql(query, params=params).to_arrow_reader(BATCH_ROWS)
        fields = {f.name: f for f in reader.schema}
        schema = pa.schema(
            [
                pa.field(PSEUDONYM_COLUMN, pa.string()) if c == PSEUDONYM_COLUMN else fields[c]
                for c in columns
            ]
        )
        batches = iter(reader)
        first = next(batches, None)
        dictionary_columns = parquet_out.dictionary_columns(schema, first, granted)
        # The pseudonym column is unique per row and hex: no dictionary, no min/max statistics,
        # no compression (snappy saved 10% of its size for half the writer's time)
        others = [c for c in columns if c != PSEUDONYM_COLUMN]
        compression = {c: "snappy" for c in others} | {PSEUDONYM_COLUMN: "none"}
        with (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="sde-extract") as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sde-extract-write") as writes,
            parquet_out.HashingFile(out) as sink,
            pq.ParquetWriter(
                sink,
                parquet_out.with_dictionaries(schema, dictionary_columns),
                use_dictionary=others,
                write_statistics=others,
                compression=compression,
                # the file's Arrow schema would name the dictionary arrays; without it, it
                # reads back as the plain schema (checked by _dictionary_columns)
                store_schema=not dictionary_columns,
            ) as writer,
        ):

            def write(job) -> None:  # one writer thread: batches are written in order
                (rows, invalid, opted, lists), table = job.result()
                counts["rows_in"] += rows
                counts["removed_invalid_identifier"] += invalid
                counts["removed_by_optout"] += opted
                for i, n in enumerate(lists):
                    per_list[i] += n
                if table.num_rows:
                    writer.write_batch(table)

            pending: deque = deque()
            for batch in itertools.chain([] if first is None else [first], batches):
                pending.append(writes.submit(write, pool.submit(work, batch)))
                while len(pending) > 3:  # at most a few batches in memory
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
    except duckdb.Error as exc:
        raise _extract_error(grant, row_filter, exc) from None
    counts["removed_by_optout_per_list"] = dict(zip(per_list_names, per_list, strict=True))
    return counts, sink.sha256()


def build_dataset(con, grant: GrantSpec, safe: SafeData, out_dir: Path) -> dict:
    """Write one granted table into ``out_dir``; returns its counts and checksums.

    The source's checksum is computed in a thread of its own while the extract is built (one
    more reader of a file the build reads anyway), so it adds no time at the end."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sde-extract-hash") as hashing:
        source_sha256 = None
        if Path(grant.source_path).is_file():
            source_sha256 = hashing.submit(_sha256_file, Path(grant.source_path), stop)
        try:
            return _build_dataset(con, grant, safe, out_dir, source_sha256)
        except BaseException:
            stop.set()
            raise


def _build_dataset(con, grant: GrantSpec, safe: SafeData, out_dir: Path, source_sha256) -> dict:
    cols = source_columns(con, grant.source_path)
    columns, row_filter = _plan(grant, cols)
    ident = grant.identifier_column
    params: dict = dict(row_filter.params) if row_filter else {}
    relation = source_relation(grant.source_path, ident)
    out = out_dir / f"{grant.dataset}.parquet"
    counts: dict = {}
    out_sha256 = ""  # the native path hashes its file as it writes it
    if ident:
        if not safe.key:
            raise ExtractError(f"no pseudonym key for the person-level dataset {grant.dataset}")
        if "national" not in {o.name for o in safe.optouts} or safe.load_entries is None:
            raise ExtractError(
                f"the national data opt-out is not in force, so {grant.dataset} (person-level "
                "data) cannot be extracted"
            )
        con.execute(f"CREATE OR REPLACE TEMP VIEW src AS SELECT * FROM {relation}")
        for i, ov in enumerate(safe.optouts):
            con.register(f"optout_{i}", safe.load_entries(ov))
        per_list_names = [f"{ov.name} v{ov.version}" for ov in safe.optouts]
        native = (
            pseudonym_batch.available()
            and not (row_filter and PSEUDONYM_COLUMN in row_filter.columns)
            and len(safe.optouts) <= pseudonym_batch.MAX_LISTS
        )
        if native:
            # One pass: DuckDB reads, checks and filters; the pseudonyms are made in native code
            # from Arrow batches and written with pyarrow (see _write_pseudonymised).
            counts, out_sha256 = _write_pseudonymised(
                con, grant, columns, row_filter, ident, per_list_names, safe, out
            )
        else:  # the SQL HMAC: a counting pass, then one COPY
            norm = f"replace(CAST({quote(ident)} AS VARCHAR), ' ', '')"
            con.execute("DROP TABLE IF EXISTS optouts_all")
            con.execute("CREATE TEMP TABLE optouts_all (nhs_number VARCHAR)")
            list_checks = []
            for i in range(len(safe.optouts)):
                con.execute(f"INSERT INTO optouts_all SELECT nhs_number FROM optout_{i}")
                list_checks.append(f"id IN (SELECT nhs_number FROM optout_{i})")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE optouts AS SELECT DISTINCT * FROM optouts_all"
            )
            stats_sql = (
                "SELECT count(*), count(*) FILTER (WHERE NOT valid), "
                "count(*) FILTER (WHERE valid AND id IN (SELECT nhs_number FROM optouts))"
                + "".join(f", count(*) FILTER (WHERE valid AND {c})" for c in list_checks)
                + f" FROM (SELECT id, coalesce({valid_sql('id')}, false) AS valid"
                f" FROM (SELECT {norm} AS id FROM src))"
            )
            try:
                rows_in, invalid, opted_out, *per_list = con.execute(stats_sql).fetchone()
            except duckdb.Error as exc:
                raise ExtractError(
                    f"dataset source {grant.source_path} cannot be read: {_first_line(exc)}"
                ) from None
            # The real identifier is only ever ``id`` inside this query; the filter sees the
            # pseudonym under its own name (computed again only when the filter uses it).
            inner_cols = ", ".join(
                f"{pseudonym_sql('id')} AS {quote(PSEUDONYM_COLUMN)}"
                if c == PSEUDONYM_COLUMN
                else quote(c)
                for c in sorted(set(columns) | (row_filter.columns if row_filter else set()))
            )
            body = (
                f"SELECT {inner_cols} FROM (SELECT *, {norm} AS id FROM src) s "
                f"WHERE {valid_sql('s.id')} AND s.id NOT IN (SELECT nhs_number FROM optouts)"
            )
            query = f"SELECT {', '.join(quote(c) for c in columns)} FROM ({body})"
            if row_filter:
                query += f" WHERE {row_filter.sql}"
            if "$ipad" in query:  # DuckDB refuses parameters a query does not use
                ipad, opad = pads(safe.key)
                params.update({"ipad": ipad, "opad": opad})
            counts = {
                "rows_in": rows_in,
                "removed_invalid_identifier": invalid,
                "removed_by_optout": opted_out,
                "removed_by_optout_per_list": dict(zip(per_list_names, per_list, strict=True)),
            }
            _copy(con, query, params, grant, row_filter, out)
    else:
        query = f"SELECT {', '.join(quote(c) for c in columns)} FROM {relation}"
        if row_filter:
            query += f" WHERE {row_filter.sql}"
        try:
            counts = {"rows_in": con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]}
        except duckdb.Error as exc:
            raise ExtractError(
                f"dataset source {grant.source_path} cannot be read: {_first_line(exc)}"
            ) from None
        counts.update({"removed_invalid_identifier": 0, "removed_by_optout": 0})
        counts["removed_by_optout_per_list"] = {}
        _copy(con, query, params, grant, row_filter, out)
    meta = pq.read_metadata(out)
    rows_out = meta.num_rows
    counts["removed_by_filter"] = (
        counts["rows_in"] - counts["removed_invalid_identifier"] - counts["removed_by_optout"]
    ) - rows_out
    counts["rows_out"] = rows_out
    files = {out.name: out_sha256 or _sha256_file(out)}
    if safe.write_csv:
        csv_out = out_dir / f"{grant.dataset}.csv"
        con.execute(
            f"COPY (SELECT * FROM read_parquet({_literal_sql(str(out))})) "
            f"TO {_literal_sql(str(csv_out))} (FORMAT csv, HEADER true)"
        )
        files[csv_out.name] = _sha256_file(csv_out)
    schema = pq.read_schema(out)
    return {
        "dataset": grant.dataset,
        "identifier": ident or None,
        "pseudonymised": bool(ident),
        "row_filter": grant.row_filter,
        "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
        **counts,
        "source_sha256": (
            source_sha256.result() if source_sha256 else _sha256_file(Path(grant.source_path))
        ),
        "files": files,
    }


# ---- versions -----------------------------------------------------------------------------
def fingerprint(grants: Sequence[GrantSpec], safe: SafeData | None = None) -> str:
    safe = safe or SafeData()
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                FORMAT_VERSION,
                safe.project,
                safe.key_id,
                safe.write_csv,
                [[o.name, o.version, o.sha256] for o in safe.optouts],
            ]
        ).encode()
    )
    for g in sorted(grants, key=lambda g: g.dataset):
        st = os.stat(g.source_path) if os.path.exists(g.source_path) else None
        h.update(
            json.dumps(
                [
                    g.dataset,
                    g.source_path,
                    list(g.columns),
                    g.row_filter,
                    g.identifier_column,
                    st and st.st_size,
                    st and st.st_mtime_ns,
                ]
            ).encode()
        )
    return h.hexdigest()


def versions(target: Path) -> list[tuple[int, Path]]:
    """The version directories under ``target``, oldest first."""
    if not target.is_dir():
        return []
    found = []
    for p in target.iterdir():
        m = _VERSION_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def build_extract(
    grants: Sequence[GrantSpec],
    target: Path,
    safe: SafeData | None = None,
    *,
    first_version: int = 1,
    threads: int | None = None,
) -> BuildResult:
    """Reuse the latest version under ``target`` when its inputs are unchanged, or build the
    next one (read-only, atomically) and retire the older ones. ``first_version``: the
    lowest number a new version may take (the registry may know of later ones)."""
    safe = safe or SafeData()
    target = Path(target)
    fp = fingerprint(grants, safe)
    _retire_flat_layout(target)
    existing = versions(target)
    if existing:
        number, path = existing[-1]
        manifest = _read_manifest(path)
        if manifest and manifest.get("fingerprint") == fp:
            return BuildResult(path, number, False, manifest)
    number = max([first_version - 1, *(n for n, _ in existing)]) + 1
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target))
    try:
        built_at = datetime.now(UTC).replace(microsecond=0)
        with contextlib.closing(connect(threads=threads)) as con:
            con.execute(f"SET temp_directory = {_literal_sql(str(tmp / '.spill'))}")
            datasets = [build_dataset(con, g, safe, tmp) for g in grants]
        shutil.rmtree(tmp / ".spill", ignore_errors=True)
        manifest = {
            "fingerprint": fp,
            "version": number,
            "built_at": built_at.isoformat().replace("+00:00", "Z"),
            "project": safe.project,
            "optout_lists": [
                {"list": o.name, "version": o.version, "entries": o.entries} for o in safe.optouts
            ],
            "datasets": {d["dataset"]: d for d in datasets},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        write_dictionary(tmp, manifest)
        for f in tmp.iterdir():
            f.chmod(0o444)
        tmp.chmod(0o555)
        final = target / f"v{number:04d}"
        tmp.rename(final)
    except BaseException:
        _remove_tree(tmp)
        raise
    for _, old in existing:
        _remove_tree(old)
    return BuildResult(final, number, True, manifest)


def _retire_flat_layout(target: Path) -> None:
    """Extracts written before versioning sat directly in ``target``: remove those files."""
    if (target / MANIFEST).is_file():
        _make_writable(target)
        for f in target.iterdir():
            if f.is_file():
                f.unlink()


def _remove_tree(path: Path) -> None:
    if path.exists():
        _make_writable(path)
        shutil.rmtree(path, ignore_errors=True)


def _make_writable(path: Path) -> None:
    if path.exists():
        path.chmod(0o755)
        for f in path.iterdir():
            if f.is_dir() and not f.is_symlink():
                f.chmod(0o755)
            elif f.is_file():
                f.chmod(0o644)


# ---- the data dictionary -------------------------------------------------------------------
def dictionary(manifest: dict) -> dict:
    """What the researcher is told about their extract: no fingerprint, no paths."""
    return {
        "version": manifest["version"],
        "built_at": manifest["built_at"],
        "project": manifest["project"],
        "optout_lists_applied": manifest["optout_lists"],
        "datasets": [
            {
                "name": d["dataset"],
                "files": sorted(d["files"]),
                "rows": d["rows_out"],
                "columns": d["columns"],
                "pseudonymised": d["pseudonymised"],
                "row_filter": d["row_filter"] or None,
                "rows_in_source": d["rows_in"],
                "rows_removed_by_optout": d["removed_by_optout"],
                "rows_removed_by_optout_per_list": d["removed_by_optout_per_list"],
                "rows_removed_invalid_identifier": d["removed_invalid_identifier"],
                "rows_removed_by_filter": d["removed_by_filter"],
                "source_sha256": d["source_sha256"],
                "file_sha256": d["files"],
            }
            for d in manifest["datasets"].values()
        ],
    }


def write_dictionary(directory: Path, manifest: dict) -> None:
    data = dictionary(manifest)
    (directory / f"{DICTIONARY}.json").write_text(json.dumps(data, indent=1))
    (directory / f"{DICTIONARY}.md").write_text(dictionary_markdown(data))


def dictionary_markdown(data: dict) -> str:
    lines = [
        f"# Data dictionary — project {data['project'] or '-'}, extract version {data['version']}",
        "",
        f"Built {data['built_at']}. Read-only; a changed grant, source or opt-out list gives a "
        "new version on your next start.",
        "",
    ]
    if data["optout_lists_applied"]:
        applied = ", ".join(
            f"{o['list']} (version {o['version']})" for o in data["optout_lists_applied"]
        )
        lines += [f"Opt-out lists applied: {applied}.", ""]
    for d in data["datasets"]:
        lines += [f"## {d['name']}", "", f"Files: {', '.join(d['files'])}. Rows: {d['rows']}.", ""]
        if d["pseudonymised"]:
            lines += [
                f"`{PSEUDONYM_COLUMN}` is this project's pseudonym of the person: the same "
                "person has the same pseudonym in every version of this project's extracts and "
                "a different one in any other project.",
                "",
            ]
        lines += ["| column | type |", "|---|---|"]
        lines += [f"| {c['name']} | {c['type']} |" for c in d["columns"]]
        lines += [
            "",
            f"Rows in the source: {d['rows_in_source']}; removed by opt-out: "
            f"{d['rows_removed_by_optout']}; removed for an invalid identifier: "
            f"{d['rows_removed_invalid_identifier']}; removed by your row filter: "
            f"{d['rows_removed_by_filter']}.",
            "",
        ]
    return "\n".join(lines)
