"""Minimum-dataset extracts: columns, rows, safe filters, atomic read-only output."""

import os
import stat

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sde_spawner.datasets.extract import (
    ExtractError,
    GrantSpec,
    build_extract,
    extract_table,
    parse_row_filter,
)


@pytest.fixture
def source(tmp_path):
    p = tmp_path / "src.csv"
    p.write_text("id,age,region,secret\n1,17,north,x\n2,40,north,y\n3,65,south,z\n4,30,east,w\n")
    return p


def test_columns_and_rows(source):
    t = extract_table(
        GrantSpec("pat", str(source), ("id", "age"), "age >= 18 and region == 'north'")
    )
    assert t.column_names == ["id", "age"]
    assert t.to_pydict() == {"id": [2], "age": [40]}


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("region in ['north', 'east']", [1, 2, 4]),
        ("region not in ('north',)", [3, 4]),
        ("not (age < 30) or region == 'east'", [2, 3, 4]),
        ("age != 40", [1, 3, 4]),
        ("age > -1", [1, 2, 3, 4]),
        ("", [1, 2, 3, 4]),
    ],
)
def test_filter_grammar(source, expr, ids):
    assert extract_table(GrantSpec("p", str(source), ("id",), expr)).column("id").to_pylist() == ids


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('id')",
        "age.__class__",
        "age == other_col",
        "1 == age",
        "age < 3 < 5",
        "age in region",
        "age ==",
        "open('x')",
        "age + 1 > 3",
    ],
)
def test_filter_rejects_anything_else(expr):
    with pytest.raises(ExtractError):
        parse_row_filter(expr)


def test_missing_column_and_missing_source(source, tmp_path):
    with pytest.raises(ExtractError, match="no column"):
        extract_table(GrantSpec("p", str(source), ("id", "nope")))
    with pytest.raises(ExtractError, match="is missing"):
        extract_table(GrantSpec("p", str(tmp_path / "gone.csv"), ("id",)))
    with pytest.raises(ExtractError, match="cannot be applied"):
        extract_table(GrantSpec("p", str(source), ("id",), "nope == 1"))
    with pytest.raises(ExtractError, match="names no columns"):
        extract_table(GrantSpec("p", str(source), ()))


def test_build_is_read_only_reused_and_atomic(source, tmp_path):
    target = tmp_path / "out" / "alice"
    grants = [GrantSpec("pat", str(source), ("id", "region"), "region == 'north'")]
    build_extract(grants, target)
    assert sorted(os.listdir(target)) == ["MANIFEST.json", "pat.csv", "pat.parquet"]
    assert pq.read_table(target / "pat.parquet").to_pydict() == {
        "id": [1, 2],
        "region": ["north", "north"],
    }
    assert pacsv.read_csv(target / "pat.csv").num_rows == 2
    for f in target.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o444
    assert stat.S_IMODE(target.stat().st_mode) == 0o555
    inode = (target / "pat.csv").stat().st_ino
    build_extract(grants, target)  # unchanged inputs: reused
    assert (target / "pat.csv").stat().st_ino == inode
    # a failing rebuild leaves the previous extract intact and no temp dirs
    bad = [GrantSpec("pat", str(source), ("id", "nope"))]
    with pytest.raises(ExtractError):
        build_extract(bad, target)
    assert (target / "pat.csv").stat().st_ino == inode
    assert sorted(os.listdir(target.parent)) == ["alice"]
    # changed grant: rebuilt
    build_extract([GrantSpec("pat", str(source), ("id",))], target)
    assert pq.read_table(target / "pat.parquet").column_names == ["id"]
    assert sorted(os.listdir(target.parent)) == ["alice"]


def test_parquet_source(tmp_path, source):
    import pyarrow.csv as c

    pq.write_table(c.read_csv(source), tmp_path / "s.parquet")
    t = extract_table(GrantSpec("p", str(tmp_path / "s.parquet"), ("id",), "age < 20"))
    assert t.to_pydict() == {"id": [1]}
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(ExtractError, match=r"only \.csv and \.parquet"):
        extract_table(GrantSpec("p", str(tmp_path / "s.txt"), ("id",)))
