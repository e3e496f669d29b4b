"""Writing an extract's Parquet file fast, without changing what a reader gets.

* :func:`dictionary_columns`, :func:`as_dictionary`: low-cardinality string columns handed to
  pyarrow's Parquet writer as dictionary arrays made by the native encoder
  (:func:`sde_spawner.datasets.pseudonym_batch.dictionary_encode`), so the single writer thread
  neither hashes every value nor compares every value for the min/max statistics. The file
  holds the same pages, encodings and statistics, and reads back (pyarrow, pandas, DuckDB)
  as plain strings: its Arrow schema, which would name the dictionaries, is not stored, and
  the columns are chosen only where the file reads back exactly as the plain schema without
  it (the tests compare what readers get with the SQL path's file).
* :class:`HashingFile`: the file's SHA-256 computed from the bytes as they are written,
  instead of reading the file again afterwards on one core.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sde_spawner.datasets import pseudonym_batch


def dictionary_columns(schema: pa.Schema, first, candidates: list[str]) -> frozenset[str]:
    """The string columns to hand the Parquet writer as dictionary arrays.

    The writer dictionary-encodes low-cardinality columns anyway, hashing every value and
    comparing every value for the min/max statistics; given a dictionary array it writes the
    dictionary and indices as they are (the same pages, encodings and statistics) and reads
    the statistics off the dictionary. The native encoder makes one far faster than either.
    Chosen: the columns whose values in the first batch fit the encoder, and only when the
    file then reads back (without its stored Arrow schema) as exactly ``schema``."""
    if first is None or not first.num_rows:
        return frozenset()
    chosen = frozenset(
        c
        for c in candidates
        if schema.field(c).type == pa.string()
        and pseudonym_batch.dictionary_encode(first.column(c)) is not None
    )
    if chosen:
        sink = pa.BufferOutputStream()
        pq.write_table(schema.empty_table(), sink, store_schema=False)
        back = pq.read_schema(pa.BufferReader(sink.getvalue()))
        if not back.equals(schema, check_metadata=True):
            return frozenset()
    return chosen


def with_dictionaries(schema: pa.Schema, names: frozenset[str]) -> pa.Schema:
    dictionary = pa.dictionary(pa.int32(), pa.string())
    return pa.schema(
        [f.with_type(dictionary) if f.name in names else f for f in schema], schema.metadata
    )


def as_dictionary(values: pa.Array) -> pa.Array:
    """A dictionary array of ``values`` (pyarrow's encoder where the native one declines)."""
    encoded = pseudonym_batch.dictionary_encode(values)
    return pc.dictionary_encode(values) if encoded is None else encoded


class HashingFile:
    """A new file that pyarrow's Parquet writer appends to, hashing the bytes as they go.

    :meth:`sha256` is the file's SHA-256 once it is closed; the writer only appends, and the
    bytes hashed are checked against the file's size (an unexpected seek raises)."""

    def __init__(self, path):
        self._fh = open(path, "xb")  # noqa: SIM115 (closed by close())
        self._hash = hashlib.sha256()
        self._written = 0

    closed = property(lambda self: self._fh.closed)

    def write(self, data) -> int:
        self._hash.update(data)  # hashlib lets the GIL go for large writes
        n = self._fh.write(data)
        self._written += n
        return n

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sha256(self) -> str:
        if not self._fh.closed:
            raise RuntimeError("the file is still being written")
        size = os.stat(self._fh.name).st_size
        if size != self._written:
            raise RuntimeError("the file was not written straight through")
        return self._hash.hexdigest()
