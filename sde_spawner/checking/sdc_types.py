"""What the bytes of an exported file are, against what its name says (rule ``type_mismatch``).

Pure. A file is judged by its first bytes (magic numbers of archives, executables, databases,
documents and images) and, for text types, by the absence of NUL bytes. Archives and
executables are a mismatch under any name.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from sde_spawner.checking.sdc_core import FAIL, Finding

#: (magic prefix, offset, what it is). Order matters: the first match names the file.
_MAGIC = (
    (b"PK\x03\x04", 0, "a ZIP archive (or an Office document)"),
    (b"PK\x05\x06", 0, "an empty ZIP archive"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"\xfd7zXZ\x00", 0, "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"),
    (b"Rar!\x1a\x07", 0, "a RAR archive"),
    (b"ustar", 257, "a tar archive"),
    (b"\x28\xb5\x2f\xfd", 0, "a Zstandard archive"),
    (b"\x7fELF", 0, "an ELF executable"),
    (b"\xfe\xed\xfa\xce", 0, "a Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", 0, "a Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", 0, "a Mach-O executable"),
    (b"\xce\xfa\xed\xfe", 0, "a Mach-O executable"),
    (b"\xca\xfe\xba\xbe", 0, "a Mach-O or Java class file"),
    (b"SQLite format 3\x00", 0, "an SQLite database"),
    (b"PAR1", 0, "a Parquet file"),
    (b"ARROW1", 0, "an Arrow file"),
    (b"%PDF-", 0, "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"),
    (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"GIF87a", 0, "a GIF image"),
    (b"GIF89a", 0, "a GIF image"),
    (b"\x80\x04\x95", 0, "a Python pickle"),
    (b"\x80\x05\x95", 0, "a Python pickle"),
    (b"\x89HDF\r\n\x1a\n", 0, "an HDF5 file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "an OLE document (old Office format)"),
)
NEVER = ("archive", "executable", "pickle", "database")
_EXPECTED = {
    ".png": "a PNG image",
    ".jpg": "a JPEG image",
    ".jpeg": "a JPEG image",
    ".gif": "a GIF image",
    ".pdf": "a PDF document",
    ".parquet": "a Parquet file",
}
TEXT_TYPES = frozenset({".csv", ".tsv", ".txt", ".md", ".json", ".ipynb", ".html", ".htm",
                        ".svg", ".log", ".tex", ".rst"})  # fmt: skip


def _windows_executable(data: bytes) -> bool:
    """``MZ`` with its pointer at 0x3C to a ``PE`` header (two letters alone are text)."""
    if data[:2] != b"MZ" or len(data) < 64:
        return False
    pe = int.from_bytes(data[0x3C:0x40], "little")
    return data[pe : pe + 4] == b"PE\x00\x00" or len(data) < pe  # a cut-off executable too


def sniff(data: bytes) -> str | None:
    """What the first bytes say the file is, or None (text, or nothing known)."""
    if _windows_executable(data):
        return "a Windows executable"
    if data[:3] == b"BZh" and data[3:4].isdigit() and data[4:10] == b"1AY&SY":
        return "a bzip2 archive"
    for magic, offset, what in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return what
    return None


def type_mismatch(path: str, data: bytes) -> Finding | None:
    """A ``type_mismatch`` finding when the bytes are not what the name says, or are an
    archive or executable under any name; else None."""
    ext = PurePosixPath(path).suffix.lower()
    found = sniff(data)
    if found and any(word in found for word in NEVER):
        return Finding(
            "type_mismatch",
            FAIL,
            "file",
            f"named {ext or 'without a type'} but the bytes are {found}: archives, "
            "executables, pickles and databases never leave",
        )
    expected = _EXPECTED.get(ext)
    if expected is not None:
        if found != expected:
            return Finding(
                "type_mismatch",
                FAIL,
                "file",
                f"named {ext} but the bytes are {found or 'not ' + expected}",
            )
        return None
    if ext in TEXT_TYPES:
        if found is not None:
            return Finding(
                "type_mismatch", FAIL, "file", f"named {ext} (text) but the bytes are {found}"
            )
        if b"\x00" in data:
            return Finding(
                "type_mismatch",
                FAIL,
                "file",
                f"named {ext} (text) but it holds NUL bytes: binary data, not text",
            )
    return None
