"""Tables held in a JSON output, so that the cell rules run on them as on a CSV.

A researcher's counts leave as JSON as readily as CSV: ``df.to_json()`` (``{column: {row:
value}}``), ``df.to_json(orient="records")`` (``[{column: value}, ...]``),
``orient="split"`` (``{"columns": [...], "index": [...], "data": [[...]]}``),
``orient="index"`` (``{row: {column: value}}``), a Series' ``value_counts().to_json()``
(``{label: count}``), lists of rows (``[["region", "n"], ["north", 12]]``) and of columns
(``{"x": [...], "y": [...]}``: ``to_dict("list")``, a plotly trace). Checked only
as text, their small counts passed unseen.

:func:`json_tables` walks the parsed document and returns every such shape it finds, at any
depth, as a :class:`~sde_airlock.sdc.tables.Table` named by its JSON path (``$.counts``). A
mapping of mappings can be read either way round: the orientation whose column names the cell
rules recognise as more counts is taken (pandas' own ``columns`` orientation on a tie). A
mapping of labels to numbers is a two-column table whose value column has no name: the cell
rules treat unnamed non-negative integers as counts, as they do in a CSV. The numbers among
the plain values of any other mapping are a one-row table (``{"n": 4, "title": ...}``).
Bounded: at most :data:`MAX_TABLES` tables, :data:`MAX_CELLS` cells and :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

from collections.abc import Iterator

from sde_airlock.sdc.tables import Table, roles

MAX_TABLES = 1000
MAX_DEPTH = 32
MAX_CELLS = 4_000_000  # as a CSV's cells held to decide the columns' roles


def _scalar(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # pandas writes integer counts of a float column as 12.0
    return str(value)


def _flat_map(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(_scalar(v) for v in value.values())


def _flat_records(items: list) -> bool:
    return bool(items) and all(_flat_map(i) for i in items)


def _counts(table: Table) -> int:
    """How many of the table's columns the cell rules read as counts."""
    return roles(table).count("count")


def _keys(maps) -> list[str]:
    seen: dict[str, None] = {}
    for m in maps:
        seen.update(dict.fromkeys(str(k) for k in m))
    return list(seen)


def _records(items: list[dict], where: str) -> Table:
    header = _keys(items)
    rows = [[_cell(i.get(k)) for k in header] for i in items]
    return Table(header, rows, len(rows), where)


def _column_lists(node: dict) -> dict[str, list[str]]:
    """The longest set of two or more equal-length lists of plain values among ``node``'s
    values, as cells ({} when there is none)."""
    by_length: dict[int, dict[str, list[str]]] = {}
    for key, value in node.items():
        if isinstance(value, list) and value and all(_scalar(v) for v in value):
            by_length.setdefault(len(value), {})[str(key)] = [_cell(v) for v in value]
    groups = [g for g in by_length.values() if len(g) >= 2]
    return max(groups, key=len) if groups else {}


def _rows(items: list, where: str) -> Table | None:
    """``[[...], [...]]`` (``df.values.tolist()``, a CSV read as lists): rows of equal length,
    the first one the header when it is all text."""
    if len(items) < 2 or not all(isinstance(r, list) and r for r in items):
        return None
    if len({len(r) for r in items}) != 1 or not all(_scalar(v) for r in items for v in r):
        return None
    rows = [[_cell(v) for v in r] for r in items]
    if all(isinstance(v, str) for v in items[0]):
        return Table(rows[0], rows[1:], len(rows) - 1, where)
    return Table([""] * len(rows[0]), rows, len(rows), where)


def _grid(outer: dict, where: str) -> Table:
    """``{a: {b: value}}`` as the table of columns ``a`` or of columns ``b``."""
    inner = _keys(outer.values())
    columns = Table(
        ["", *map(str, outer)],
        [[k, *(_cell(outer[o].get(k)) for o in outer)] for k in inner],
        len(inner),
        where,
    )
    index = Table(
        ["", *inner],
        [[str(o), *(_cell(outer[o].get(k)) for k in inner)] for o in outer],
        len(outer),
        where,
    )
    if _counts(index) > _counts(columns):
        return index
    return columns


def _split(doc: dict, where: str) -> Table | None:
    columns, data = doc.get("columns"), doc.get("data")
    if not (isinstance(columns, list) and isinstance(data, list)):
        return None
    if not all(isinstance(r, list) and all(_scalar(v) for v in r) for r in data):
        return None
    index = doc.get("index")
    header = [_cell(c) for c in columns]
    rows = [[_cell(v) for v in r] for r in data]
    if isinstance(index, list) and len(index) == len(rows):
        header = ["", *header]
        rows = [[_cell(i), *r] for i, r in zip(index, rows, strict=True)]
    return Table(header, rows, len(rows), where)


def json_tables(doc, where: str = "$") -> tuple[list[Table], bool]:
    """Every table-shaped part of the parsed JSON ``doc`` (see the module docstring), and
    whether that is all of them (False: more than :data:`MAX_TABLES` tables or
    :data:`MAX_CELLS` cells, the rest not read)."""
    found: list[Table] = []
    cells = 0
    for table in _walk(doc, where, 0):
        cells += len(table.header) * max(len(table.rows), 1)
        if len(found) >= MAX_TABLES or cells > MAX_CELLS:
            return found, False
        found.append(table)
    return found, True


def _walk(node, where: str, depth: int) -> Iterator[Table]:
    if depth > MAX_DEPTH:
        return
    if isinstance(node, list):
        if _flat_records(node):
            yield _records(node, where)
            return
        if (rows := _rows(node, where)) is not None:
            yield rows
            return
        for i, item in enumerate(node):
            yield from _walk(item, f"{where}[{i}]", depth + 1)
        return
    if not isinstance(node, dict) or not node:
        return
    if (split := _split(node, where)) is not None:
        yield split
        return
    if all(_flat_map(v) for v in node.values()):
        yield _grid(node, where)
        return
    columns = _column_lists(node)
    if columns:
        # {column: [values]} (to_dict("list"), a plotly trace's x and y, vega-lite fields)
        header = list(columns)
        rows = [list(r) for r in zip(*columns.values(), strict=True)]
        yield Table(header, rows, len(rows), where)
    scalars = {str(k): v for k, v in node.items() if _scalar(v)}
    if any(_number(v) for v in scalars.values()):
        record = Table(list(scalars), [[_cell(v) for v in scalars.values()]], 1, where)
        if len(scalars) == len(node) >= 2 and all(_number(v) for v in scalars.values()):
            # {label: count} (a Series) or one record {column: value}: the reading whose
            # columns are more counts
            rows = [[k, _cell(v)] for k, v in scalars.items()]
            series = Table(["", ""], rows, len(rows), where)
            if _counts(series) >= _counts(record):
                record = series
        yield record
    for key, value in node.items():
        if not _scalar(value) and str(key) not in columns:
            yield from _walk(value, f"{where}.{key}", depth + 1)
