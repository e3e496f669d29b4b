"""The extract writer's shortcuts change nothing a reader sees: string columns handed to the
Parquet writer as native dictionary arrays read back (pyarrow, pandas, DuckDB) as the same
plain strings, with the same statistics and encodings; the file's checksum taken while
writing is the file's."""

import hashlib
import random

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sde_spawner.datasets import extract, parquet_out, pseudonym_batch
from sde_spawner.datasets.extract import GrantSpec, OptoutVersion, SafeData, build_extract
from sde_spawner.datasets.nhs_number import with_check_digit

KEY = bytes(range(32))

pytestmark = pytest.mark.skipif(
    pseudonym_batch._dict_encoder() is None,
    reason="the native library (with its dictionary encoder) was not built",
)


def check_encoding(values: pa.Array, limit: int = pseudonym_batch.DICTIONARY_LIMIT):
    got = pseudonym_batch.dictionary_encode(values, limit)
    assert got is not None
    expected = pc.dictionary_encode(values)  # pyarrow's: first appearance order too
    assert got.type == pa.dictionary(pa.int32(), pa.string())
    assert got.dictionary.equals(expected.dictionary)
    assert got.indices.is_valid().equals(expected.indices.is_valid())
    assert pc.fill_null(got.indices, 0).equals(pc.fill_null(expected.indices, 0))
    assert got.cast(pa.string()).to_pylist() == values.to_pylist()


def test_the_native_dictionary_encoder_equals_pyarrows():
    rng = random.Random(5)
    edge = ["", "a", "ab", "abcdefg", "abcdefgh", "abcdefghi", "abcdefgh\x00", "é", "🙂", "x" * 300]
    values = [rng.choice([*edge, "north", "south", None]) for _ in range(5000)]
    check_encoding(pa.array(values))
    check_encoding(pa.array(values).slice(7, 3000))  # buffers not starting at the first value
    check_encoding(pa.array(["abc", "ab", "a"]))  # short values at the end of the data
    # values that share their first eight bytes (the long-value comparison)
    check_encoding(pa.array([f"prefix--{i % 40}" for i in range(1000)]))
    check_encoding(pa.array([None, None], pa.string()))
    check_encoding(pa.array([], pa.string()))
    # nulls whose slots still hold bytes are nulls, not values
    _, offsets, data = pa.array(["north", "south"]).buffers()
    masked = pa.Array.from_buffers(pa.string(), 2, [pa.py_buffer(bytes([0b10])), offsets, data])
    assert pseudonym_batch.dictionary_encode(masked).to_pylist() == [None, "south"]


def test_the_encoder_declines_too_many_or_too_long_values():
    many = pa.array([str(i) for i in range(2000)])
    assert pseudonym_batch.dictionary_encode(many, 1024) is None
    check_encoding(many, 2000)
    long_values = pa.array([f"{i:0500d}" for i in range(200)])  # 100 KB of distinct values
    assert pseudonym_batch.dictionary_encode(long_values) is None
    # pyarrow's encoder stands in, with the same type
    assert parquet_out.as_dictionary(many).type == pa.dictionary(pa.int32(), pa.string())
    assert parquet_out.as_dictionary(many).to_pylist() == many.to_pylist()


@pytest.fixture
def people(tmp_path):
    rng = random.Random(9)
    rows = ["nhs_number,age,sex,region,note"]
    for i in range(4000):
        n = with_check_digit(f"{500000000 + i * 11:09d}")
        if n is None:
            continue
        region = rng.choice(["north", "south", "east", "west", ""])  # "": NULL
        # the first rows have few distinct notes, later ones a new note each (the encoder
        # then declines and pyarrow's stands in)
        note = f"note {i % 3}" if i < 500 else f"note number {i} " + "x" * 300
        rows.append(f"{n},{rng.randrange(100)},{rng.choice('FMU')},{region},{note}")
    p = tmp_path / "people.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def build(people, target, monkeypatch=None):
    data = SafeData(
        project="p",
        key=KEY,
        key_id="k",
        optouts=(OptoutVersion("national", 1, 0, "-"),),
        load_entries=lambda ov: pa.table({"nhs_number": pa.array([], pa.string())}),
    )
    cols = ("pseudonym", "age", "sex", "region", "note")
    res = build_extract(
        [GrantSpec("pat", str(people), cols, "age >= 10", "nhs_number")], target, data
    )
    return res, res.path / "pat.parquet"


def test_dictionary_columns_read_back_as_the_same_plain_strings(people, tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "BATCH_ROWS", 256)  # many batches, many row groups
    declined = []
    native = pseudonym_batch.dictionary_encode

    def spy(values, limit=pseudonym_batch.DICTIONARY_LIMIT):
        got = native(values, limit)
        declined.append(got is None)
        return got

    monkeypatch.setattr(pseudonym_batch, "dictionary_encode", spy)
    fast, fast_file = build(people, tmp_path / "dict")
    assert any(declined) and not all(declined)  # both encoders were used
    with monkeypatch.context() as m:  # the writer given plain strings, as before
        m.setattr(pseudonym_batch, "dictionary_encode", lambda values, limit=0: None)
        plain, plain_file = build(people, tmp_path / "plain")
    a, b = pq.read_table(fast_file), pq.read_table(plain_file)
    assert a.schema == b.schema and a.schema.field("region").type == pa.string()
    # the dictionary path was taken (no stored Arrow schema, which would name dictionaries)
    assert b"ARROW:schema" not in (pq.read_metadata(fast_file).metadata or {})
    assert b"ARROW:schema" in pq.read_metadata(plain_file).metadata
    assert a.equals(b) and a.num_rows > 1000 and a.column("region").null_count > 0
    assert a.to_pandas().equals(b.to_pandas())
    assert str(a.to_pandas().dtypes["sex"]) == str(b.to_pandas().dtypes["sex"])
    con = duckdb.connect()
    for query in ("DESCRIBE SELECT * FROM read_parquet('{}')", "SELECT * FROM read_parquet('{}')"):
        assert (
            con.execute(query.format(fast_file)).fetchall()
            == con.execute(query.format(plain_file)).fetchall()
        )
    fm, pm = pq.read_metadata(fast_file), pq.read_metadata(plain_file)
    assert fm.num_row_groups == pm.num_row_groups > 5
    for rg in range(fm.num_row_groups):
        for c in range(fm.num_columns):
            x, y = fm.row_group(rg).column(c), pm.row_group(rg).column(c)
            assert x.statistics == y.statistics, (rg, x.path_in_schema)
            assert x.encodings == y.encodings, (rg, x.path_in_schema)
    # same manifest apart from the file's checksum, which is the file's
    fd, pd_ = fast.manifest["datasets"]["pat"], plain.manifest["datasets"]["pat"]
    assert {k: v for k, v in fd.items() if k != "files"} == {
        k: v for k, v in pd_.items() if k != "files"
    }
    for res, f in ((fast, fast_file), (plain, plain_file)):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert res.manifest["datasets"]["pat"]["files"]["pat.parquet"] == digest


def test_the_hashing_file_is_the_files_sha256(tmp_path):
    path = tmp_path / "f.parquet"
    with parquet_out.HashingFile(path) as sink:
        with pytest.raises(RuntimeError, match="still being written"):
            sink.sha256()
        pq.write_table(pa.table({"x": list(range(10000))}), sink)
    assert sink.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(FileExistsError):  # never writes over a file
        parquet_out.HashingFile(path)
