"""Documents in exported files: notebooks, HTML, SVG and images, read for the checks.

Pure. Everything a file carries is read, not only what a viewer shows: every cell's source
and every output of a notebook (each MIME type of a bundle, error tracebacks), hidden and
collapsed cells, attachments and metadata; the text, tables, scripts and external references
of HTML and SVG; the metadata chunks of PNG and JPEG images. :func:`notebook_parts` and
:func:`html_parts` hand the text and tables to the rules of :mod:`sde_airlock.sdc`.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterator
from html.parser import HTMLParser

from sde_airlock.sdc.core import FAIL, REVIEW, Finding, plural

# --- HTML ------------------------------------------------------------------------------------

_URL_ATTRS = frozenset({"src", "href", "xlink:href", "action", "formaction", "data", "poster",
                        "background", "srcset", "codebase", "manifest", "ping"})  # fmt: skip
_EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.\-]*:)?//", re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*['\"]?\s*((?:[a-z][a-z0-9+.\-]*:)?//[^)'\"]*)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import\s+['\"]((?:[a-z][a-z0-9+.\-]*:)?//[^'\"]+)", re.IGNORECASE)
_SCRIPT_URL = re.compile(r"^\s*(?:javascript|vbscript|data:text/html)", re.IGNORECASE)


class _HTML(HTMLParser):
    """Tables, text (everything outside tables: comments, template/noscript/style text too),
    scripts and external references of an HTML or SVG document."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.external: list[str] = []
        self._stack: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._in_script = 0

    def handle_starttag(self, tag, attrs):
        self._attrs(tag, attrs)
        if tag == "script":
            self._in_script += 1
            self.scripts.append(f"<{tag}> element")
        elif tag == "table":
            self._stack.append([])
        elif tag == "tr" and self._stack:
            self._stack[-1].append([])
        elif tag in ("td", "th") and self._stack:
            if not self._stack[-1]:
                self._stack[-1].append([])
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self._attrs(tag, attrs)
        if tag == "script":
            self.scripts.append(f"<{tag}> element")

    def _attrs(self, tag, attrs):
        for name, value in attrs:
            name = (name or "").lower()
            value = value or ""
            if name.startswith("on"):
                self.scripts.append(f"{name} handler on <{tag}>")
            elif name in _URL_ATTRS:
                if _SCRIPT_URL.match(value):
                    self.scripts.append(f"{value.split(':')[0]}: URL in <{tag} {name}>")
                elif _EXTERNAL.match(value) or (name == "srcset" and "//" in value):
                    self.external.append(value[:200])
            elif name == "style":
                self.external += [m.group(1)[:200] for m in _CSS_URL.finditer(value)]
            if name not in ("class", "id"):
                self.text.append(value)  # attribute values are carried out too

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = max(0, self._in_script - 1)
        elif tag in ("td", "th") and self._cell is not None and self._stack:
            self._stack[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._stack:
            self.tables.append(self._stack.pop())

    def handle_data(self, data):
        self.external += [m.group(1)[:200] for m in _CSS_URL.finditer(data)]
        self.external += [m.group(1)[:200] for m in _CSS_IMPORT.finditer(data)]
        if self._cell is not None:
            self._cell.append(data)
        else:
            self.text.append(data)

    def handle_comment(self, data):
        self.text.append(data)


def html_parts(document: str) -> tuple[list[list[list[str]]], str, list[str], list[str]]:
    """``(tables, text, scripts, external references)`` of an HTML or SVG document."""
    parser = _HTML()
    parser.feed(document)
    parser.close()
    return [t for t in parser.tables if t], "\n".join(parser.text), parser.scripts, parser.external


def active_content(where: str, scripts: list[str], external: list[str]) -> list[Finding]:
    out = []
    if scripts:
        out.append(
            Finding(
                "script",
                FAIL,
                where,
                f"executable content ({', '.join(sorted(set(scripts))[:4])}): outputs are "
                "data, not programs; remove it",
            )
        )
    if external:
        out.append(
            Finding(
                "external_reference",
                REVIEW,
                where,
                f"{plural(len(external), 'reference')} to other hosts "
                f"({', '.join(sorted(set(external))[:3])}): opened outside, each is a request "
                "to that host",
            )
        )
    return out


# --- notebooks -------------------------------------------------------------------------------

#: Output MIME types whose content is text the rules read as such.
_TEXT_MIME = re.compile(r"^(text/|application/(.*\+)?json$|application/javascript$)")
_HIDDEN_TAGS = frozenset({"hide-input", "hide-output", "hide-cell", "remove-input",
                          "remove-output", "remove-cell", "hidden", "hide"})  # fmt: skip
#: Notebook metadata every notebook has; anything else is listed for the checker.
_USUAL_METADATA = frozenset({"kernelspec", "language_info", "widgets", "colab", "vscode",
                             "toc", "celltoolbar", "interpreter"})  # fmt: skip
_USUAL_CELL_METADATA = frozenset(
    {"tags", "collapsed", "scrolled", "jupyter", "execution", "editable", "deletable", "trusted",
     "slideshow", "id"}
)  # fmt: skip


def joined(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def _hidden(cell: dict) -> list[str]:
    meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
    why = []
    jupyter = meta.get("jupyter") if isinstance(meta.get("jupyter"), dict) else {}
    if jupyter.get("source_hidden"):
        why.append("source hidden")
    if jupyter.get("outputs_hidden"):
        why.append("outputs hidden")
    if meta.get("collapsed") is True:
        why.append("collapsed")
    tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    why += [f"tag {t!r}" for t in tags if str(t).lower() in _HIDDEN_TAGS]
    return why


def notebook_parts(nb: dict) -> Iterator[tuple[str, str, object]]:
    """``(where, kind, content)`` for every part of a notebook, with ``kind`` one of
    ``text`` (prose and outputs: every rule), ``code`` (sources: identifiers only), ``html``,
    ``figure`` (base64 image data), ``json`` (the parsed data of a JSON output: plotly,
    vega-lite), ``finding`` (content a :class:`Finding` about the part)."""
    extra = {k: v for k, v in (nb.get("metadata") or {}).items() if k not in _USUAL_METADATA}
    if extra:
        text = json.dumps(extra, sort_keys=True, default=str)
        yield "notebook metadata", "code", text
        yield (
            "notebook metadata",
            "finding",
            Finding(
                "hidden_cell",
                REVIEW,
                "notebook metadata",
                f"metadata no viewer shows ({', '.join(sorted(extra)[:5])}; "
                f"{plural(len(text), 'byte')})",
            ),
        )
    for number, cell in enumerate(nb.get("cells") or [], 1):
        if not isinstance(cell, dict):
            continue
        where = f"cell {number}"
        kind = cell.get("cell_type")
        hidden = _hidden(cell)
        if hidden:
            yield (
                where,
                "finding",
                Finding(
                    "hidden_cell",
                    REVIEW,
                    where,
                    f"{', '.join(hidden)}: the reader of the notebook does not see this cell's "
                    "content; it was checked like the rest",
                ),
            )
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        odd = {k: v for k, v in meta.items() if k not in _USUAL_CELL_METADATA}
        if odd:
            text = json.dumps(odd, sort_keys=True, default=str)
            yield f"{where} metadata", "code", text
            yield (
                where,
                "finding",
                Finding(
                    "hidden_cell",
                    REVIEW,
                    f"{where} metadata",
                    f"cell metadata no viewer shows ({', '.join(sorted(odd)[:5])})",
                ),
            )
        source = joined(cell.get("source"))
        if kind == "markdown":
            yield f"{where} (Markdown)", "html", source  # Markdown may carry HTML
        elif kind == "raw":
            yield f"{where} (raw)", "text", source
        else:
            yield f"{where} (code)", "code", source
        attachments = cell.get("attachments") if isinstance(cell.get("attachments"), dict) else {}
        for name, bundle in attachments.items():
            size = len(json.dumps(bundle, default=str))
            yield (
                where,
                "finding",
                Finding(
                    "attachment",
                    REVIEW,
                    f"{where}, attachment {str(name)[:80]!r}",
                    f"a file attached to the cell ({plural(size, 'byte')}): it leaves with the "
                    "notebook",
                ),
            )
            if isinstance(bundle, dict):
                yield from _bundle(f"{where}, attachment {str(name)[:80]!r}", bundle)
        for output in cell.get("outputs") or []:
            if not isinstance(output, dict):
                continue
            out_where = f"{where} output"
            otype = output.get("output_type")
            if otype == "stream":
                yield out_where, "text", joined(output.get("text"))
            elif otype == "error":
                trace = "\n".join(str(x) for x in output.get("traceback") or [])
                yield (
                    out_where,
                    "text",
                    f"{output.get('ename', '')}: {output.get('evalue', '')}\n{trace}",
                )
            bundle = output.get("data")
            if isinstance(bundle, dict):
                yield from _bundle(out_where, bundle)
            if isinstance(output.get("metadata"), dict) and output["metadata"]:
                yield f"{out_where} metadata", "code", json.dumps(output["metadata"], default=str)


def _bundle(where: str, bundle: dict) -> Iterator[tuple[str, str, object]]:
    for mime, value in bundle.items():
        mime = str(mime)
        if mime.startswith("image/"):
            yield where, "figure", joined(value) if not isinstance(value, dict) else ""
            if mime == "image/svg+xml":
                yield where, "html", joined(value)
        elif mime == "text/html" or mime == "text/markdown":
            yield where, "html", joined(value)
        elif _TEXT_MIME.match(mime):
            text = value if isinstance(value, str | list) else json.dumps(value, default=str)
            yield where, "text", joined(text) if not isinstance(text, str) else text
            if mime.endswith("json") and isinstance(value, dict | list):
                # plotly, vega-lite, JSON display: the data behind the chart, as tables
                yield where, "json", value
        else:
            text = json.dumps(value, default=str)
            yield where, "code", text
            yield (
                where,
                "finding",
                Finding(
                    "hidden_cell",
                    REVIEW,
                    where,
                    f"output of type {mime[:80]!r} ({plural(len(text), 'byte')}): a viewer may "
                    "not show it; its text was checked",
                ),
            )


# --- images ----------------------------------------------------------------------------------

_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = {b"tEXt", b"zTXt", b"iTXt", b"eXIf"}
_PNG_USUAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP",
              b"pHYs", b"sBIT", b"bKGD"}  # fmt: skip


def image_metadata(data: bytes, where: str = "image") -> list[Finding]:
    """Metadata and hidden data in a PNG or JPEG: text chunks, EXIF (GPS says so), comments,
    unknown chunks and bytes after the end of the image."""
    if data.startswith(_PNG):
        return _png(data, where)
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data, where)
    return []


def _png(data: bytes, where: str) -> list[Finding]:
    pos, chunks, trailing = 8, [], 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, length))
        pos += 12 + length
        if kind == b"IEND":
            trailing = max(0, len(data) - pos)
            break
    found = []
    meta = [(k, n) for k, n in chunks if k in _PNG_TEXT or k not in _PNG_USUAL]
    if meta:
        listed = ", ".join(f"{k.decode('latin-1')} ({n} B)" for k, n in meta[:6])
        found.append(Finding("image_metadata", REVIEW, where, f"metadata chunks: {listed}"))
    if trailing:
        found.append(
            Finding(
                "image_metadata",
                FAIL,
                where,
                f"{plural(trailing, 'byte')} after the end of the image: data no viewer shows",
            )
        )
    return found


def _jpeg(data: bytes, where: str) -> list[Finding]:
    pos, segments, end = 2, [], None
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xD9:
            end = pos + 2
            break
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xDA:  # start of scan: entropy-coded data until EOI
            eoi = data.rfind(b"\xff\xd9")
            end = eoi + 2 if eoi > pos else None
            break
        if marker == 0xFE:
            segments.append("comment")
        elif marker == 0xE1 and body.startswith(b"Exif"):
            segments.append(
                "EXIF with GPS" if b"\x88\x25" in body or b"\x25\x88" in body else "EXIF"
            )
        elif 0xE2 <= marker <= 0xEF or (marker == 0xE1 and not body.startswith(b"Exif")):
            segments.append(f"APP{marker - 0xE0}")
        pos += 2 + length
    found = []
    if segments:
        status = FAIL if "EXIF with GPS" in segments else REVIEW
        found.append(
            Finding(
                "image_metadata", status, where, f"metadata: {', '.join(sorted(set(segments)))}"
            )
        )
    if end is not None and len(data) > end:
        found.append(
            Finding(
                "image_metadata",
                FAIL,
                where,
                f"{plural(len(data) - end, 'byte')} after the end of the image: data no viewer "
                "shows",
            )
        )
    return found


def decoded_image(content: str) -> bytes:
    try:
        return base64.b64decode(content, validate=False)
    except ValueError:
        return b""
