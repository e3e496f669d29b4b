"""What a PDF output holds beyond its picture, for the disclosure checks (pypdf).

A PDF is usually a figure (``savefig("plot.pdf")``) or a report, and its text is real text: an
NHS number in a table of a report, a name in an annotation, a count in a caption. Checked by
its metadata only, every word of it passed. :func:`read` gives the text of the document
information, every page (``extract_text``), annotations and form fields, for the identifier
and text rules; and what the checks cannot see inside: files embedded in it, JavaScript and
actions run on opening.

Bounded: at most :data:`MAX_PAGES` pages and :data:`MAX_TEXT` characters of text are read; a
file pypdf cannot parse, an encrypted one that no empty password opens, or one over the bounds
is reported as not fully checked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

MAX_PAGES = 2000
MAX_TEXT = 32 * 1024 * 1024


@dataclass
class PdfContent:
    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    embedded: list[str] = field(default_factory=list)  # names of files embedded in it
    scripts: list[str] = field(default_factory=list)  # where JavaScript or actions are
    incomplete: list[str] = field(default_factory=list)  # why parts were not read


def _strings(value) -> str:
    return "" if value is None else str(value)


def _annotations(page) -> tuple[list[str], bool]:
    """The texts of a page's annotations, and whether any of them runs an action."""
    texts, scripted = [], False
    for ref in page.get("/Annots") or []:
        annot = ref.get_object()
        texts += [_strings(annot.get(k)) for k in ("/Contents", "/T", "/RC") if annot.get(k)]
        scripted = scripted or _has_script(annot.get("/A")) or annot.get("/AA") is not None
    return texts, scripted


def _has_script(obj) -> bool:
    """An /OpenAction, /AA (additional actions) or action of kind JavaScript or Launch."""
    if obj is None:
        return False
    obj = obj.get_object()
    if not hasattr(obj, "get"):
        return False
    if obj.get("/S") in ("/JavaScript", "/Launch") or obj.get("/JS") is not None:
        return True
    return obj.get("/AA") is not None


def read(data: bytes) -> PdfContent:
    """The text and the hidden parts of the PDF in ``data`` (see the module docstring)."""
    content = PdfContent()
    try:
        import pypdf
    except ImportError:
        content.incomplete.append("pypdf is not installed here: the text was not read")
        return content
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            content.incomplete.append("it is encrypted: nothing in it could be read")
            return content
        root = reader.trailer["/Root"].get_object()
        names = root.get("/Names")
        if names is not None and names.get_object().get("/JavaScript") is not None:
            content.scripts.append("document JavaScript")
        if _has_script(root.get("/OpenAction")) or root.get("/AA") is not None:
            content.scripts.append("an action run on opening")
        if reader.metadata:
            info = "\n".join(f"{k.lstrip('/')}: {_strings(v)}" for k, v in reader.metadata.items())
            content.texts.append(("document information", info))
        content.embedded = sorted(reader.attachments)
        fields = reader.get_fields() or {}
        if fields:
            text = "\n".join(f"{k}: {_strings(f.get('/V'))}" for k, f in fields.items())
            content.texts.append(("form fields", text))
        total = 0
        for number, page in enumerate(reader.pages, start=1):
            if number > MAX_PAGES:
                content.incomplete.append(f"pages after {MAX_PAGES} were not read")
                break
            try:
                text = page.extract_text() or ""
                notes, scripted = _annotations(page)
            except Exception as exc:  # any fault of the parser on hostile bytes
                content.incomplete.append(f"page {number} could not be read ({str(exc)[:100]})")
                continue
            if scripted or page.get("/AA") is not None:
                content.scripts.append(f"page {number}")
            total += len(text) + sum(map(len, notes))
            if total > MAX_TEXT:
                content.incomplete.append(f"text after page {number - 1} was not read")
                break
            content.texts.append((f"page {number}", text))
            if notes:
                content.texts.append((f"page {number} annotations", "\n".join(notes)))
    except Exception as exc:  # pypdf raises many kinds on malformed files
        content.incomplete.append(
            f"it could not be parsed ({type(exc).__name__}: {str(exc)[:150]})"
        )
    return content
