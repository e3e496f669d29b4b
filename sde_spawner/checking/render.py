"""Safe previews of exported files for output checkers (pure: bytes in, HTML document out).

A checker must see exactly what would leave, without anything in the file being able to act
in the checker's browser. Every preview is a complete HTML document with no script in it:

* notebooks: nbconvert's ``basic`` template after a preprocessor that keeps only inert output
  types (SVG becomes an ``<img>`` of a data: URI, JavaScript/widget outputs are dropped), then
  the whole fragment is sanitised with an allowlist (ammonia via nh3; ``<script>``/``<style>``
  and friends removed with their content, every ``on*`` attribute and non-data image source
  gone);
* CSV/TSV: an escaped HTML table of the first ``max_rows`` rows with the total row count, small
  counts (1..9) highlighted;
* images (PNG, JPEG, GIF, and SVG only ever as an image): an ``<img>`` of a data: URI;
* other text: escaped ``<pre>``; anything else: a note that no preview exists.

Nothing the preview leaves out goes unsaid: every preview starts with a notice of the parts it
does not show (notebook and cell metadata, comments, raw cells, output types not picked, image
metadata chunks, …) with their sizes and an escaped view, and shows invisible characters as
``⟨U+200B⟩`` escapes (:mod:`~sde_spawner.checking.render_hidden`). The raw view
(:mod:`~sde_spawner.checking.render_raw`) shows any file's exact bytes.

The handler serving these adds ``Content-Security-Policy: sandbox; default-src 'none';
img-src data:; style-src 'unsafe-inline'`` (:data:`PREVIEW_CSP`) and the page embeds them in a
sandboxed iframe: three independent layers.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from sde_airlock.sdc import STREAM_TEXT_OVER, decode_text, open_text
from sde_spawner.checking import render_hidden as hidden
from sde_spawner.checking.render_hidden import Omitted

PREVIEW_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PREVIEW_HEADERS = {
    "Content-Security-Policy": PREVIEW_CSP,
    "X-Content-Type-Options": "nosniff",
    "Content-Type": "text/html; charset=utf-8",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
}
MAX_ROWS = 1000
MAX_TEXT_CHARS = 2_000_000
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
SMALL_COUNT = 10

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}
_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}

# --- sanitising -----------------------------------------------------------------------------

#: Elements removed together with everything inside them.
DROP_WITH_CONTENT = (
    "script",
    "style",
    "template",
    "iframe",
    "frame",
    "frameset",
    "object",
    "embed",
    "applet",
    "noscript",
    "svg",
    "math",
    "head",
    "title",
    "link",
    "meta",
    "base",
    "form",
    "textarea",
    "select",
    "button",
    "input",
)
ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd",
        "del", "details", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3",
        "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q",
        "s", "samp", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody",
        "td", "tfoot", "th", "thead", "tr", "u", "ul", "var",
    }
)  # fmt: skip
_GLOBAL_ATTRS = frozenset({"class", "id", "title", "align"})
_TAG_ATTRS = {
    "img": frozenset({"src", "alt", "width", "height"}),
    "a": frozenset({"href"}),
    "td": frozenset({"colspan", "rowspan"}),
    "th": frozenset({"colspan", "rowspan"}),
    "table": frozenset({"border"}),
    "ol": frozenset({"start"}),
}
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]*$")
_SAFE_HREF = re.compile(r"^(https?://|#)", re.IGNORECASE)


def _allow_attribute(tag: str, name: str, value: str) -> bool:
    if name.lower().startswith("on"):
        return False
    if name in _GLOBAL_ATTRS:
        return True
    if name not in _TAG_ATTRS.get(tag, ()):
        return False
    if tag == "img" and name == "src":
        return bool(_DATA_IMAGE.match(value))
    if tag == "a" and name == "href":
        return bool(_SAFE_HREF.match(value.strip()))
    return True


def sanitize_html(fragment: str) -> str:
    """An HTML fragment reduced to inert markup (allowlisted tags and attributes only)."""
    return sanitize_html_report(fragment)[0]


_REPORTED_ELEMENTS = re.compile(
    r"<\s*(script|iframe|object|embed|applet|svg|form)\b", re.IGNORECASE
)
_START_TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9-]*)(\s[^<>]*)?>")
_EVENT_ATTRIBUTE = re.compile(r"""(?:^|[\s"'/])on[a-zA-Z]+\s*=""")
_IMG_SRC = re.compile(r"""\ssrc\s*=\s*["']?\s*([^"'\s>]*)""", re.IGNORECASE)


def _removal_report(fragment: str) -> dict[str, int]:
    """What active content a fragment holds, for the note above its preview.

    Only the note: what is *removed* is decided by the sanitiser's allowlist, not by these
    patterns, so a miscount can make the note wrong but never lets anything through.
    """
    removed: dict[str, int] = {}

    def add(label: str, n: int = 1) -> None:
        removed[label] = removed.get(label, 0) + n

    for m in _REPORTED_ELEMENTS.finditer(fragment):
        add(f"<{m.group(1).lower()}> element")
    for m in _START_TAG.finditer(fragment):
        attrs = m.group(2) or ""
        if handlers := len(_EVENT_ATTRIBUTE.findall(attrs)):
            add("event-handler attribute", handlers)
        if m.group(1).lower() == "img":
            src = _IMG_SRC.search(attrs)
            if src and not src.group(1).lower().startswith("data:image/"):
                add("external image")
    return removed


_CLEANER = None


def _cleaner():
    global _CLEANER
    if _CLEANER is None:
        import nh3

        _CLEANER = nh3.Cleaner(
            tags=set(ALLOWED_TAGS),
            clean_content_tags=set(DROP_WITH_CONTENT),
            attributes={"*": set(_GLOBAL_ATTRS), **{t: set(a) for t, a in _TAG_ATTRS.items()}},
            attribute_filter=_filter_attribute,
            url_schemes={"http", "https", "data"},
            strip_comments=True,
            link_rel="noopener noreferrer",
        )
    return _CLEANER


def _filter_attribute(tag: str, name: str, value: str) -> str | None:
    return value if _allow_attribute(tag, name, value) else None


def sanitize_html_report(fragment: str) -> tuple[str, dict[str, int]]:
    """:func:`sanitize_html` plus what active content was removed (for the checker to know).

    The sanitiser is ammonia (through ``nh3``, the successor bleach's maintainers point to):
    an allowlist of inert tags and attributes; ``<script>``, ``<style>``, ``<svg>`` and the
    like go with their content; every ``on*`` attribute and every image source that is not a
    ``data:`` image is dropped; comments are stripped.
    """
    return _cleaner().clean(fragment), _removal_report(fragment)


# --- the result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    kind: str  # notebook | table | image | text | binary | error
    summary: str  # one line for the request page, e.g. "1,204 rows x 6 columns"
    html: str  # a complete HTML document without any script
    omitted: tuple[Omitted, ...] = ()  # what the preview does not show (listed in its notice)
    invisible: int = 0  # invisible or control characters (shown as escapes)


def kind_of(path: str) -> str:
    ext = PurePosixPath(path).suffix.lower()
    if ext == ".ipynb":
        return "notebook"
    if ext in TABLE_DELIMITERS:
        return "table"
    if ext in IMAGE_TYPES:
        return "image"
    return "text"


def render(path: str, data: bytes, *, max_rows: int = MAX_ROWS) -> Rendered:
    """The preview document of one exported file."""
    kind = kind_of(path)
    ext = PurePosixPath(path).suffix.lower()
    found = _Found()
    try:
        if kind == "notebook":
            body, summary = _notebook(data, found)
        elif kind == "table":
            body, summary = _table(data, TABLE_DELIMITERS[ext], max_rows, found)
        elif kind == "image":
            body, summary = _image(data, IMAGE_TYPES[ext], found)
        else:
            kind, body, summary = _text_or_binary(data, found)
    except PreviewError as exc:
        kind, summary = "error", str(exc)
        body = (
            f'<p class="note error">No preview: {html.escape(str(exc))}. '
            "The raw view shows the file's bytes.</p>"
        )
    head = hidden.notice_html(found.omitted) + hidden.invisible_note(found.invisible)
    invisible = sum(found.invisible.values())
    return Rendered(
        kind,
        summary,
        _document(path, kind, summary, head + body),
        tuple(found.omitted),
        invisible,
    )


@dataclass
class _Found:
    """What a preview found it does not (or not plainly) show, for its notices."""

    omitted: list[Omitted] = field(default_factory=list)
    invisible: Counter = field(default_factory=Counter)


class PreviewError(ValueError):
    pass


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; padding: 12px; color: #1b1f24;
       background: #fff; }
.meta { color: #57606a; margin: 0 0 10px; font-size: 13px; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; }
.note.error { background: #ffebe9; border-color: #ff8182; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: 8px;
      margin: 0; font: 12.5px/1.4 ui-monospace, monospace; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
th { background: #f6f8fa; position: sticky; top: 0; }
td.small { background: #ffd8b5; font-weight: 600; }
td.rownum { color: #8c959f; background: #f6f8fa; }
img { max-width: 100%; height: auto; }
img.preview { border: 1px solid #d0d7de; background:
  repeating-conic-gradient(#eee 0 25%, #fff 0 50%) 0 0 / 16px 16px; }
.cell { margin: 0 0 10px; }
.input_prompt, .prompt { color: #8c959f; font: 12px ui-monospace, monospace; }
.input_area { border-left: 3px solid #0969da; }
.output_area { border-left: 3px solid #d0d7de; padding-left: 6px; margin-top: 4px; }
.output_stderr pre { background: #ffebe9; }
.text_cell_render { padding: 2px 6px; }
.rendered_html table { margin: 4px 0; }
.anchor-link { color: #8c959f; text-decoration: none; margin-left: 6px; font-size: 12px; }
small, sub, sup { font-size: max(0.8em, 11px); }
img { min-width: 16px; min-height: 16px; }
.note.warn { background: #ffebe9; border-color: #cf222e; margin: 0 0 8px; }
.inv, .ws { background: #ffd8b5; color: #9a3412; border-radius: 3px; font: 11px ui-monospace,
            monospace; padding: 0 1px; }
.ws.trail { background: #ffebe9; }
.omitted { margin: 0 0 12px; }
.omitted ol { margin: 4px 0; padding-left: 22px; font-size: 13px; }
.omitted pre { max-height: 320px; overflow: auto; margin: 4px 0 8px; }
.ln { display: inline-block; min-width: 5ch; color: #8c959f; user-select: none;
      text-align: right; margin-right: 10px; }
pre.raw { white-space: pre-wrap; word-break: break-all; tab-size: 4; }
.nav a { margin-right: 4px; }
"""


def _pygments_css() -> str:
    try:
        from pygments.formatters import HtmlFormatter
    except ImportError:  # pragma: no cover - nbconvert depends on pygments
        return ""
    return HtmlFormatter(style="default").get_style_defs(".highlight")


def _document(path: str, kind: str, summary: str, body: str, *, raw: bool = False) -> str:
    name = hidden.escape_visible(PurePosixPath(path).name)
    title = hidden.plain_visible(PurePosixPath(path).name)
    css = _CSS + (_pygments_css() if kind == "notebook" else "")
    meta = "" if raw else f'<p class="meta">{name} · {html.escape(summary)}</p>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{css}</style></head>"
        f'<body class="preview-{kind}">{meta}{body}</body></html>'
    )


# --- notebooks ------------------------------------------------------------------------------

#: Output types shown (others, e.g. JavaScript and widget state, are dropped).
SAFE_OUTPUT_TYPES = frozenset(
    {
        "text/plain",
        "text/html",
        "text/markdown",
        "text/latex",
        "image/png",
        "image/jpeg",
        "image/gif",
        "application/json",
    }
)


def _safe_outputs(nb) -> None:
    """Keep inert output types only; an SVG output becomes an <img> of a data: URI."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") not in ("display_data", "execute_result"):
                continue
            data = output.get("data", {})
            svg = data.get("image/svg+xml")
            for key in list(data):
                if key not in SAFE_OUTPUT_TYPES:
                    del data[key]
            # nbconvert would pick SVG after HTML and Markdown, before the other types
            if svg is not None and "text/html" not in data and "text/markdown" not in data:
                text = svg if isinstance(svg, str) else "".join(svg)
                uri = "data:image/svg+xml;base64," + base64.b64encode(text.encode()).decode()
                data["text/html"] = f'<img class="preview" src="{uri}" alt="SVG output">'
            output["data"] = data


#: Notebook metadata the renderer reads (syntax highlighting); the rest is only listed.
_RENDERED_NB_METADATA = ("kernelspec", "language_info")


def _without_metadata(nb) -> None:
    """Metadata out of the renderer's sight (it is listed in the notice instead): a cell's
    ``transient.remove_source``, an output's ``isolated``, ``filenames`` or ``width: 0`` would
    otherwise make nbconvert hide the source or output it belongs to."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in _RENDERED_NB_METADATA}
    for cell in nb.cells:
        mime = cell.get("metadata", {}).get("raw_mimetype")
        cell.metadata = {"raw_mimetype": mime} if cell.cell_type == "raw" and mime else {}
        for output in cell.get("outputs", []):
            if "metadata" in output:
                output.metadata = {}


def _load_notebook(data: bytes, found: _Found | None = None):
    import nbformat
    from nbformat.v4.nbjson import JSONReader

    if len(data) > MAX_NOTEBOOK_BYTES:
        raise PreviewError(f"notebook larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PreviewError(f"not a notebook (invalid JSON: {exc})") from None
    except RecursionError:
        raise PreviewError("not a notebook (JSON nested too deeply to read)") from None
    if (
        not isinstance(raw, dict)
        or raw.get("nbformat") != 4
        or not isinstance(raw.get("cells"), list)
    ):
        raise PreviewError("not a version 4 Jupyter notebook")
    if found is not None:  # before the reader joins sources and drops transient data
        found.omitted += hidden.notebook_layout(data, raw)
        found.omitted += hidden.notebook_hidden_parts(raw, _RENDERABLE)
        found.invisible += hidden.notebook_strings(raw)
    if raw.get("nbformat_minor", 0) >= 5:
        for cell in raw["cells"]:
            if isinstance(cell, dict) and not cell.get("id"):
                cell["id"] = uuid.uuid4().hex[:8]
    nb = JSONReader().to_notebook(raw)  # multi-line sources joined, transient data dropped
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise PreviewError(f"notebook does not validate: {str(exc).splitlines()[0]}") from None
    return nb


#: The output types a preview may render (SVG as an image).
_RENDERABLE = SAFE_OUTPUT_TYPES | {"image/svg+xml"}


def _notebook(data: bytes, found: _Found) -> tuple[str, str]:
    from nbconvert import HTMLExporter

    nb = _load_notebook(data, found)
    _without_metadata(nb)
    _safe_outputs(nb)
    exporter = HTMLExporter(template_name="basic")
    body, _resources = exporter.from_notebook_node(nb)
    cells = len(nb.cells)
    outputs = sum(len(c.get("outputs", [])) for c in nb.cells if c.get("cell_type") == "code")
    cleaned, removed = sanitize_html_report(body)
    cleaned = hidden.open_details(cleaned)
    if found.invisible:  # every string of the notebook was scanned: none, nothing to mark
        cleaned = hidden.mark_invisible_html(cleaned)
    note = ""
    if removed:
        what = ", ".join(f"{n} {label}(s)" for label, n in sorted(removed.items()))
        note = (
            '<p class="note">Active content was removed from this preview (it never runs here): '
            f"{html.escape(what)}. The exported file itself still contains it.</p>"
        )
    return note + cleaned, f"notebook, {cells} cells, {outputs} outputs"


# --- tables ---------------------------------------------------------------------------------


def _small(cell: str) -> bool:
    value = cell.strip()
    return value.isdigit() and 0 < int(value) < SMALL_COUNT


def _table(data: bytes, delimiter: str, max_rows: int, found: _Found) -> tuple[str, str]:
    reader = csv.reader(open_text(data), delimiter=delimiter)
    try:
        header = next(reader, [])
        rows: list[list[str]] = []
        total = 0
        width = len(header)
        for row in reader:
            total += 1
            width = max(width, len(row))
            if len(rows) < max_rows:
                rows.append(row)
    except csv.Error as exc:
        raise PreviewError(f"not a readable table (line {reader.line_num}: {exc})") from None
    _text_findings(data, found)
    esc = hidden.escape_visible
    out = ['<table class="data"><thead><tr><th></th>']
    out += [f"<th>{esc(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    small = 0
    for number, row in enumerate(rows, 1):
        out.append(f'<tr><td class="rownum">{number}</td>')
        for cell in row:
            if _small(cell):
                small += 1
                out.append(f'<td class="small">{esc(cell)}</td>')
            else:
                out.append(f"<td>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    summary = f"{total:,} rows × {width} columns"
    notes = []
    if total > len(rows):
        notes.append(f"Showing the first {len(rows):,} of {total:,} rows.")
    if small:
        notes.append(f"{small} cell(s) with counts below {SMALL_COUNT} are highlighted.")
    head = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return head + "".join(out), summary


def table_row_count(data: bytes, delimiter: str = ",") -> int:
    """Data rows (after the header) of a CSV/TSV file."""
    reader = csv.reader(open_text(data), delimiter=delimiter)
    next(reader, None)
    return sum(1 for _ in reader)


# --- images and text ------------------------------------------------------------------------


def _image(data: bytes, mime: str, found: _Found) -> tuple[str, str]:
    magic = _MAGIC.get(mime)
    if magic and not data.startswith(magic):
        raise PreviewError(f"the file's content is not {mime} (its name says it is)")
    if mime == "image/svg+xml" and b"<svg" not in data[:4096].lower():
        raise PreviewError("the file's content is not SVG")
    found.omitted += hidden.image_hidden_parts(data, mime)
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    note = ""
    if mime == "image/svg+xml":
        note = '<p class="note">SVG is shown as an image only; anything active in it is inert.</p>'
    return f'{note}<img class="preview" src="{uri}" alt="image preview">', f"{mime}"


_TEXT_CHUNK = 8 * 1024 * 1024


def _text_findings(data: bytes, found: _Found) -> None:
    """Invisible characters of a whole text file (decoded as the preview decodes it, in
    pieces for big files), a byte-order mark, and spaces or tabs at line ends."""
    if data.startswith(b"\xef\xbb\xbf"):
        found.omitted.append(Omitted("file", "UTF-8 byte-order mark at the start", 3, "EF BB BF"))
    if data.isascii() and not _CONTROL_BYTES.search(data):
        text_counts = None
    elif len(data) <= STREAM_TEXT_OVER:
        text_counts = hidden.invisible_counts(decode_text(data))
    else:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8-sig")("replace")  # as open_text reads
        text_counts = Counter()
        for start in range(0, len(data), _TEXT_CHUNK):
            last = start + _TEXT_CHUNK >= len(data)
            text_counts += hidden.invisible_counts(
                decoder.decode(data[start : start + _TEXT_CHUNK], last)
            )
    if text_counts:
        found.invisible += text_counts
    runs = _TRAILING_SPACE.findall(data)
    if runs:
        found.omitted.append(
            Omitted(
                "file",
                f"spaces or tabs at the end of {len(runs):,} line(s) (marked in the raw view)",
                sum(len(r.rstrip(b"\r")) for r in runs),
            )
        )


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
#: From the start of a run only (lookbehind): a long run of spaces mid-line costs O(run).
_TRAILING_SPACE = re.compile(rb"(?<![ \t])[ \t]+\r?$", re.MULTILINE)


def _text_or_binary(data: bytes, found: _Found) -> tuple[str, str, str]:
    if b"\x00" in data[:8192]:
        return (
            "binary",
            '<p class="note">Binary file: no preview. Ask the requester for a reviewable '
            "format; the raw view shows its bytes.</p>",
            f"binary, {len(data):,} bytes",
        )
    _text_findings(data, found)
    text = decode_text(data)
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    shown = text[:MAX_TEXT_CHARS]
    note = ""
    if len(text) > MAX_TEXT_CHARS:
        note = f'<p class="note">Showing the first {MAX_TEXT_CHARS:,} characters.</p>'
    return "text", f"{note}<pre>{hidden.escape_visible(shown)}</pre>", f"text, {lines:,} lines"
