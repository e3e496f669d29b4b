"""What a binary read really returns: the type its bytes say, and how many bytes there are.

The contents API's base64 reads are allowed only for what JupyterLab displays in place (its
image and PDF viewers). The file name cannot decide that -- a Parquet file renamed
``table.png``, or a link named ``cohort.pdf`` into ``/data``, carries the name of a viewable
type and the bytes of an extract -- so :func:`viewable_type` reads the magic number at the
start of the bytes that are about to be returned, and the name must agree with it.

What this does not do: a file whose bytes really are a PNG or PDF can still carry any data
(in its pixels, or in chunks a viewer ignores), as can a screenshot. Displayed content is the
residual risk stated in ``docs/threat-model.md``; this check stops a renamed file from
travelling whole as a "picture".

Pure functions, no I/O. (The airlock's byte inspector, :mod:`sde_airlock.filetypes`, judges
files that leave through an export; this module answers a narrower question on the viewing
path, for the image types JupyterLab's viewers open, GIF, BMP and WebP among them, which
exports do not allow.)
"""

from __future__ import annotations

import base64
import binascii

#: Magic numbers of the binary types JupyterLab displays in place, by type.
MAGIC: dict[str, tuple[bytes, ...]] = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "bmp": (b"BM",),
    "webp": (b"RIFF",),  # and b"WEBP" at offset 8, see sniff()
    "pdf": (b"%PDF-",),
}

#: The file name endings of each type (the viewer JupyterLab opens is chosen by the name).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "gif": (".gif",),
    "bmp": (".bmp",),
    "webp": (".webp",),
    "pdf": (".pdf",),
}

#: Bytes of the start of a file that :func:`sniff` needs.
HEAD_BYTES = 16


def sniff(head: bytes) -> str | None:
    """The viewable type whose magic number ``head`` starts with, or None."""
    for kind, magics in MAGIC.items():
        if head.startswith(magics):
            if kind == "webp" and head[8:12] != b"WEBP":
                continue
            if kind == "bmp" and len(head) < 14:
                continue  # a two-byte "BM" text file is not a bitmap
            return kind
    return None


def suffix_type(name: str) -> str | None:
    """The viewable type a file name claims (by its ending), or None."""
    lower = name.lower()
    for kind, suffixes in SUFFIXES.items():
        if lower.endswith(suffixes):
            return kind
    return None


def viewable_type(name: str, head: bytes, allowed_suffixes: tuple[str, ...]) -> str | None:
    """The type to display, if the name is one of ``allowed_suffixes`` *and* the bytes are
    that type; else None (the read is a download)."""
    lower = name.lower()
    if not lower.endswith(tuple(s.lower() for s in allowed_suffixes)):
        return None
    claimed = suffix_type(name)
    found = sniff(head)
    return found if found is not None and found == claimed else None


def base64_head(content: str, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes encoded in base64 ``content`` (line breaks allowed, as
    jupyter_server writes them); b"" if it does not decode."""
    chars = -(-n // 3) * 4
    prefix = "".join(content[: chars + chars // 76 * 2 + 8].split())[:chars]
    try:
        return base64.b64decode(prefix, validate=True)[:n]
    except (binascii.Error, ValueError):
        return b""


def base64_size(content: str) -> int:
    """Bytes encoded in base64 ``content``, counted without decoding it (whitespace, such as
    the line breaks of :func:`base64.encodebytes`, is ignored)."""
    stripped = content.rstrip()
    chars = len(stripped) - sum(stripped.count(c) for c in "\n\r \t")
    padding = len(stripped) - len(stripped.rstrip("="))
    return max(chars // 4 * 3 - padding, 0)


def text_size(content: str) -> int:
    """UTF-8 bytes of ``content``, as the contents API read them from the file."""
    return len(content.encode("utf-8", "surrogatepass"))
