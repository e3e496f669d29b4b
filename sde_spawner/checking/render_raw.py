"""The raw view of an exported file: its exact bytes, escaped, one bounded page at a time.

Whatever a preview renders or leaves out, this view shows every byte a checker approves:

* **text** (no NUL in the first 8 KiB, mostly printable): numbered lines; every invisible or
  control character as a marked ``⟨U+200B⟩`` escape, bytes that are not UTF-8 as ``⟨0xFF⟩``,
  tabs as ``⇥``, spaces and tabs at line ends as ``·``/``⇥``, CR of CRLF as ``⟨CR⟩`` and a
  missing final newline said;
* **hex**: a classic dump (offset, 16 bytes, printable ASCII), for binaries and on request.

Pages are :data:`PAGE` bytes (text pages end on a character boundary); the file is read
through a seekable handle, so a 250 MiB file costs one page of memory. Pure apart from
reading that handle; the result is a script-free document served with
:data:`~sde_spawner.checking.render.PREVIEW_HEADERS`.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath
from typing import BinaryIO

from sde_spawner.checking.render_hidden import (
    candidate_pattern,
    char_label,
    char_name,
    is_invisible,
)

#: Bytes per page, the same in both modes so the request page can offer every page.
PAGE = 64 * 1024
MODES = ("auto", "text", "hex")


class RawError(ValueError):
    pass


@dataclass(frozen=True)
class RawPage:
    mode: str  # text | hex
    page: int
    pages: int
    html: str


def looks_like_text(head: bytes) -> bool:
    """No NUL and at most 1 in 20 control bytes (other than tab, newlines, form feed)."""
    if b"\x00" in head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return controls * 20 <= len(head)


def raw_page(
    path: str, fh: BinaryIO, size: int, *, page: int = 1, mode: str = "auto", framed: bool = False
) -> RawPage:
    """Page ``page`` (from 1) of the raw view of a file read through ``fh``.

    ``framed``: shown in the request page's sandboxed frame, whose own links would navigate
    without the checker's cookie (the frame's origin is opaque): the page controls are the
    request page's, so the document names them instead of linking."""
    if mode not in MODES:
        raise RawError(f"unknown raw view {mode!r}: use text or hex")
    if page < 1:
        raise RawError("page numbers start at 1")
    if mode == "auto":
        fh.seek(0)
        mode = "text" if looks_like_text(fh.read(8192)) else "hex"
    per = PAGE
    pages = max(1, -(-size // per))
    if page > pages:
        raise RawError(f"there is no page {page}: the raw view has pages 1 to {pages}")
    if mode == "text":
        start = _boundary(fh, (page - 1) * per, size)
        end = _boundary(fh, page * per, size)
        fh.seek(start)
        body, note = _text_body(fh.read(end - start), _lines_before(fh, start), end >= size)
    else:
        start, end = (page - 1) * per, min(size, page * per)
        fh.seek(start)
        body, note = _hex_body(fh.read(end - start), start), ""
    head = (
        f'<p class="meta" id="raw-meta">{html.escape(PurePosixPath(path).name)} · raw bytes '
        f"({mode}) · bytes {start:,}–{max(start, end - 1):,} of {size:,} · page {page} of "
        f"{pages}</p>{_nav(page, pages, mode, framed)}{note}"
    )
    from sde_spawner.checking.render import _document

    return RawPage(mode, page, pages, _document(path, f"raw-{mode}", "", head + body, raw=True))


def _boundary(fh: BinaryIO, offset: int, size: int) -> int:
    """``offset`` moved past UTF-8 continuation bytes (at most 3): pages split no character."""
    if offset <= 0 or offset >= size:
        return max(0, min(offset, size))
    fh.seek(offset)
    ahead = fh.read(3)
    skip = 0
    while skip < len(ahead) and 0x80 <= ahead[skip] <= 0xBF:
        skip += 1
    return offset + skip


def _lines_before(fh: BinaryIO, offset: int) -> int:
    fh.seek(0)
    count, left = 0, offset
    while left > 0:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            break
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def _nav(page: int, pages: int, mode: str, framed: bool) -> str:
    if framed:
        return (
            '<p class="nav">Other pages and the hex or text view: the controls above this '
            "frame, or the raw view in its own tab.</p>"
        )

    def link(p: int, label: str, id_: str = "") -> str:
        ident = f' id="{id_}"' if id_ else ""
        return f'<a href="?page={p}&amp;as={mode}"{ident}>{label}</a>'

    parts = []
    if page > 1:
        parts += [link(1, "« first"), link(page - 1, "‹ previous")]
    if page < pages:
        parts += [link(page + 1, "next ›", id_="raw-next"), link(pages, "last »")]
    other = "hex" if mode == "text" else "text"
    parts.append(f'<a href="?page=1&amp;as={other}" id="raw-switch">view as {other}</a>')
    return f'<p class="nav">{" · ".join(parts)}</p>'


def _escape_char(m: re.Match) -> str:
    c = m.group()
    if c == "\t":
        return '<span class="ws" title="tab">⇥</span>\t'
    if 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f'<span class="inv" title="byte">⟨0x{ord(c) - 0xDC00:02X}⟩</span>'
    return f'<span class="inv" title="{char_name(c)}">{char_label(c)}</span>'


@cache
def _raw_pattern() -> re.Pattern:
    return re.compile(f"(?:{candidate_pattern().pattern})|\t")


def _escape_line(text: str) -> tuple[str, int]:
    escaped = html.escape(text, quote=False)
    marked = [0]

    def sub(m: re.Match) -> str:
        c = m.group()
        if c == "\t":
            return _escape_char(m)
        if not is_invisible(c):
            return c
        marked[0] += 1
        return _escape_char(m)

    return _raw_pattern().sub(sub, escaped), marked[0]


def _text_body(chunk: bytes, first_line: int, at_end: bool) -> tuple[str, str]:
    text = chunk.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    ends_with_newline = text.endswith("\n")
    if ends_with_newline:
        lines.pop()
    out = ['<pre class="raw">']
    marked = trailing = 0
    for number, line in enumerate(lines, first_line + 1):
        cr = line.endswith("\r")
        if cr:
            line = line[:-1]
        content = line.rstrip(" \t")
        tail = line[len(content) :]
        escaped, n = _escape_line(content)
        marked += n
        if tail:
            trailing += 1
            dots = "".join("·" if c == " " else "⇥" for c in tail)
            escaped += (
                f'<span class="ws trail" title="spaces or tabs at the line end">{dots}</span>'
            )
        if cr:
            escaped += '<span class="ws" title="carriage return">⟨CR⟩</span>'
        out.append(f'<span class="ln">{number}</span>{escaped}\n')
    if at_end and not ends_with_newline and text:
        out.append('<span class="ws">⟨no newline at the end of the file⟩</span>')
    out.append("</pre>")
    notes = []
    if marked:
        notes.append(f"{marked:,} invisible, control or non-UTF-8 character(s) on this page.")
    if trailing:
        notes.append(f"{trailing:,} line(s) end in spaces or tabs.")
    note = f'<p class="note warn">{" ".join(notes)}</p>' if notes else ""
    return "".join(out), note


def _hex_body(chunk: bytes, offset: int) -> str:
    out = ['<pre class="raw hex">']
    for row in range(0, len(chunk), 16):
        piece = chunk[row : row + 16]
        hexes = piece.hex(" ")
        if len(piece) > 8:
            hexes = hexes[:23] + "  " + hexes[24:]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in piece)
        out.append(f"{offset + row:08x}  {hexes:<49} |{html.escape(text, quote=False)}|\n")
    out.append("</pre>")
    return "".join(out)
