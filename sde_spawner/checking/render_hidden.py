"""What a preview does not show of a file, made visible (pure functions, no I/O).

A preview is a *rendering*: notebook metadata, HTML comments, raw cells of other MIME types,
output representations the renderer does not pick, the contents of ``<style>``/``<template>``
/``<noscript>``, image metadata chunks, invisible Unicode — all of it leaves with the file but
never appears on screen. This module finds those parts and describes them as :class:`Omitted`
items, which :func:`notice_html` turns into an escaped, collapsible notice at the top of the
preview ("released with the file but not shown above"), each with its size and a safe view.

It also owns how *invisible* characters are shown everywhere: every control, format,
unassigned, private-use, surrogate and unusual-space character, variation selectors and the
TAG block (U+E0000..E007F) included, becomes a visible ``⟨U+200B⟩`` escape
(:func:`escape_visible`, :func:`mark_invisible_html`), and :func:`invisible_note` counts them.

Only notices come from here: what is *removed* from a preview is still decided by the
sanitiser's allowlist in :mod:`~sde_spawner.checking.render`, so a miss here can make a notice
incomplete but never lets active content through; the raw view
(:mod:`~sde_spawner.checking.render_raw`) shows every byte regardless.
"""

from __future__ import annotations

import bisect
import html
import json
import re
import struct
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cache

#: Characters of an item's escaped view shown inline; the raw view has the rest.
ITEM_CHARS = 8_000
#: Items listed one by one in a notice; the rest are counted.
MAX_ITEMS = 300


@dataclass(frozen=True)
class Omitted:
    """One part of a file that the preview does not show."""

    where: str  # "notebook", "cell 3 (markdown)", "file"
    what: str  # "notebook metadata", "HTML comment", "output text/plain (not shown)"
    size: int  # bytes (UTF-8 of the text, or of the binary part)
    text: str = ""  # the part itself, shown escaped
    image: str | None = None  # a data: URI of an inert image, shown as an image


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# --- invisible characters -------------------------------------------------------------------

#: Invisible characters outside the general categories flagged below (marks, fillers, blanks).
_EXTRA_INVISIBLE = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian variation selectors
    (0x2800, 0x2800),  # Braille blank
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
_FLAGGED_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp", "Zs"})
_ALLOWED_PLAIN = frozenset({"\t", "\n", "\r", " "})


@cache
def _flagged_ranges() -> tuple[tuple[int, int], ...]:
    """Every invisible code point as sorted (first, last) ranges (built once: about 0.2 s)."""
    flagged: list[tuple[int, int]] = []

    def add(lo: int, hi: int) -> None:
        if flagged and flagged[-1][1] >= lo - 1:
            flagged[-1] = (flagged[-1][0], max(hi, flagged[-1][1]))
        else:
            flagged.append((lo, hi))

    extra = dict(_EXTRA_INVISIBLE)
    for cp in (*range(0x40000), *range(0xE0000, 0xF0000)):
        c = chr(cp)
        if cp in extra:
            add(cp, extra[cp])
        elif c not in _ALLOWED_PLAIN and unicodedata.category(c) in _FLAGGED_CATEGORIES:
            add(cp, cp)
        if cp == 0x3FFFF:
            add(0x40000, 0xDFFFF)  # planes 4-13: unassigned
    add(0xF0000, 0x10FFFF)  # planes 15-16: private use
    return tuple(flagged)


@cache
def candidate_pattern() -> re.Pattern:
    """Every invisible BMP character, every astral one (checked by :func:`is_invisible`: a
    regex class of scattered astral ranges is slow), and a CR not followed by LF."""
    bmp = [(lo, min(hi, 0xFFFF)) for lo, hi in _flagged_ranges() if lo <= 0xFFFF]
    parts = "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in bmp
    )
    return re.compile(f"[{parts}\\U00010000-\\U0010FFFF]|\\r(?!\\n)")


@cache
def _astral_ranges() -> tuple[list[int], list[int]]:
    ranges = [(lo, hi) for lo, hi in _flagged_ranges() if hi > 0xFFFF]
    return [max(lo, 0x10000) for lo, _ in ranges], [hi for _, hi in ranges]


def is_invisible(c: str) -> bool:
    """For a character :func:`candidate_pattern` matched: is it really invisible?"""
    cp = ord(c)
    if cp <= 0xFFFF:
        return True
    starts, ends = _astral_ranges()
    i = bisect.bisect_right(starts, cp) - 1
    return i >= 0 and cp <= ends[i]


def sub_invisible(text: str, replace) -> str:
    """``text`` with each invisible character ``c`` replaced by ``replace(c)``."""
    pattern = candidate_pattern()
    if not pattern.search(text):
        return text

    def one(m: re.Match) -> str:
        c = m.group()
        return replace(c) if is_invisible(c) else c

    return pattern.sub(one, text)


def invisible_counts(text: str) -> Counter:
    """How many of each invisible character ``text`` holds."""
    pattern = candidate_pattern()
    if not pattern.search(text):
        return Counter()
    return Counter(c for c in pattern.findall(text) if is_invisible(c))


def char_label(c: str) -> str:
    """``⟨U+200B⟩``: how an invisible character is shown."""
    return f"⟨U+{ord(c):04X}⟩"


def char_name(c: str) -> str:
    if 0xE0020 <= ord(c) <= 0xE007E:
        return f"TAG {chr(ord(c) - 0xE0000)!r}"
    try:
        return unicodedata.name(c)
    except ValueError:
        return {"Cc": "control", "Cn": "unassigned", "Co": "private use", "Cs": "surrogate"}.get(
            unicodedata.category(c), "format"
        )


@cache
def _span(c: str) -> str:
    return f'<span class="inv" title="{char_name(c)}">{char_label(c)}</span>'


def escape_visible(text: str) -> str:
    """``text`` HTML-escaped with every invisible character shown as a marked escape."""
    return sub_invisible(html.escape(text, quote=False), _span)


def plain_visible(text: str) -> str:
    """``text`` HTML-escaped with invisible characters as plain escapes (for titles)."""
    return sub_invisible(html.escape(text), char_label)


#: A start or end tag of serialised (sanitised) HTML: attribute values are double-quoted.
_TAG = re.compile(r'<[^>"]*(?:"[^"]*"[^>"]*)*>')


def mark_invisible_html(fragment: str) -> str:
    """Sanitised HTML with invisible characters shown: marked spans in text, plain escapes
    inside tags (where markup cannot go)."""
    if not candidate_pattern().search(fragment):
        return fragment
    out, pos = [], 0
    for m in _TAG.finditer(fragment):
        out.append(sub_invisible(fragment[pos : m.start()], _span))
        out.append(sub_invisible(m.group(), char_label))
        pos = m.end()
    out.append(sub_invisible(fragment[pos:], _span))
    return "".join(out)


def open_details(fragment: str) -> str:
    """Sanitised HTML with every ``<details>`` open: a collapsed section is content a checker
    might never expand."""
    if "<details" not in fragment:
        return fragment

    def one(m: re.Match) -> str:
        tag = m.group()
        if re.match(r"<details[\s>]", tag) and not re.match(r"<details\s+open[\s>=]", tag):
            return "<details open" + tag[len("<details") :]
        return tag

    return _TAG.sub(one, fragment)


def invisible_note(counts: Counter, where: str = "this file") -> str:
    """A notice counting the invisible characters (empty if there are none)."""
    if not counts:
        return ""
    total = sum(counts.values())
    kinds = ", ".join(f"{char_label(c)} {char_name(c)} ×{n:,}" for c, n in counts.most_common(12))
    more = f", and {len(counts) - 12} other kinds" if len(counts) > 12 else ""
    return (
        f'<p class="note warn" id="invisible">{total:,} invisible or control character(s) in '
        f"{html.escape(where)}, shown as marked escapes: {html.escape(kinds + more)}.</p>"
    )


# --- the notice -----------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 10_240 else f"{n / 1024:,.1f} KiB"


def notice_html(items: list[Omitted]) -> str:
    """The "not shown above" notice: a summary line and every item, escaped, collapsible."""
    if not items:
        return ""
    total = sum(i.size for i in items)
    kinds = Counter(i.what.split(" (")[0] for i in items)
    summary = ", ".join(f"{n} × {k}" for k, n in kinds.most_common())
    out = [
        '<section class="omitted" id="omitted">',
        f'<p class="note warn"><strong>{len(items):,} part(s) of this file, '
        f"{_size(total)}, are not shown in the preview below but are released with it:"
        f"</strong> {html.escape(summary)}. Open each to see it (escaped); the raw view "
        "shows every byte.</p>",
        "<details open><summary>What the preview leaves out</summary><ol>",
    ]
    for item in items[:MAX_ITEMS]:
        out.append(
            f'<li class="omitted-item"><details><summary>{html.escape(item.where)}: '
            f"{html.escape(item.what)} · {_size(item.size)}</summary>"
        )
        if item.image:
            out.append(f'<img class="preview" src="{html.escape(item.image)}" alt="">')
        if item.text:
            shown = item.text[:ITEM_CHARS]
            out.append(f"<pre>{escape_visible(shown)}</pre>")
            if len(item.text) > ITEM_CHARS:
                rest = utf8_len(item.text[ITEM_CHARS:])
                out.append(f'<p class="meta">… {_size(rest)} more: see the raw view.</p>')
        out.append("</details></li>")
    out.append("</ol>")
    if len(items) > MAX_ITEMS:
        rest = items[MAX_ITEMS:]
        out.append(
            f'<p class="note">… and {len(rest):,} more part(s), '
            f"{_size(sum(i.size for i in rest))}: see the raw view.</p>"
        )
    out.append("</details></section>")
    return "".join(out)


# --- HTML and Markdown sources --------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
# Every pattern here matches up to the end of the text rather than fail late: a pattern that
# scans far and then fails, once per "<", is quadratic in a hostile file.
_DECLARATION = re.compile(r"<![^-][^>]*(?:>|\Z)|<\?.*?(?:\?>|>|\Z)", re.DOTALL)
_HIDDEN_ELEMENTS = (
    "script|style|template|noscript|iframe|frame|frameset|object|embed|applet|svg|math|head|"
    "title|textarea|select|metadata|desc|foreignobject|xmp|noembed|noframes"
)
_ELEMENT = re.compile(
    rf"<({_HIDDEN_ELEMENTS})\b[^>]*(?:>|\Z).*?(?:</\1\s*>|\Z)", re.DOTALL | re.IGNORECASE
)
_VOID_HIDDEN = re.compile(r"<(meta|link|base|input)\b[^>]*(?:>|\Z)", re.IGNORECASE)
_ATTRS_TAG = re.compile(
    # unambiguous (an unquoted value has no quotes): no backtracking blow-up on unclosed tags
    # and no "<" in names or unquoted values: a failed tag costs no more than up to the next
    r"<([a-zA-Z][\w:-]*)((?:\s+[^\s=>/<]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s<>\"']+))?)+)\s*/?>"
)
_HIDDEN_ATTR = re.compile(
    r"\s(hidden|style\s*=\s*[\"'][^\"']*(?:display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0|font-size\s*:\s*0))",
    re.IGNORECASE,
)
_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*\S.*$", re.MULTILINE)
_LINK_TARGET = re.compile(r"\]\(([^)\n]*)\)")


def html_hidden_parts(source: str, where: str, *, markdown: bool = False) -> list[Omitted]:
    """The parts of an HTML (or Markdown) source that a rendered page does not show.

    Comments, declarations, elements dropped with their content (``<style>``, ``<template>``,
    ``<noscript>``, ``<script>``, …), every tag's attributes (their text is never shown), and
    for Markdown the link reference definitions and link targets.
    """
    if "<" not in source and not markdown:
        return []
    items: list[Omitted] = []
    for m in _COMMENT.finditer(source):
        items.append(Omitted(where, "HTML comment", utf8_len(m.group()), m.group()))
    for m in _DECLARATION.finditer(source):
        items.append(Omitted(where, "HTML declaration", utf8_len(m.group()), m.group()))
    without_comments = _COMMENT.sub("", source)
    for m in _ELEMENT.finditer(without_comments):
        tag = m.group(1).lower()
        items.append(
            Omitted(where, f"<{tag}> element and its content", utf8_len(m.group()), m.group())
        )
    for m in _VOID_HIDDEN.finditer(without_comments):
        items.append(
            Omitted(where, f"<{m.group(1).lower()}> element", utf8_len(m.group()), m.group())
        )
    hidden = [
        m.group() for m in _ATTRS_TAG.finditer(without_comments) if _HIDDEN_ATTR.search(m.group(2))
    ]
    if hidden:
        text = "\n".join(hidden)
        items.append(
            Omitted(where, "element marked hidden (shown in the preview)", utf8_len(text), text)
        )
    attrs = [f"<{m.group(1)}{m.group(2)}>" for m in _ATTRS_TAG.finditer(without_comments)]
    if attrs:
        text = "\n".join(attrs)
        items.append(
            Omitted(where, "tag attributes (their text is not shown)", utf8_len(text), text)
        )
    if markdown:
        defs = _LINK_DEFINITION.findall(source)
        if defs:
            text = "\n".join(defs)
            items.append(Omitted(where, "Markdown link definitions", utf8_len(text), text))
        targets = _LINK_TARGET.findall(source)
        if targets:
            text = "\n".join(targets)
            items.append(Omitted(where, "Markdown link targets", utf8_len(text), text))
    return items


# --- notebooks ------------------------------------------------------------------------------

#: The order in which nbconvert's HTML exporter picks one representation of an output.
DISPLAY_PRIORITY = (
    "application/vnd.jupyter.widget-view+json",
    "application/javascript",
    "text/html",
    "text/markdown",
    "image/svg+xml",
    "text/vnd.mermaid",
    "text/latex",
    "image/png",
    "image/jpeg",
    "text/plain",
)


def _json(value) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True)


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else _json(value)


def notebook_layout(data: bytes, raw: dict) -> list[Omitted]:
    """Bytes of the notebook's JSON layout that carry no value a renderer shows.

    A file written by Jupyter is exactly its canonical serialisation; anything else (spacing,
    key order, escapes, duplicate keys whose first value a reader drops) can carry data."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    canonical = json.dumps(raw, indent=1, ensure_ascii=False, sort_keys=True)
    if text.rstrip("\n") == canonical:
        return []
    notes = []
    dupes: list[str] = []

    def pairs(items):
        seen = set()
        for k, _v in items:
            if k in seen:
                dupes.append(k)
            seen.add(k)
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    if dupes:
        notes.append(
            f"{len(dupes)} duplicate key(s) ({', '.join(sorted(set(dupes))[:10])}): readers keep "
            "only the last value, the earlier ones are released unseen."
        )
    odd = len(re.findall(r"(?<![ \t])[ \t]+\n|\t|\r", text))
    if odd:
        notes.append(f"{odd} tab(s), carriage return(s) or line-end space run(s) between values.")
    notes.append(
        f"The file is {utf8_len(text):,} bytes; Jupyter's own layout of the same values is "
        f"{utf8_len(canonical) + 1:,}. Compare in the raw view."
    )
    return [
        Omitted(
            "file",
            "JSON layout differs from Jupyter's",
            abs(len(data) - utf8_len(canonical) - 1),
            "\n".join(notes),
        )
    ]


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def notebook_hidden_parts(raw: dict, renderable: frozenset[str]) -> list[Omitted]:
    """Everything of a (parsed, valid) v4 notebook that its HTML rendering does not show;
    ``renderable``: the output types the preview may render (one per output is picked)."""
    items: list[Omitted] = []
    meta = raw.get("metadata") or {}
    if meta:
        text = _json(meta)
        keys = ", ".join(sorted(meta)[:8])
        items.append(Omitted("notebook", f"notebook metadata ({keys})", utf8_len(text), text))
    ids: list[tuple[int, str]] = []
    for number, cell in enumerate(raw.get("cells", []), 1):
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type", "?")
        where = f"cell {number} ({kind})"
        source = _text(cell.get("source", ""))
        if cell.get("id"):
            ids.append((number, str(cell["id"])))
        if cell.get("metadata"):
            text = _json(cell["metadata"])
            items.append(Omitted(where, "cell metadata", utf8_len(text), text))
        for name, bundle in (cell.get("attachments") or {}).items():
            for mime, value in (bundle or {}).items():
                body = _text(value)
                image = None
                b64 = "".join(body.split())
                if mime in ("image/png", "image/jpeg", "image/gif") and _BASE64.fullmatch(b64):
                    image = f"data:{mime};base64,{b64}"
                items.append(
                    Omitted(
                        where,
                        f"attachment {name} ({mime})",
                        utf8_len(body),
                        "" if image else body,
                        image,
                    )
                )
        if kind == "markdown":
            items += html_hidden_parts(source, where, markdown=True)
        elif kind == "raw":
            mime = (cell.get("metadata") or {}).get("raw_mimetype", "")
            if mime.lower() in ("", "text/html"):
                items += html_hidden_parts(source, where)
            else:
                items.append(
                    Omitted(
                        where, f"raw cell source ({mime}, not rendered)", utf8_len(source), source
                    )
                )
        for o_number, output in enumerate(cell.get("outputs") or [], 1):
            items += _output_hidden_parts(output, f"{where}, output {o_number}", renderable)
    if ids:
        text = "\n".join(f"cell {n}: {i}" for n, i in ids)
        size = sum(utf8_len(i) for _, i in ids)
        items.insert(1 if meta else 0, Omitted("notebook", f"cell ids ({len(ids)})", size, text))
    return items


def _output_hidden_parts(output: dict, where: str, renderable: frozenset[str]) -> list[Omitted]:
    items: list[Omitted] = []
    if output.get("metadata"):
        text = _json(output["metadata"])
        items.append(Omitted(where, "output metadata", utf8_len(text), text))
    data = output.get("data") or {}
    if not data:
        return items
    shown = next((m for m in DISPLAY_PRIORITY if m in data and m in renderable), None)
    for mime, value in data.items():
        body = _text(value)
        if mime == shown:
            if mime in ("text/html", "text/markdown"):
                items += html_hidden_parts(body, where, markdown=mime == "text/markdown")
            continue
        items.append(Omitted(where, f"output {mime} (not shown)", utf8_len(body), body))
    return items


def notebook_strings(raw) -> Counter:
    """Invisible characters in every string of a parsed notebook."""
    counts: Counter = Counter()
    stack = [raw]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() or _has_ascii_control(value):
                counts.update(invisible_counts(value))
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return counts


_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\r(?!\n)")


def _has_ascii_control(text: str) -> bool:
    return bool(_ASCII_CONTROL.search(text))


# --- images ---------------------------------------------------------------------------------

_PNG_SHOWN = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})


def _bytes_text(data: bytes) -> str:
    """Bytes as text for an escaped view: printable ASCII as is, the rest as ⟨0xNN⟩."""
    return "".join(
        chr(b) if 32 <= b < 127 or b in (9, 10) else f"⟨0x{b:02X}⟩" for b in data[:ITEM_CHARS]
    )


def image_hidden_parts(data: bytes, mime: str) -> list[Omitted]:
    """Metadata chunks and trailing bytes of an image (released with it, never drawn)."""
    try:
        if mime == "image/png":
            return _png_parts(data)
        if mime == "image/jpeg":
            return _jpeg_parts(data)
        if mime == "image/gif":
            return _gif_parts(data)
        if mime == "image/svg+xml":
            text = data.decode("utf-8", "replace")
            return html_hidden_parts(text, "SVG source")
    except (struct.error, IndexError, ValueError):
        return [Omitted("file", "unreadable image structure (see the raw view)", len(data))]
    return []


def _trailing(data: bytes, end: int) -> list[Omitted]:
    if end >= len(data):
        return []
    rest = data[end:]
    return [Omitted("file", "bytes after the image's end marker", len(rest), _bytes_text(rest))]


def _png_parts(data: bytes) -> list[Omitted]:
    items, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            return items + _trailing(data, pos)
        if kind in _PNG_SHOWN:
            continue
        name = kind.decode("latin-1")
        text = _bytes_text(body)
        if kind == b"tEXt":
            text = body.decode("latin-1").replace("\0", " = ", 1)
        elif kind == b"zTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            text = key.decode("latin-1") + " = " + _inflate(rest[1:]).decode("latin-1")
        elif kind == b"iTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, rest = rest.partition(b"\0")
            value = _inflate(rest) if compressed else rest
            text = key.decode("latin-1") + " = " + value.decode("utf-8", "replace")
        items.append(Omitted("file", f"PNG {name} chunk", length, text))
    items.append(Omitted("file", "PNG without an end chunk (truncated?)", 0))
    return items


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompressobj().decompress(data, ITEM_CHARS * 4)
    except zlib.error:
        return b"(not valid zlib data) " + data[:256]


def _jpeg_parts(data: bytes) -> list[Omitted]:
    items, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("not a marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return items + _trailing(data, pos + 2)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the end marker
            end = data.find(b"\xff\xd9", pos + 2 + length)
            if end < 0:
                break
            return items + _trailing(data, end + 2)
        if 0xE0 <= marker <= 0xEF:
            label = body[:32].split(b"\0")[0].decode("latin-1") or "?"
            items.append(
                Omitted(
                    "file", f"JPEG APP{marker - 0xE0} segment ({label})", length, _bytes_text(body)
                )
            )
        elif marker == 0xFE:
            items.append(Omitted("file", "JPEG comment", length, _bytes_text(body)))
        pos += 2 + length
    items.append(Omitted("file", "JPEG without an end marker (truncated?)", 0))
    return items


def _gif_parts(data: bytes) -> list[Omitted]:
    items = []
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)

    def blocks(pos: int) -> tuple[bytes, int]:
        out = []
        while data[pos]:
            out.append(data[pos + 1 : pos + 1 + data[pos]])
            pos += 1 + data[pos]
        return b"".join(out), pos + 1

    while pos < len(data):
        kind = data[pos]
        if kind == 0x3B:
            return items + _trailing(data, pos + 1)
        if kind == 0x21:
            label = data[pos + 1]
            body, pos = blocks(pos + 2)
            names = {
                0xFE: "GIF comment",
                0xFF: "GIF application extension",
                0x01: "GIF plain-text extension",
            }
            if label in names:
                items.append(Omitted("file", names[label], len(body), _bytes_text(body)))
        elif kind == 0x2C:
            flags = data[pos + 9]
            pos += 10 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
            _, pos = blocks(pos + 1)
        else:
            raise ValueError("unknown GIF block")
    items.append(Omitted("file", "GIF without a trailer (truncated?)", 0))
    return items
