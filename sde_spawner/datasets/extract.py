"""Build a member's minimum dataset from a CSV or Parquet source.

A grant names the columns and a row filter. Row filters are a small, safe expression
language parsed with :mod:`ast` and translated to a pyarrow compute expression — never
evaluated as Python::

    age >= 18 and region in ['north', 'east'] and not (sex == 'U')

Extracts are written into a fresh temporary directory and renamed into place, so a failed
build leaves nothing half-written; files are made read-only. A fingerprint of the inputs
lets a workspace restart reuse the existing extract.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


class ExtractError(ValueError):
    """A grant cannot be turned into an extract; the message is shown to the user."""


@dataclass(frozen=True)
class GrantSpec:
    dataset: str  # dataset slug, becomes the file name
    source_path: str
    columns: tuple[str, ...]
    row_filter: str = ""


_COMPARE = {
    ast.Eq: "equal",
    ast.NotEq: "not_equal",
    ast.Lt: "less",
    ast.LtE: "less_equal",
    ast.Gt: "greater",
    ast.GtE: "greater_equal",
}


def parse_row_filter(text: str) -> pc.Expression | None:
    """Translate a row filter to a pyarrow expression; ``ExtractError`` when not allowed."""
    if not text.strip():
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExtractError(f"row filter {text!r} is not valid: {exc.msg}") from None
    return _expr(tree.body, text)


def _literal(node: ast.AST, text: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
    ):
        return -node.operand.value
    raise ExtractError(f"row filter {text!r}: only plain values may be compared")


def _expr(node: ast.AST, text: str) -> pc.Expression:
    if isinstance(node, ast.BoolOp):
        parts = [_expr(v, text) for v in node.values]
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_expr(node.operand, text)
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        if not isinstance(node.left, ast.Name):
            raise ExtractError(f"row filter {text!r}: the left side must be a column name")
        field = pc.field(node.left.id)
        op, right = node.ops[0], node.comparators[0]
        if isinstance(op, ast.In | ast.NotIn):
            if not isinstance(right, ast.List | ast.Tuple):
                raise ExtractError(f"row filter {text!r}: 'in' needs a list of values")
            values = [_literal(v, text) for v in right.elts]
            member = field.isin(values)
            return ~member if isinstance(op, ast.NotIn) else member
        fn = _COMPARE.get(type(op))
        if fn is None:
            raise ExtractError(f"row filter {text!r}: operator not allowed")
        return getattr(pc, fn)(field, _literal(right, text))
    raise ExtractError(
        f"row filter {text!r}: use comparisons (==, !=, <, <=, >, >=, in) joined by and/or/not"
    )


def read_source(path: str) -> pa.Table:
    p = Path(path)
    if not p.is_file():
        raise ExtractError(f"dataset source {path} is missing")
    try:
        if p.suffix.lower() == ".parquet":
            return pq.read_table(p)
        if p.suffix.lower() == ".csv":
            return pacsv.read_csv(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ExtractError(f"dataset source {path} cannot be read: {exc}") from None
    raise ExtractError(f"dataset source {path}: only .csv and .parquet are supported")


def extract_table(grant: GrantSpec) -> pa.Table:
    """The granted columns of the granted rows of one source."""
    table = read_source(grant.source_path)
    if not grant.columns:
        raise ExtractError(f"grant on {grant.dataset} names no columns")
    missing = [c for c in grant.columns if c not in table.column_names]
    filter_expr = parse_row_filter(grant.row_filter)
    if missing:
        raise ExtractError(f"dataset {grant.dataset} has no column(s): {', '.join(missing)}")
    if filter_expr is not None:
        try:
            table = table.filter(filter_expr)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as exc:
            raise ExtractError(f"row filter on {grant.dataset} cannot be applied: {exc}") from None
    return table.select(list(grant.columns))


def fingerprint(grants: list[GrantSpec]) -> str:
    h = hashlib.sha256()
    for g in sorted(grants, key=lambda g: g.dataset):
        st = os.stat(g.source_path) if os.path.exists(g.source_path) else None
        h.update(
            json.dumps(
                [
                    g.dataset,
                    g.source_path,
                    list(g.columns),
                    g.row_filter,
                    st and st.st_size,
                    st and st.st_mtime_ns,
                ]
            ).encode()
        )
    return h.hexdigest()


MANIFEST = "MANIFEST.json"


def build_extract(grants: list[GrantSpec], target: Path) -> Path:
    """Write every granted table into ``target`` (CSV + Parquet), atomically, read-only.

    Reuses ``target`` when its manifest fingerprint matches. Returns ``target``.
    """
    target = Path(target)
    fp = fingerprint(grants)
    manifest = target / MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text())["fingerprint"] == fp:
                return target
        except (ValueError, KeyError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        files = {}
        for g in grants:
            table = extract_table(g)
            pq.write_table(table, tmp / f"{g.dataset}.parquet")
            pacsv.write_csv(table, tmp / f"{g.dataset}.csv")
            files[g.dataset] = {"rows": table.num_rows, "columns": list(g.columns)}
        (tmp / MANIFEST).write_text(json.dumps({"fingerprint": fp, "datasets": files}, indent=1))
        for f in tmp.iterdir():
            f.chmod(0o444)
        tmp.chmod(0o555)
        old = None
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            _make_writable(target)
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target
    except BaseException:
        _make_writable(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_writable(path: Path) -> None:
    if path.exists():
        path.chmod(0o755)
        for f in path.iterdir():
            f.chmod(0o644)
