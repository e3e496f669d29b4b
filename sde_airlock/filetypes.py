"""What a file's bytes really are, whatever its name says: the airlock's byte sniffing.

Pure code, no I/O. A file's *name* promises a kind (``results.csv``: UTF-8 text; ``fig.png``:
a PNG image); its *bytes* decide what it is:

* :func:`sniff` names the kind of the first bytes by their magic number: archives (zip, gzip,
  bzip2, xz, 7z, rar, tar, zstd), executables (ELF, PE/DOS, Mach-O, ``#!`` scripts) and binary
  data formats (PDF, SQLite, Parquet, pickle, PNG, JPEG); ``None`` when no magic matches.
* :class:`Inspector` is fed the bytes in order, one piece at a time (uploads are streamed,
  never held whole), and gives a :class:`TypeCheck`: the kind the name promises, the kind the
  bytes are, and every problem. Text kinds must be valid UTF-8 without NUL bytes; JSON must
  parse; a notebook must be valid nbformat JSON (those two are read whole at the end, from a
  callable the caller passes); PNG and JPEG images are walked chunk by chunk / segment by
  segment (CRCs, a sane header, nothing after the end marker).
* :func:`check_bytes` does the same for bytes in memory.

Problem codes: ``type_mismatch`` (the bytes are not what the name says), ``archive`` and
``executable`` (never exported, whatever the name or the settings).
"""

from __future__ import annotations

import codecs
import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

#: Bytes :func:`sniff` needs to see (tar's ``ustar`` magic sits at offset 257).
HEAD_BYTES = 512

TEXT = "text"
JSON = "json"
NOTEBOOK = "notebook"
PNG = "png"
JPEG = "jpeg"
PDF = "pdf"
PARQUET = "parquet"
SQLITE = "sqlite"
PICKLE = "pickle"
BINARY = "binary"  # bytes no magic number names and that are not UTF-8 text

#: Archives hide their content from a checker: never exported.
ARCHIVE_KINDS = {
    "zip": "a ZIP archive",
    "gzip": "a gzip archive",
    "bzip2": "a bzip2 archive",
    "xz": "an xz archive",
    "7z": "a 7-Zip archive",
    "rar": "a RAR archive",
    "tar": "a tar archive",
    "zstd": "a Zstandard archive",
}
#: Programs: never exported.
EXECUTABLE_KINDS = {
    "elf": "an ELF executable",
    "pe": "a Windows (PE/DOS) executable",
    "macho": "a Mach-O executable",
    "script": "a script with a #! line",
}
DATA_KINDS = {
    TEXT: "UTF-8 text",
    JSON: "JSON",
    NOTEBOOK: "a Jupyter notebook",
    PNG: "a PNG image",
    JPEG: "a JPEG image",
    PDF: "a PDF document",
    PARQUET: "a Parquet file",
    SQLITE: "an SQLite database",
    PICKLE: "a Python pickle",
    BINARY: "binary data of no known type",
}
TEXT_KINDS = frozenset({TEXT, JSON, NOTEBOOK})

#: The kind each name ending promises. An ending not listed here (one a deployment allows,
#: such as ``.R`` or ``.log``) promises plain UTF-8 text.
SUFFIX_KINDS = {
    ".csv": TEXT,
    ".tsv": TEXT,
    ".txt": TEXT,
    ".md": TEXT,
    ".html": TEXT,
    ".htm": TEXT,
    ".json": JSON,
    ".ipynb": NOTEBOOK,
    ".png": PNG,
    ".jpg": JPEG,
    ".jpeg": JPEG,
    ".pdf": PDF,
    ".parquet": PARQUET,
    ".sqlite": SQLITE,
    ".sqlite3": SQLITE,
    ".db": SQLITE,
    ".pkl": PICKLE,
    ".pickle": PICKLE,
}
#: Name endings of archives and programs: refused by name whatever the settings say.
ARCHIVE_SUFFIXES = frozenset(
    [
        ".zip",
        ".gz",
        ".tgz",
        ".tar",
        ".bz2",
        ".tbz2",
        ".xz",
        ".txz",
        ".7z",
        ".rar",
        ".zst",
        ".jar",
        ".war",
        ".whl",
        ".egg",
        ".apk",
        ".dmg",
        ".iso",
        ".cab",
        ".lz",
        ".lzma",
        ".z",
    ]
)
EXECUTABLE_SUFFIXES = frozenset(
    [
        ".exe",
        ".dll",
        ".so",
        ".dylib",
        ".bin",
        ".elf",
        ".com",
        ".msi",
        ".bat",
        ".cmd",
        ".sh",
        ".bash",
        ".ps1",
        ".app",
        ".scr",
        ".run",
        ".o",
        ".a",
        ".pyc",
        ".pyd",
    ]
)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"PK\x07\x08", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x7fELF", "elf"),
    (b"\xfe\xed\xfa\xce", "macho"),
    (b"\xfe\xed\xfa\xcf", "macho"),
    (b"\xce\xfa\xed\xfe", "macho"),
    (b"\xcf\xfa\xed\xfe", "macho"),
    (b"\xca\xfe\xba\xbe", "macho"),  # universal binary (also a Java class file)
    (b"#!", "script"),
    (b"%PDF-", PDF),
    (b"SQLite format 3\x00", SQLITE),
    (b"PAR1", PARQUET),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
)
_BZIP2 = re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)", re.DOTALL)


def describe(kind: str | None) -> str:
    """``'elf'`` -> ``'an ELF executable'``: kinds in messages people read."""
    if kind is None:
        return "of no known type"
    return ARCHIVE_KINDS.get(kind) or EXECUTABLE_KINDS.get(kind) or DATA_KINDS.get(kind, kind)


def suffix_of(name: str) -> str:
    """The lower-case last ending of a file name (``'Fig.PNG'`` -> ``'.png'``), or ``''``."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return f".{ext.lower()}" if dot and stem and ext else ""


def kind_for_name(name: str) -> str:
    """The kind a file's name promises (see :data:`SUFFIX_KINDS`)."""
    return SUFFIX_KINDS.get(suffix_of(name), TEXT)


def sniff(head: bytes) -> str | None:
    """The kind named by the magic number at the start of ``head``, or ``None``.

    ``head`` should hold the first :data:`HEAD_BYTES` bytes (or the whole file if shorter).
    """
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if _BZIP2.match(head):
        return "bzip2"
    if head[:2] == b"MZ" and (b"\x00" in head[:64] or _pe_signature(head)):
        return "pe"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PICKLE  # protocol 2-5; protocol 0 and 1 pickles are not told apart from text
    if head[257:262] == b"ustar":
        return "tar"
    return None


def _pe_signature(head: bytes) -> bool:
    if len(head) < 0x40:
        return False
    (offset,) = struct.unpack_from("<I", head, 0x3C)
    return head[offset : offset + 4] == b"PE\x00\x00"


@dataclass(frozen=True)
class Problem:
    """One reason a file or a request may not leave: a stable ``code`` and a sentence."""

    code: str
    message: str
    path: str = ""

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "path": self.path}


@dataclass(frozen=True)
class TypeCheck:
    """What the bytes of ``name`` were found to be, and every problem with them."""

    name: str
    expected: str
    detected: str
    size: int
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "expected": self.expected,
            "detected": self.detected,
            "size": self.size,
            "problems": [p.to_dict() for p in self.problems],
        }


# --- streamed structure checks ---------------------------------------------------------------


class _Text:
    """UTF-8 without NUL bytes, checked piece by piece (ASCII pieces skip the decoder)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.offset = 0
        self.problem: str | None = None

    def feed(self, data: bytes) -> None:
        if self.problem is not None:
            return
        nul = data.find(b"\x00")
        if nul >= 0:
            self.problem = f"a NUL byte at offset {self.offset + nul}"
            return
        if not (data.isascii() and not self._decoder.getstate()[0]):
            try:
                self._decoder.decode(data)
            except UnicodeDecodeError as exc:
                self.problem = f"bytes that are not UTF-8 at offset {self.offset + exc.start}"
                return
        self.offset += len(data)

    def finish(self) -> str | None:
        if self.problem is None:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.problem = "an incomplete UTF-8 character at the end"
        return self.problem


class _Fixed:
    """A byte-driven parser's helper: collect ``want`` bytes, then hand them over."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.want = 0
        self.problem: str | None = None

    def take(self, data: bytes, i: int) -> tuple[bytes | None, int]:
        take = min(self.want - len(self.buf), len(data) - i)
        self.buf += data[i : i + take]
        if len(self.buf) < self.want:
            return None, i + take
        out = bytes(self.buf)
        self.buf.clear()
        return out, i + take


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


class _Png(_Fixed):
    """Walks the chunks: signature, IHDR first and sane, every CRC, IDAT, IEND last."""

    def __init__(self) -> None:
        super().__init__()
        self.state, self.want = "signature", 8
        self.left = 0
        self.crc = 0
        self.ctype = b""
        self.ihdr = bytearray()
        self.chunks = 0
        self.idat = False

    def feed(self, data: bytes) -> None:
        i = 0
        while i < len(data) and self.problem is None:
            if self.state == "end":
                self.problem = "bytes after the image's end (IEND chunk)"
            elif self.state == "data":
                take = min(self.left, len(data) - i)
                piece = data[i : i + take]
                self.crc = zlib.crc32(piece, self.crc)
                if self.ctype == b"IHDR":
                    self.ihdr += piece
                self.left -= take
                i += take
                if not self.left:
                    self.state, self.want = "crc", 4
            else:
                got, i = self.take(data, i)
                if got is not None:
                    self._fixed(got)

    def _fixed(self, got: bytes) -> None:
        if self.state == "signature":
            if got != _PNG_SIGNATURE:
                self.problem = "no PNG signature"
            self.state, self.want = "header", 8
        elif self.state == "header":
            length, ctype = struct.unpack(">I4s", got)
            if self.chunks == 0 and ctype != b"IHDR":
                self.problem = "the first chunk is not IHDR"
            elif ctype == b"IHDR" and (self.chunks or length != 13):
                self.problem = "a misplaced or malformed IHDR chunk"
            elif length > 0x7FFFFFFF or not ctype.isalpha():
                self.problem = f"a malformed chunk header after {self.chunks} chunks"
            self.ctype, self.crc, self.chunks = ctype, zlib.crc32(ctype), self.chunks + 1
            if length:
                self.state, self.left = "data", length
            else:
                self.state, self.want = "crc", 4
        else:  # crc
            if struct.unpack(">I", got)[0] != self.crc & 0xFFFFFFFF:
                self.problem = f"a bad CRC in chunk {self.ctype.decode('latin-1')}"
            elif self.ctype == b"IHDR":
                self.problem = self._ihdr_problem()
            self.idat = self.idat or self.ctype == b"IDAT"
            if self.ctype == b"IEND":
                self.state = "end"
                if not self.idat:
                    self.problem = self.problem or "no image data (IDAT chunk)"
            else:
                self.state, self.want = "header", 8

    def _ihdr_problem(self) -> str | None:
        width, height, depth, colour, compression, filtering, interlace = struct.unpack(
            ">IIBBBBB", bytes(self.ihdr)
        )
        if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
            return f"an impossible image size {width}x{height}"
        if depth not in _PNG_DEPTHS.get(colour, ()):
            return f"an impossible colour type {colour} with bit depth {depth}"
        if compression or filtering or interlace > 1:
            return "unknown compression, filter or interlace methods"
        return None

    def finish(self) -> str | None:
        if self.problem is None and self.state != "end":
            self.problem = "it ends before its IEND chunk"
        return self.problem


#: Start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class _Jpeg(_Fixed):
    """Walks the segments: SOI, a sane frame header before the first scan, the entropy-coded
    data of every scan, EOI last and nothing after it."""

    def __init__(self) -> None:
        super().__init__()
        self.state, self.want = "soi", 2
        self.left = 0
        self.marker = 0
        self.ff = False
        self.frame = False
        self.scanned = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self.problem is None:
            state = self.state
            if state == "end":
                self.problem = "bytes after the image's end (EOI marker)"
            elif state == "skip":
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self._after_segment()
            elif state == "entropy" and not self.ff:
                j = data.find(b"\xff", i)
                i, self.ff = (n, False) if j < 0 else (j + 1, True)
            elif state in ("entropy", "marker"):
                byte = data[i]
                i += 1
                if not self.ff:
                    if byte != 0xFF:
                        self.problem = "a segment that does not start with a marker"
                    self.ff = True
                elif byte == 0xFF:
                    continue  # fill byte
                elif state == "entropy" and (byte == 0 or 0xD0 <= byte <= 0xD7):
                    self.ff = False  # stuffed 0xFF or a restart marker inside the scan
                else:
                    self.ff = False
                    self._marker(byte)
            else:
                got, i = self.take(data, i)
                if got is not None:
                    self._fixed(got)

    def _marker(self, marker: int) -> None:
        if marker == 0xD9:
            self.state = "end"
            if not self.scanned:
                self.problem = "no image data (scan) before the end marker"
        elif marker in (0xD8, 0x00) or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            self.problem = f"an unexpected marker 0x{marker:02X}"
        else:
            self.marker, self.state, self.want = marker, "length", 2

    def _fixed(self, got: bytes) -> None:
        if self.state == "soi":
            if got != b"\xff\xd8":
                self.problem = "no JPEG start-of-image marker"
            self.state = "marker"
        elif self.state == "length":
            length = int.from_bytes(got, "big")
            if length < 2 or (self.marker in _SOF and not 8 <= length <= 8 + 3 * 255):
                self.problem = f"a malformed segment 0x{self.marker:02X}"
            elif self.marker in _SOF:
                self.state, self.want = "frame", length - 2
            elif length == 2:
                self._after_segment()
            else:
                self.state, self.left = "skip", length - 2
        else:  # frame header
            _precision, height, width, components = struct.unpack_from(">BHHB", got)
            if width == 0 or not 1 <= components <= 4 or len(got) != 6 + 3 * components:
                self.problem = f"an impossible frame header ({width}x{height}, {components})"
            self.frame = True
            self._after_segment()

    def _after_segment(self) -> None:
        if self.marker == 0xDA:
            if not self.frame:
                self.problem = "a scan before the frame header"
            self.scanned, self.state = True, "entropy"
        else:
            self.state = "marker"

    def finish(self) -> str | None:
        if self.problem is None and self.state != "end":
            self.problem = "it ends before its end-of-image marker"
        return self.problem


# --- the inspector ---------------------------------------------------------------------------


class Inspector:
    """Feed the bytes of the file ``name`` in order; :meth:`result` says what they are.

    Only the first :data:`HEAD_BYTES` are kept; text and image structure are checked piece
    by piece. JSON and notebooks (:attr:`needs_whole`) are parsed at the end from the bytes
    ``read_whole()`` returns (the caller reads them back from where it stored them).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.expected = kind_for_name(name)
        self.size = 0
        self._head = bytearray()
        self._magic: str | None = None
        self._magic_known = False
        self._text = _Text()  # what the bytes are when no magic names them
        self._image: _Png | _Jpeg | None = (
            _Png() if self.expected == PNG else _Jpeg() if self.expected == JPEG else None
        )
        self._tail = b""

    @property
    def needs_whole(self) -> bool:
        return self.expected in (JSON, NOTEBOOK)

    def feed(self, data: bytes) -> None:
        data = bytes(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
            if len(self._head) >= HEAD_BYTES:
                self._settle_magic()
        self.size += len(data)
        self._tail = (self._tail + data[-4:])[-4:]
        self._text.feed(data)  # stops at the first NUL or invalid byte: cheap for binaries
        if self._image is not None:
            self._image.feed(data)

    def _settle_magic(self) -> None:
        if not self._magic_known:
            self._magic = sniff(bytes(self._head))
            self._magic_known = True

    @property
    def failed(self) -> bool:
        """Do the bytes seen so far already fail, whatever comes next? (Then the rest need
        not be stored.)"""
        if self._structure_problem(final=False) is not None:
            return True
        if not self._magic_known:
            return False
        return self._magic_problems(self._magic) != []

    def _magic_problems(self, magic: str | None) -> list[Problem]:
        out = []
        if self.expected in TEXT_KINDS:
            if magic is not None:
                out.append(self._mismatch(describe(magic)))
        elif magic != self.expected:
            out.append(self._mismatch(describe(magic) if magic else "not one"))
        if magic in ARCHIVE_KINDS:
            out.append(
                Problem(
                    "archive",
                    f"{self.name}: the bytes are {describe(magic)}: archives are never "
                    "exported, since a checker cannot see inside them; export the files in it",
                    self.name,
                )
            )
        if magic in EXECUTABLE_KINDS:
            out.append(
                Problem(
                    "executable",
                    f"{self.name}: the bytes are {describe(magic)}: programs are never exported",
                    self.name,
                )
            )
        return out

    def _mismatch(self, what: str) -> Problem:
        return Problem(
            "type_mismatch",
            f"{self.name}: the name says {describe(self.expected)} but the bytes are {what}",
            self.name,
        )

    def _structure_problem(self, *, final: bool) -> str | None:
        if self.expected in TEXT_KINDS:
            return self._text.finish() if final else self._text.problem
        if self._image is not None:
            return self._image.finish() if final else self._image.problem
        return None

    def result(self, read_whole: Callable[[], bytes] | None = None) -> TypeCheck:
        """Every problem with the bytes fed so far, taken as the whole file."""
        self._magic_known = False
        self._settle_magic()
        magic = self._magic
        problems = self._magic_problems(magic)
        structure = self._structure_problem(final=True)
        detected = magic or (TEXT if self._text.finish() is None else BINARY)
        if not problems and structure is not None:
            if self.expected in TEXT_KINDS:
                problems.append(self._mismatch(f"not UTF-8 text ({structure})"))
            else:
                problems.append(
                    Problem(
                        "type_mismatch",
                        f"{self.name}: the bytes start like {describe(self.expected)} but are "
                        f"not one: {structure}",
                        self.name,
                    )
                )
        elif not problems:
            problem = self._tail_problem() or self._whole_problem(read_whole)
            if problem:
                problems.append(
                    Problem(
                        "type_mismatch",
                        f"{self.name}: the name says {describe(self.expected)} but {problem}",
                        self.name,
                    )
                )
            elif self.expected in (JSON, NOTEBOOK):
                detected = self.expected
        return TypeCheck(self.name, self.expected, detected, self.size, tuple(problems))

    def _tail_problem(self) -> str | None:
        if self.expected == PARQUET and (self.size < 8 or self._tail != b"PAR1"):
            return "the bytes do not end like a Parquet file (PAR1)"
        if self.expected == PICKLE and not self._tail.endswith(b"."):
            return "the bytes do not end like a pickle (STOP)"
        return None

    def _whole_problem(self, read_whole: Callable[[], bytes] | None) -> str | None:
        if not self.needs_whole:
            return None
        if read_whole is None:
            raise ValueError(f"{self.name}: {self.expected} is checked whole: pass read_whole")
        return json_problem(read_whole(), notebook=self.expected == NOTEBOOK)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def json_problem(data: bytes, *, notebook: bool = False) -> str | None:
    """Why ``data`` is not valid JSON (or, with ``notebook``, not a valid nbformat
    notebook), or ``None``."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"the bytes are not valid JSON ({str(exc)[:200]})"
    except RecursionError:
        return "the bytes are JSON nested too deeply to read"
    if not notebook:
        return None
    from nbformat.validator import get_validator  # the notebook format's own JSON schema

    if not isinstance(doc, dict):
        return "the bytes are JSON but not a notebook (not an object)"
    major, minor = doc.get("nbformat"), doc.get("nbformat_minor", 0)
    if not isinstance(major, int) or isinstance(major, bool) or not isinstance(minor, int):
        return "the bytes are JSON but not a notebook (no nbformat version)"
    validator = get_validator(version=major, version_minor=minor)
    if validator is None:
        return f"the bytes are JSON but nbformat version {major} is not known"
    for error in validator.iter_errors(doc):
        return f"the bytes are JSON but not a valid notebook ({str(error.message)[:200]})"
    return None


def check_bytes(name: str, data: bytes) -> TypeCheck:
    """:class:`Inspector` over bytes in memory (tests, small files)."""
    inspector = Inspector(name)
    inspector.feed(data)
    return inspector.result(lambda: data)
