"""The native pseudonym library (the extract's fast path) against the Python reference, and
the fast extract against the SQL one: same rows, same pseudonyms, same counts."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sde_spawner.datasets import pseudonym_batch
from sde_spawner.datasets.extract import GrantSpec, OptoutVersion, SafeData, build_extract
from sde_spawner.datasets.nhs_number import is_valid, with_check_digit
from sde_spawner.datasets.pseudonyms import pseudonym

KEY = bytes(range(32))

pytestmark = pytest.mark.skipif(
    not pseudonym_batch.LIBRARY.is_file(),
    reason="the native pseudonym library was not built (no C compiler at install)",
)


def test_the_library_is_used_where_it_was_built(monkeypatch):
    assert pseudonym_batch.available()
    monkeypatch.setattr(pseudonym_batch, "USE_NATIVE", False)
    assert not pseudonym_batch.available()


@pytest.fixture(params=["sha-extensions", "openssl"])
def hash_path(request, monkeypatch):
    """Both ways the library hashes: two values at once with the CPU's SHA extensions, and
    OpenSSL one by one."""
    if request.param == "sha-extensions":
        if not pseudonym_batch.uses_shani():
            pytest.skip("this CPU (or build) has no SHA extensions")
    else:
        monkeypatch.setattr(pseudonym_batch, "USE_SHANI", False)
        assert not pseudonym_batch.uses_shani()
    return request.param


def test_native_pseudonyms_equal_the_reference(hash_path):
    rng = random.Random(7)
    values = ["", "1", "9434765919", "é" * 40, "a" * 200, "x\x00y", "🙂"]
    # around the one-block limit (55 bytes), and an odd count so one value has no partner
    values += ["n" * k for k in (54, 55, 56, 63, 64, 65, 119, 120)]
    values += [
        "".join(rng.choice("0123456789 ab") for _ in range(rng.randrange(30))) for _ in range(2000)
    ]
    native = pseudonym_batch.Pseudonymiser(KEY)
    assert native(pa.array(values)).to_pylist() == [pseudonym(KEY, v) for v in values]
    # a slice (buffers that do not start at the first value) and a chunked array
    assert native(pa.array(values).slice(5, 50)).to_pylist() == [
        pseudonym(KEY, v) for v in values[5:55]
    ]
    chunked = pa.chunked_array([values[:10], values[10:20]])
    assert native(chunked).to_pylist() == [pseudonym(KEY, v) for v in values[:20]]
    assert native(pa.array([], pa.string())).to_pylist() == []
    # a long key is hashed first (RFC 2104), as the reference does
    long_key = bytes(range(100))
    assert pseudonym_batch.Pseudonymiser(long_key)(pa.array(values[:50])).to_pylist() == [
        pseudonym(long_key, v) for v in values[:50]
    ]


def test_native_pseudonyms_refuse_nulls():
    with pytest.raises(ValueError, match="null"):
        pseudonym_batch.Pseudonymiser(KEY)(pa.array(["1", None]))


def test_native_nhs_number_check_equals_the_reference():
    rng = random.Random(11)
    values = [with_check_digit(f"{rng.randrange(10**9):09d}") for _ in range(3000)]
    values = [v for v in values if v]
    values += [v[:9] + str((int(v[9]) + 1) % 10) for v in values[:500]]  # wrong check digit
    values += [
        "",
        "943476591",
        "94347659190",
        "943 476 5919",
        "94347659１9",
        "abcdefghij",
        "9434765919\n",
        "0000000000",
        "9999999999",
    ]
    values += [f"{rng.randrange(10**10):010d}" for _ in range(3000)]
    got = pseudonym_batch.Pseudonymiser(KEY).valid_nhs_numbers(pa.array([*values, None]))
    assert got.to_pylist() == [is_valid(v) for v in values] + [False]


def test_a_null_slot_is_never_a_valid_nhs_number_whatever_bytes_lie_under_it():
    valid = pa.array(["9434765919", "9434765919"])  # both valid NHS numbers
    _, offsets, data = valid.buffers()
    validity = pa.py_buffer(bytes([0b01]))  # the second slot is null
    values = pa.Array.from_buffers(pa.string(), 2, [validity, offsets, data])
    assert values.to_pylist() == ["9434765919", None]
    got = pseudonym_batch.Pseudonymiser(KEY).valid_nhs_numbers(values)
    assert got.to_pylist() == [True, False]


@pytest.fixture
def people(tmp_path):
    rng = random.Random(3)
    rows = ["nhs_number,age,region"]
    numbers = []
    for i in range(3000):
        n = with_check_digit(f"{400000000 + i * 7:09d}")
        if n is None:
            continue
        numbers.append(n)
        shown = n if i % 50 else f"{n[:3]} {n[3:6]} {n[6:]}"  # spaces as printed on letters
        if i % 97 == 0:
            shown = n[:9] + str((int(n[9]) + 1) % 10)  # fails the check
        if i % 131 == 0:
            shown = ""  # no identifier
        rows.append(f"{shown},{rng.randrange(100)},{rng.choice(['north', 'south', 'east'])}")
    p = tmp_path / "people.csv"
    p.write_text("\n".join(rows) + "\n")
    return p, numbers


@pytest.mark.parametrize(
    ("columns", "row_filter", "lists"),
    [
        (("pseudonym", "age", "region"), "", 1),
        (("pseudonym", "age"), "age >= 18 and region in ['north', 'east']", 1),
        (("region", "pseudonym"), "not (region == 'south')", 2),
        (("age",), "age < 40", 2),
    ],
)
def test_the_native_extract_equals_the_sql_extract(
    people, tmp_path, monkeypatch, columns, row_filter, lists
):
    source, numbers = people
    national, local = numbers[::9], numbers[::13]
    lists_in_force = {"national": national, **({"local:trust": local} if lists == 2 else {})}
    data = SafeData(
        project="p",
        key=KEY,
        key_id="k",
        optouts=tuple(OptoutVersion(n, 1, len(v), n) for n, v in lists_in_force.items()),
        load_entries=lambda ov: pa.table({"nhs_number": pa.array(lists_in_force[ov.name])}),
    )
    grant = GrantSpec("pat", str(source), columns, row_filter, "nhs_number")
    fast = build_extract([grant], tmp_path / "fast", data)
    monkeypatch.setattr(pseudonym_batch, "USE_NATIVE", False)
    slow = build_extract([grant], tmp_path / "slow", data)
    a = pq.read_table(fast.path / "pat.parquet")
    b = pq.read_table(slow.path / "pat.parquet")
    assert a.schema == b.schema
    assert a.num_rows > 100
    assert sorted(map(tuple, a.to_pylist() and [r.values() for r in a.to_pylist()])) == sorted(
        map(tuple, [r.values() for r in b.to_pylist()])
    )
    counts = (
        "rows_in",
        "removed_invalid_identifier",
        "removed_by_optout",
        "removed_by_optout_per_list",
        "removed_by_filter",
        "rows_out",
    )
    fast_d, slow_d = fast.manifest["datasets"]["pat"], slow.manifest["datasets"]["pat"]
    assert {k: fast_d[k] for k in counts} == {k: slow_d[k] for k in counts}
    assert fast_d["removed_invalid_identifier"] > 0 and fast_d["removed_by_optout"] > 0
    if "pseudonym" in columns:  # the control: pseudonyms are the reference's
        opted = set(national) | (set(local) if lists == 2 else set())
        expected = {pseudonym(KEY, n) for n in numbers if n not in opted}
        assert set(a.column("pseudonym").to_pylist()) <= expected


def test_the_native_optout_check_equals_sql_replace_valid_and_in():
    """valid(replace(id, ' ', '')) and membership of each list, as the SQL path computes."""
    rng = random.Random(1)
    nums = [with_check_digit(f"{rng.randrange(10**9):09d}") for _ in range(5000)]
    nums = [n for n in nums if n]
    vals = nums + [f"{n[:3]} {n[3:6]} {n[6:]}" for n in nums[:300]] + [n + " " for n in nums[:50]]
    vals += ["", " ", "abc", "94347659190", "943476591", None, "9434765919", "0000000000"]
    l1, l2 = [*nums[::7], "xx", None, "943 476 5919"], [*nums[::11], "0000000000"]
    check = pseudonym_batch.OptoutCheck([pa.array(l1, pa.string()), pa.array(l2, pa.string())])
    valid, lists, spaced = check(pa.array(vals, pa.string()))
    expected_spaced = 0
    for v, ok, on in zip(vals, valid.to_pylist(), lists.to_pylist(), strict=True):
        norm = None if v is None else v.replace(" ", "")
        assert ok == (norm is not None and is_valid(norm)), v
        if ok:
            expected_spaced += norm != v
            assert on == (norm in set(l1)) + 2 * (norm in set(l2)), v
    assert spaced == expected_spaced > 0
