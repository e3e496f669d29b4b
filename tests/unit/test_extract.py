"""Minimum-dataset extracts: opt-outs removed, pseudonyms, columns, rows, safe filters,
immutable read-only versions with counts and a data dictionary."""

import csv
import json
import os
import stat

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sde_spawner.datasets.extract import (
    ExtractError,
    GrantSpec,
    OptoutVersion,
    SafeData,
    build_extract,
    parse_row_filter,
)
from sde_spawner.datasets.nhs_number import with_check_digit
from sde_spawner.datasets.pseudonyms import pseudonym

KEY = bytes(range(32))
N1, N2, N3, N4, N5 = (with_check_digit(f"99900000{i}") for i in (1, 2, 3, 4, 5))
BAD = "9990000010"  # fails the Modulus 11 check


def safe(national=(), local=None, key=KEY, csv_too=False, project="study-a"):
    lists = {"national": list(national), **({"local:trust": list(local)} if local else {})}
    versions = tuple(
        OptoutVersion(name, 1 + len(nums), len(nums), "|".join(nums))
        for name, nums in lists.items()
    )
    return SafeData(
        project=project,
        key=key,
        key_id=key.hex()[:8],
        optouts=versions,
        load_entries=lambda ov: pa.table({"nhs_number": pa.array(lists[ov.name], pa.string())}),
        write_csv=csv_too,
    )


@pytest.fixture
def source(tmp_path):
    p = tmp_path / "src.csv"
    p.write_text("id,age,region,secret\n1,17,north,x\n2,40,north,y\n3,65,south,z\n4,30,east,w\n")
    return p


@pytest.fixture
def people(tmp_path):
    p = tmp_path / "people.csv"
    p.write_text(
        "nhs_number,age,region\n"
        f"{N1},17,north\n{N2},40,north\n{N3},65,south\n{BAD},50,north\n{N4},30,east\n,22,east\n"
        f"{N5},70,north\n"
    )
    return p


def extract(grant, tmp_path, data=None, name="out"):
    res = build_extract([grant], tmp_path / name, data)
    return pq.read_table(res.path / f"{grant.dataset}.parquet"), res


def test_columns_and_rows(source, tmp_path):
    t, _ = extract(
        GrantSpec("pat", str(source), ("id", "age"), "age >= 18 and region == 'north'"), tmp_path
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
        ('region == "north\' OR 1=1 --"', []),  # a value is a bound parameter, never SQL
    ],
)
def test_filter_grammar(source, tmp_path, expr, ids):
    t, _ = extract(GrantSpec("p", str(source), ("id",), expr), tmp_path)
    assert t.column("id").to_pylist() == ids


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('id')",
        "age.__class__",
        "age == other_col",
        "1 == age",
        "age < 3 < 5",
        "age in region",
        "age in []",
        "age ==",
        "open('x')",
        "age + 1 > 3",
    ],
)
def test_filter_rejects_anything_else(expr):
    with pytest.raises(ExtractError):
        parse_row_filter(expr)


def test_one_clear_error_for_each_bad_grant(source, tmp_path):
    cases = [
        (GrantSpec("p", str(source), ("id", "nope")), "has no column"),
        (GrantSpec("p", str(tmp_path / "gone.csv"), ("id",)), "is missing"),
        (GrantSpec("p", str(source), ("id",), "nope == 1"), "cannot be applied: no column"),
        (GrantSpec("p", str(source), ("id",), "region > 3"), "cannot be applied"),
        (GrantSpec("p", str(source), ()), "names no columns"),
    ]
    for grant, message in cases:
        with pytest.raises(ExtractError, match=message):
            build_extract([grant], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_unreadable_source_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ExtractError, match=r"broken\.parquet cannot be read"):
        build_extract([GrantSpec("p", str(bad), ("id",))], tmp_path / "out")
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(ExtractError, match=r"only \.csv and \.parquet"):
        build_extract([GrantSpec("p", str(tmp_path / "s.txt"), ("id",))], tmp_path / "out")


def test_parquet_source(tmp_path, source):
    pq.write_table(pacsv.read_csv(source), tmp_path / "s.parquet")
    t, _ = extract(GrantSpec("p", str(tmp_path / "s.parquet"), ("id",), "age < 20"), tmp_path)
    assert t.to_pydict() == {"id": [1]}


# ---- person-level data ------------------------------------------------------------------
def test_optouts_removed_identifier_replaced_by_the_project_pseudonym(people, tmp_path):
    grant = GrantSpec("pat", str(people), ("pseudonym", "age"), "", "nhs_number")
    t, res = extract(grant, tmp_path, safe(national=[N2], local=[N3, N2]))
    # N2 national, N3 local, BAD and the empty identifier can never be matched: removed
    assert t.to_pydict() == {
        "pseudonym": [pseudonym(KEY, n) for n in (N1, N4, N5)],
        "age": [17, 30, 70],
    }
    d = res.manifest["datasets"]["pat"]
    assert {k: d[k] for k in d if k.startswith(("rows", "removed"))} == {
        "rows_in": 7,
        "removed_invalid_identifier": 2,
        "removed_by_optout": 2,
        "removed_by_optout_per_list": {"national v2": 1, "local:trust v3": 2},
        "removed_by_filter": 0,
        "rows_out": 3,
    }


def test_no_real_identifier_anywhere_in_the_extract(people, tmp_path):
    grant = GrantSpec("pat", str(people), ("pseudonym", "age", "region"), "age > 20", "nhs_number")
    _, res = extract(grant, tmp_path, safe(national=[N2], csv_too=True))
    files = sorted(os.listdir(res.path))
    assert files == [
        "DATA_DICTIONARY.json",
        "DATA_DICTIONARY.md",
        "MANIFEST.json",
        "pat.csv",
        "pat.parquet",
    ]
    blob = b"".join((res.path / f).read_bytes() for f in files)
    for n in (N1, N2, N3, N4, N5, BAD):
        assert n.encode() not in blob
    assert KEY.hex().encode() not in blob
    assert pq.read_table(res.path / "pat.parquet").column_names == ["pseudonym", "age", "region"]
    # control: the same check sees a number when the identifier is not declared
    plain, _ = extract(GrantSpec("pat", str(people), ("nhs_number",)), tmp_path, name="plain")
    assert N1 in [str(v) for v in plain.column("nhs_number").to_pylist()]


def test_pseudonyms_differ_between_projects_and_are_stable_on_rebuild(people, tmp_path):
    grant = GrantSpec("pat", str(people), ("pseudonym",), "", "nhs_number")
    a1, _ = extract(grant, tmp_path, safe(key=b"a" * 32, project="a"), name="a")
    a2, res = extract(grant, tmp_path, safe(national=[N5], key=b"a" * 32, project="a"), name="a")
    b, _ = extract(grant, tmp_path, safe(key=b"b" * 32, project="b"), name="b")
    assert res.version == 2  # new list version: a new build
    assert a2.column("pseudonym").to_pylist() == a1.column("pseudonym").to_pylist()[:-1]
    assert not set(a1.column("pseudonym").to_pylist()) & set(b.column("pseudonym").to_pylist())


def test_filter_sees_the_pseudonym_never_the_identifier(people, tmp_path):
    g = GrantSpec("pat", str(people), ("age",), f"nhs_number == '{N1}'", "nhs_number")
    with pytest.raises(ExtractError, match=r"cannot be applied: no column.*nhs_number"):
        build_extract([g], tmp_path / "out", safe())
    g = GrantSpec(
        "pat", str(people), ("age",), f"pseudonym == '{pseudonym(KEY, N4)}'", "nhs_number"
    )
    t, _ = extract(g, tmp_path, safe())
    assert t.to_pydict() == {"age": [30]}


def test_person_level_grant_errors(people, tmp_path):
    cases = [
        (
            GrantSpec("pat", str(people), ("nhs_number",), "", "nhs_number"),
            safe(),
            "grant 'pseudonym'",
        ),
        (GrantSpec("pat", str(people), ("age",), "", "nhs"), safe(), "no identifier column 'nhs'"),
        (GrantSpec("pat", str(people), ("age",), "", "nhs_number"), SafeData(key=KEY), "national"),
        (GrantSpec("pat", str(people), ("age",), "", "nhs_number"), None, "no pseudonym key"),
    ]
    for grant, data, message in cases:
        with pytest.raises(ExtractError, match=message):
            build_extract([grant], tmp_path / "out", data)


def test_versions_are_immutable_reused_and_replaced_atomically(source, people, tmp_path):
    target = tmp_path / "out" / "alice"
    grants = [GrantSpec("pat", str(source), ("id", "region"), "region == 'north'")]
    first = build_extract(grants, target, safe())
    assert (first.version, first.built, first.path.name) == (1, True, "v0001")
    assert sorted(os.listdir(first.path)) == [
        "DATA_DICTIONARY.json",
        "DATA_DICTIONARY.md",
        "MANIFEST.json",
        "pat.parquet",
    ]
    for f in first.path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o444
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o555
    inode = (first.path / "pat.parquet").stat().st_ino
    again = build_extract(grants, target, safe())  # unchanged inputs: reused
    assert (again.version, again.built) == (1, False)
    assert (again.path / "pat.parquet").stat().st_ino == inode
    # a failing rebuild leaves the version in force intact and no temporary directories
    with pytest.raises(ExtractError):
        build_extract([GrantSpec("pat", str(source), ("id", "nope"))], target, safe())
    assert os.listdir(target) == ["v0001"]
    assert (first.path / "pat.parquet").stat().st_ino == inode
    # changed grant, opt-out list, CSV request, source: each builds the next version
    steps = [
        ([GrantSpec("pat", str(source), ("id",))], safe()),
        ([GrantSpec("pat", str(source), ("id",))], safe(national=[N1])),
        ([GrantSpec("pat", str(source), ("id",))], safe(national=[N1], csv_too=True)),
    ]
    for i, (g, data) in enumerate(steps, start=2):
        res = build_extract(g, target, data)
        assert (res.version, res.built) == (i, True)
        assert os.listdir(target) == [f"v{i:04d}"]  # the superseded version is retired
    source.write_text(source.read_text() + "5,33,west,v\n")
    res = build_extract(steps[-1][0], target, steps[-1][1])
    assert res.version == 5 and pacsv.read_csv(res.path / "pat.csv").num_rows == 5
    # the registry may know of later numbers than the disk (a wiped directory)
    res = build_extract(grants, target, safe(), first_version=9)
    assert res.path.name == "v0009"


def test_data_dictionary_has_counts_never_identifiers(people, tmp_path):
    grant = GrantSpec("pat", str(people), ("pseudonym", "age"), "region == 'north'", "nhs_number")
    _, res = extract(grant, tmp_path, safe(national=[N2]))
    data = json.loads((res.path / "DATA_DICTIONARY.json").read_text())
    assert data["version"] == 1 and data["project"] == "study-a"
    assert data["optout_lists_applied"] == [{"list": "national", "version": 2, "entries": 1}]
    (ds,) = data["datasets"]
    assert ds["columns"] == [
        {"name": "pseudonym", "type": "string"},
        {"name": "age", "type": "int64"},
    ]
    assert (ds["rows"], ds["rows_in_source"], ds["rows_removed_by_optout"]) == (2, 7, 1)
    assert ds["rows_removed_by_filter"] == 2 and ds["rows_removed_invalid_identifier"] == 2
    assert "fingerprint" not in json.dumps(data) and str(people) not in json.dumps(data)
    md = (res.path / "DATA_DICTIONARY.md").read_text()
    assert "| pseudonym | string |" in md and "removed by opt-out: 1" in md


def test_legacy_flat_extract_is_retired(source, tmp_path):
    target = tmp_path / "alice"
    target.mkdir()
    (target / "MANIFEST.json").write_text("{}")
    (target / "pat.csv").write_text("old")
    target.chmod(0o555)
    res = build_extract([GrantSpec("pat", str(source), ("id",))], target)
    assert sorted(os.listdir(target)) == ["v0001"] and res.built
    with open(res.path / "DATA_DICTIONARY.md") as fh:
        assert "extract version 1" in fh.read()


def test_csv_rows_match_parquet(people, tmp_path):
    grant = GrantSpec("pat", str(people), ("pseudonym", "region"), "", "nhs_number")
    t, res = extract(grant, tmp_path, safe(csv_too=True))
    with open(res.path / "pat.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["pseudonym"] for r in rows] == t.column("pseudonym").to_pylist()
