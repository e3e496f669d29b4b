"""Pseudonyms of a whole Arrow column at once, in native code (the fast path of extracts).

``_pseudonym_batch.so`` (built from ``_pseudonym_batch.c`` by ``hatch_build.py`` at install)
computes :func:`sde_spawner.datasets.pseudonyms.pseudonym` for every value of an Arrow string
array in one ctypes call: the HMAC pads' states computed once, two identifiers hashed at once
with the CPU's SHA extensions where it has them (OpenSSL's SHA-256 otherwise), no Python per
row, the GIL released. Where the library is missing (no compiler at install), an extract
uses the SQL form of the same HMAC instead; both are tested against the reference.

The library also dictionary-encodes low-cardinality string columns for the extract's Parquet
writer (:func:`dictionary_encode`, used by :mod:`sde_spawner.datasets.parquet_out`); a library
built from an older source without it still serves the pseudonyms.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from sde_spawner.datasets.pseudonyms import PSEUDONYM_HEX, pads

log = logging.getLogger(__name__)
LIBRARY = Path(__file__).with_name("_pseudonym_batch.so")
#: False: use the SQL HMAC even where the library exists (the tests of the fallback set it)
USE_NATIVE = True
#: False: hash with OpenSSL only, never the SHA extensions (the tests compare both paths)
USE_SHANI = True


@cache
def _library():
    if not LIBRARY.is_file():
        log.info("no %s: pseudonyms use the SQL HMAC", LIBRARY.name)
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as exc:
        log.warning("%s cannot be loaded (%s): pseudonyms use the SQL HMAC", LIBRARY.name, exc)
        return None
    try:
        fn, valid, shani = lib.sde_hmac_sha256_hex2, lib.sde_nhs_valid, lib.sde_hmac_uses_shani
        add, check = lib.sde_optout_add, lib.sde_nhs_check
    except AttributeError as exc:  # a library built from an older source
        log.warning("%s is out of date (%s): pseudonyms use the SQL HMAC", LIBRARY.name, exc)
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    valid.restype = ctypes.c_int64
    valid.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    shani.restype = ctypes.c_int
    shani.argtypes = []
    add.restype = ctypes.c_int
    add.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
    add.argtypes += [ctypes.c_int64, ctypes.c_int]
    check.restype = ctypes.c_int64
    check.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 2
    check.argtypes += [ctypes.c_int64] + [ctypes.c_void_p] * 2
    encode = getattr(lib, "sde_dict_encode", None)  # None: a library from an older source
    if encode is not None:
        encode.restype = ctypes.c_int64
        encode.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
        encode.argtypes += [ctypes.c_int64, ctypes.c_int]
    return _Native(fn, valid, bool(shani()), add, check, encode)


class _Native(NamedTuple):
    """The library's functions, typed (see the C source for each)."""

    hmac: Callable
    valid: Callable
    shani: bool
    optout_add: Callable
    nhs_check: Callable
    dict_encode: Callable | None


def _dict_encoder():
    """The library's dictionary encoder, or None (no library, or one from an older source)."""
    lib = _library()
    return None if lib is None else lib.dict_encode


#: at most this many distinct values in one batch for :func:`dictionary_encode`
DICTIONARY_LIMIT = 1024
_DICTIONARY_BYTES = 1 << 16


def dictionary_encode(values: pa.Array, limit: int = DICTIONARY_LIMIT) -> pa.Array | None:
    """``values`` (utf8) as a dictionary array (int32 indices, the distinct values in order of
    first appearance), or None when it has more than ``limit`` distinct values (or they are
    long) or the library has no encoder. Equal to ``values`` value for value."""
    fn = _dict_encoder() if USE_NATIVE else None
    if fn is None or not 1 <= limit <= 4096:
        return None
    values = _plain(values)
    n = len(values)
    validity, offsets, data = values.buffers()
    indices = pa.allocate_buffer(4 * n)
    dict_offsets = pa.allocate_buffer(4 * (limit + 1))
    dict_data = pa.allocate_buffer(_DICTIONARY_BYTES)
    count = fn(
        data.address if data is not None else None,
        offsets.address if offsets is not None else None,
        validity.address if validity is not None and values.null_count else None,
        n,
        indices.address,
        dict_offsets.address,
        dict_data.address,
        _DICTIONARY_BYTES,
        limit,
    )
    if count == -2:
        raise RuntimeError("the native pseudonym library refused its input")
    if count < 0:
        return None
    dictionary = pa.Array.from_buffers(pa.string(), count, [None, dict_offsets, dict_data])
    codes = pa.Array.from_buffers(
        pa.int32(), n, [validity if values.null_count else None, indices], values.null_count
    )
    return pa.DictionaryArray.from_arrays(codes, dictionary, safe=False)  # in range by construction


def uses_shani() -> bool:
    """Whether pseudonyms are hashed with the CPU's SHA extensions in this process."""
    lib = _library() if USE_NATIVE else None
    return bool(lib and lib.shani and USE_SHANI)


def available() -> bool:
    """Whether this process computes pseudonyms natively."""
    return USE_NATIVE and _library() is not None


class Pseudonymiser:
    """One project key's pseudonyms of Arrow string arrays (no nulls)."""

    def __init__(self, key: bytes):
        fns = _library()
        if fns is None:
            raise RuntimeError("the native pseudonym library is not available")
        self._fn, self._valid = fns.hmac, fns.valid
        self._ipad, self._opad = pads(key)

    def __call__(self, values: pa.Array) -> pa.Array:
        """The pseudonym of every value."""
        values = _plain(values)
        if values.null_count:
            raise ValueError("identifiers must not be null")
        n = len(values)
        out = pa.allocate_buffer(n * PSEUDONYM_HEX)
        out_offsets = pa.allocate_buffer(4 * (n + 1))
        _, offsets, data = values.buffers()
        rc = self._fn(
            self._ipad,
            self._opad,
            data.address if data is not None else None,
            offsets.address if offsets is not None else None,
            n,
            out.address,
            out_offsets.address,
            PSEUDONYM_HEX,
            int(USE_SHANI),
        )
        if rc != 0:
            raise RuntimeError("the native pseudonym library refused its input")
        return pa.Array.from_buffers(pa.string(), n, [None, out_offsets, out])

    def valid_nhs_numbers(self, values: pa.Array) -> pa.Array:
        """Boolean array: which values are valid NHS numbers (null: not valid)."""
        # No fill_null(values, ""): converting the Python "" makes pyarrow import pandas
        # (half a second, once per process); null slots are masked out below instead.
        values = _plain(values)
        n = len(values)
        out = pa.allocate_buffer(n)
        _, offsets, data = values.buffers()
        if (
            self._valid(
                data.address if data is not None else None,
                offsets.address if offsets is not None else None,
                n,
                out.address,
            )
            < 0
        ):
            raise RuntimeError("the native pseudonym library refused its input")
        valid = pa.Array.from_buffers(pa.uint8(), n, [None, out]).cast(pa.bool_())
        return pc.and_(valid, pc.is_valid(values)) if values.null_count else valid


#: at most this many opt-out lists for :class:`OptoutCheck` (one bit of a 32-bit mask each)
MAX_LISTS = 32


class OptoutCheck:
    """The NHS number check and the opt-out lists' membership of whole Arrow columns, in one
    native pass per column (no Python per row, the GIL released).

    A value is checked as SQL ``replace(value, ' ', '')`` (its spaces removed) would be, and
    compared with the lists' entries as that string would be: entries are kept as numbers
    (only a ten-digit entry can equal a valid NHS number; others can never match)."""

    def __init__(self, lists):
        lib = _library()
        if lib is None:
            raise RuntimeError("the native pseudonym library is not available")
        self._check = lib.nhs_check
        lists = [_plain(v) for v in lists]
        if not 1 <= len(lists) <= MAX_LISTS:
            raise ValueError(f"between 1 and {MAX_LISTS} opt-out lists")
        slots = 16
        while slots < 2 * sum(len(v) for v in lists):
            slots *= 2
        self._slots = slots
        self._keys = pa.py_buffer(bytearray(8 * slots))  # zeroed: every slot empty
        self._masks = pa.py_buffer(bytearray(4 * slots))
        for bit, values in enumerate(lists):
            validity, offsets, data = values.buffers()
            rc = lib.optout_add(
                self._keys.address,
                self._masks.address,
                slots,
                data.address if data is not None else None,
                offsets.address if offsets is not None else None,
                validity.address if validity is not None and values.null_count else None,
                len(values),
                bit,
            )
            if rc != 0:
                raise RuntimeError("the native pseudonym library refused an opt-out list")

    def __call__(self, values) -> tuple[pa.Array, pa.Array, int]:
        """``(valid, lists, spaced)``: boolean array, which values are valid NHS numbers once
        their spaces are removed (null: not valid); uint32 array, for the valid ones the lists
        they are on (bit i: list i; 0: none); how many valid values had spaces."""
        values = _plain(values)
        n = len(values)
        valid = pa.allocate_buffer(n)
        lists = pa.allocate_buffer(4 * n)
        _, offsets, data = values.buffers()
        spaced = self._check(
            data.address if data is not None else None,
            offsets.address if offsets is not None else None,
            n,
            self._keys.address,
            self._masks.address,
            self._slots,
            valid.address,
            lists.address,
        )
        if spaced < 0:
            raise RuntimeError("the native pseudonym library refused its input")
        ok = pa.Array.from_buffers(pa.uint8(), n, [None, valid]).cast(pa.bool_())
        if values.null_count:
            ok = pc.and_(ok, pc.is_valid(values))
        return ok, pa.Array.from_buffers(pa.uint32(), n, [None, lists]), spaced


def _plain(values) -> pa.Array:
    """One utf8 array whose buffers start at its first value."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type != pa.string():
        values = values.cast(pa.string())
    if values.offset:
        values = pa.concat_arrays([values])
    return values
