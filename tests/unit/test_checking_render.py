"""Safe previews: nothing in an exported file can act in a checker's browser."""

from __future__ import annotations

import base64
import io
import itertools
import re
import struct
import zlib

import nbformat
import pytest
from bs4 import BeautifulSoup

from sde_spawner.checking import render, render_raw

XSS_HTML = (
    "<script>document.title='pwned'; alert(1)</script>"
    "<img src=x onerror=\"document.title='pwned'\"><b onclick=alert(2)>counts</b>"
    '<a href="javascript:alert(3)">link</a><iframe src="https://example.org"></iframe>'
    "<style>body{background:url(https://example.org/beacon)}</style>"
    "<table class=dataframe border=1><tr><th>n</th></tr><tr><td>12</td></tr></table>"
)


def tiny_png() -> bytes:
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile_notebook() -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# Results <script>alert('md')</script>\n<img src=x onerror=alert(4)>"
        ),
        nbformat.v4.new_code_cell(
            "display(HTML(evil))",
            outputs=[
                nbformat.v4.new_output(
                    "display_data",
                    data={
                        "text/html": XSS_HTML,
                        "application/javascript": "document.title='pwned'",
                        "text/plain": "<HTML object>",
                    },
                ),
                nbformat.v4.new_output(
                    "display_data",
                    data={
                        "image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg' "
                        "onload='alert(5)'><script>alert(6)</script><rect width='9' height='9'/>"
                        "</svg>"
                    },
                ),
                nbformat.v4.new_output(
                    "display_data",
                    data={"image/png": base64.b64encode(tiny_png()).decode()},
                ),
                nbformat.v4.new_output("stream", name="stdout", text="n = 42 <script>x</script>"),
            ],
        ),
    ]
    return nbformat.writes(nb).encode()


def assert_inert(document: str) -> BeautifulSoup:
    soup = BeautifulSoup(document, "html.parser")
    # <head> is ours: charset, title, style — nothing else
    assert [t.name for t in soup.head.find_all(True)] == ["meta", "title", "style"]
    for tag in (
        "script",
        "iframe",
        "object",
        "embed",
        "svg",
        "link",
        "meta",
        "base",
        "form",
        "style",
    ):
        assert soup.body.find(tag) is None, f"<{tag}> survived"
    for element in soup.find_all(True):
        for attr, value in element.attrs.items():
            assert not attr.lower().startswith("on"), f"{attr} on <{element.name}> survived"
            text = " ".join(value) if isinstance(value, list) else value
            assert "javascript:" not in text.lower()
            if element.name == "img" and attr == "src":
                assert text.startswith("data:image/"), text[:40]
    assert not re.search(r"<script", document, re.IGNORECASE)
    return soup


def test_hostile_notebook_renders_without_any_active_content():
    out = render.render("work/analysis.ipynb", hostile_notebook())
    assert out.kind == "notebook" and out.summary == "notebook, 2 cells, 4 outputs"
    soup = assert_inert(out.html)
    assert soup.title.string == "analysis.ipynb"
    text = soup.get_text()
    assert "counts" in text and "n = 42" in text and "Results" in text
    assert soup.find("table", class_="dataframe") is not None  # tables survive
    srcs = [img["src"] for img in soup.find_all("img") if img.get("src")]
    assert any(s.startswith("data:image/png;base64,") for s in srcs)
    assert any(s.startswith("data:image/svg+xml;base64,") for s in srcs)  # SVG only as image
    assert "Active content was removed" in text and "script" in text


def test_sanitize_html_allowlist():
    cleaned = render.sanitize_html(XSS_HTML + '<a href="https://ok.example/x">ok</a>')
    assert_inert(
        '<html><head><meta charset="utf-8"><title>t</title><style></style></head>'
        f"<body>{cleaned}</body></html>"
    )
    assert '<a href="https://ok.example/x">ok</a>' in cleaned
    assert "<a>link</a>" in cleaned


@pytest.mark.parametrize("rows", [0, 1, 999, 1000, 1001, 5000])
def test_csv_table_with_row_count_and_capped_rows(rows):
    data = "region,count\n" + "".join(f"r{i},{i * 10}\n" for i in range(rows))
    out = render.render("out/counts.csv", data.encode(), max_rows=1000)
    assert out.kind == "table" and out.summary == f"{rows:,} rows × 2 columns"
    soup = assert_inert(out.html)
    body_rows = soup.find("table").find("tbody").find_all("tr")
    assert len(body_rows) == min(rows, 1000)
    shown = "Showing the first 1,000 of" in soup.get_text()
    assert shown is (rows > 1000)
    assert render.table_row_count(data.encode()) == rows


def test_csv_cells_are_escaped_and_small_counts_highlighted():
    data = b'name,n\n"<script>alert(1)</script>",3\n"<img src=x onerror=alert(1)>",12\n'
    out = render.render("t.csv", data)
    soup = assert_inert(out.html)
    cells = [td.get_text() for td in soup.find_all("td")]
    assert "<script>alert(1)</script>" in cells  # shown as text
    assert [td.get_text() for td in soup.find_all("td", class_="small")] == ["3"]
    assert "1 cell(s) with counts below 10" in soup.get_text()


def test_tsv_uses_tabs():
    out = render.render("t.tsv", b"a\tb\n1\t2\n")
    assert out.summary == "1 rows × 2 columns"


def test_images_are_data_uris_and_svg_is_only_ever_an_image():
    png = tiny_png()
    out = render.render("fig.png", png)
    soup = assert_inert(out.html)
    assert soup.find("img", class_="preview")["src"] == (
        "data:image/png;base64," + base64.b64encode(png).decode()
    )
    svg = (
        b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'><script>alert(2)</script></svg>"
    )
    out = render.render("fig.svg", svg)
    soup = assert_inert(out.html)
    assert soup.find("img")["src"].startswith("data:image/svg+xml;base64,")
    assert out.kind == "image"


def test_content_that_is_not_what_its_name_says_gets_no_preview():
    out = render.render("fig.png", b"<html><script>alert(1)</script>")
    assert out.kind == "error" and "not image/png" in out.summary
    assert_inert(out.html)
    out = render.render("nb.ipynb", b"{not json")
    assert out.kind == "error" and "invalid JSON" in out.summary
    out = render.render("nb.ipynb", b'{"nbformat": 3, "cells": []}')
    assert out.kind == "error" and "version 4" in out.summary


def test_text_is_escaped_and_binary_is_not_shown():
    out = render.render("notes/readme.md", b"# Notes\n<script>alert(1)</script>\n")
    assert out.kind == "text" and out.summary == "text, 2 lines"
    soup = assert_inert(out.html)
    assert "<script>alert(1)</script>" in soup.find("pre").get_text()
    out = render.render("page.html", b"<body onload=alert(1)>hi</body>")
    assert_inert(out.html)  # HTML files are shown as their source text
    out = render.render("model.pkl", b"\x80\x04\x95\x00\x00binary")
    assert out.kind == "binary" and "No preview" not in out.html
    assert "Binary file" in out.html


def test_notebook_without_cell_ids_renders_without_warnings():
    raw = (
        b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": ['
        b'{"cell_type": "markdown", "metadata": {}, "source": ["# A\\n", "b"]}]}'
    )
    out = render.render("old.ipynb", raw)
    assert out.kind == "notebook" and "<h1" in out.html


def test_preview_headers():
    assert render.PREVIEW_HEADERS["Content-Security-Policy"] == (
        "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    )
    assert render.PREVIEW_HEADERS["X-Content-Type-Options"] == "nosniff"


HOSTILE_FRAGMENTS = [
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<img src="data:text/html,<script>alert(1)</script>">',
    "<img src=x onerror=alert(1)>",
    "<IMG SRC=x OnErRoR=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg onload="alert(1)">',
    "<math><mtext><script>alert(1)</script></mtext></math>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="javascript:alert(1)"></object><embed src="x.swf">',
    '<form action="https://evil.example"><input name=q><button>go</button></form>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    '<base href="https://evil.example/"><link rel=stylesheet href="https://evil.example/s.css">',
    '<div style="background:url(https://evil.example/beacon)">x</div>',
    '<style>@import "https://evil.example/x.css";</style>',
    "<p><!--<img src=x onerror=alert(1)>--></p>",
    '<details open ontoggle="alert(1)"><summary>s</summary></details>',
    '<table background="https://evil.example/b.png"><tr><td>1</td></tr></table>',
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
]


@pytest.mark.parametrize("fragment", HOSTILE_FRAGMENTS)
def test_known_xss_and_beacon_vectors_come_out_inert(fragment):
    cleaned = render.sanitize_html(fragment)
    assert_inert(
        '<html><head><meta charset="utf-8"><title>t</title><style></style></head>'
        f"<body>{cleaned}</body></html>"
    )
    lowered = cleaned.lower()
    assert "evil.example" not in lowered  # nothing that would make the browser fetch
    assert "style=" not in lowered and "background=" not in lowered


def test_a_notebook_nested_too_deeply_is_an_error_page_not_a_crash():
    deep = b'{"cells": [{"cell_type": "markdown", "source": ' + b"[" * 100_000 + b"]" * 100_000
    out = render.render("deep.ipynb", deep + b"}]}")
    assert out.kind == "error" and "nested too deeply" in out.summary
    assert_inert(out.html)


# --- what a preview leaves out is listed, invisible characters are shown --------------------

SECRETS = {
    "nb-meta": "NBMETA-943-476",
    "cell-meta": "CELLMETA-5919",
    "comment": "COMMENT-NHS-123",
    "template": "TEMPLATE-SECRET",
    "noscript": "NOSCRIPT-SECRET",
    "style": "STYLE-SECRET",
    "raw": "RAWCELL-SECRET",
    "custom": "CUSTOMMIME-SECRET",
    "plain": "PLAINTEXT-SECRET",
    "output-meta": "OUTMETA-SECRET",
    "linkdef": "LINKDEF-SECRET",
    "attachment": "ATTACHMENT-SECRET",
}


def notebook_with_hidden_parts() -> bytes:
    s = SECRETS
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "P"}, "x": s["nb-meta"]}
    )
    md = nbformat.v4.new_markdown_cell(
        f"# Visible heading\n<!-- {s['comment']} -->\n<template>{s['template']}</template>"
        f"<noscript>{s['noscript']}</noscript><style>.x{{content:'{s['style']}'}}</style>\n\n"
        f"[//]: # ({s['linkdef']})\n\nVisible text."
    )
    md.metadata = {"note": s["cell-meta"]}
    md.attachments = {"a.txt": {"text/plain": s["attachment"]}}
    raw = nbformat.v4.new_raw_cell(s["raw"], metadata={"raw_mimetype": "text/x-python"})
    code = nbformat.v4.new_code_cell(
        "show()",
        outputs=[
            nbformat.v4.new_output(
                "display_data",
                data={
                    "text/html": "<b>visible output</b>",
                    "text/plain": s["plain"],
                    "application/x-custom+json": {"v": s["custom"]},
                },
                metadata={"x": s["output-meta"]},
            )
        ],
    )
    nb.cells = [md, raw, code]
    return nbformat.writes(nb).encode()


def shown_text(soup: BeautifulSoup) -> str:
    """The page's text outside the notice of omitted parts."""
    for section in soup.select("#omitted"):
        section.extract()
    return soup.get_text()


def test_a_notebook_preview_lists_everything_it_leaves_out_escaped():
    out = render.render("hidden.ipynb", notebook_with_hidden_parts())
    soup = assert_inert(out.html)
    notice = soup.select_one("#omitted")
    assert notice is not None and "are not shown in the preview below" in notice.get_text()
    listed = notice.get_text()
    for name, secret in SECRETS.items():
        assert secret in listed, f"{name} is released but not listed"
        assert secret not in shown_text(BeautifulSoup(out.html, "html.parser")), name
    whats = {o.what.split(" (")[0] for o in out.omitted}
    assert {"notebook metadata", "cell metadata", "HTML comment", "output metadata"} <= whats
    assert {"<template> element and its content", "<noscript> element and its content"} <= whats
    assert {"raw cell source", "output text/plain", "output application/x-custom+json"} <= whats
    assert all(o.size > 0 for o in out.omitted)
    # the notice shows the parts as text: the comment's markup is escaped, not parsed
    assert "&lt;!-- COMMENT-NHS-123 --&gt;" in out.html
    assert "visible output" in shown_text(soup) and "Visible heading" in shown_text(soup)


def test_metadata_cannot_make_the_renderer_hide_a_source_or_an_output():
    nb = nbformat.v4.new_notebook()
    hidden_source = nbformat.v4.new_code_cell("secret_source = 1")
    hidden_source.metadata = {
        "transient": {"remove_source": True},
        "jupyter": {"source_hidden": True},
    }
    hidden_md = nbformat.v4.new_markdown_cell(
        "MARKDOWN-UNDER-REMOVE-SOURCE <details><summary>s</summary>COLLAPSED-TEXT</details>"
    )
    hidden_md.metadata = {"transient": {"remove_source": True}}
    isolated = nbformat.v4.new_code_cell(
        "x",
        outputs=[
            nbformat.v4.new_output(
                "display_data",
                data={"text/html": "<b>ISOLATED-OUTPUT</b>"},
                metadata={"text/html": {"isolated": True}},
            ),
            nbformat.v4.new_output(
                "display_data",
                data={"image/png": base64.b64encode(tiny_png()).decode()},
                metadata={"filenames": {"image/png": "x.png"}, "image/png": {"width": 0}},
            ),
        ],
    )
    nb.cells = [hidden_source, hidden_md, isolated]
    out = render.render("n.ipynb", nbformat.writes(nb).encode())
    soup = assert_inert(out.html)
    text = shown_text(soup)
    assert "secret_source" in text and "MARKDOWN-UNDER-REMOVE-SOURCE" in text
    assert "ISOLATED-OUTPUT" in text
    assert all(d.has_attr("open") for d in soup("details"))  # nothing collapsed
    assert any(i["src"].startswith("data:image/png") and not i.get("width") for i in soup("img"))


def test_duplicate_keys_and_odd_layout_of_a_notebook_are_reported():
    good = notebook_with_hidden_parts().decode()
    assert not [o for o in render.render("a.ipynb", good.encode()).omitted if o.where == "file"]
    smuggled = good.replace('"cells": [', '"cells": [], "cells": [', 1).replace("\n", " \t\n", 3)
    out = render.render("a.ipynb", smuggled.encode())
    (layout,) = [o for o in out.omitted if o.where == "file"]
    assert "1 duplicate key(s) (cells)" in layout.text and "tab(s)" in layout.text


INVISIBLE = "\u200b\u200d\u202e\u2066\ufeff\u00ad\u2800\ufe0f\U000e0001\U000e0041\U000e007f\x07\x1b"


def test_invisible_characters_in_text_are_shown_as_escapes_and_counted():
    data = f"visible{INVISIBLE}text\nsecond line \n".encode()
    out = render.render("notes.txt", data)
    body = BeautifulSoup(out.html, "html.parser").body
    assert out.invisible == len(INVISIBLE)
    for c in INVISIBLE:
        assert c not in out.html, f"U+{ord(c):04X} reached the page as itself"
        assert f"⟨U+{ord(c):04X}⟩" in body.select_one("pre").get_text()
    note = body.select_one("#invisible").get_text()
    assert f"{len(INVISIBLE)} invisible or control character(s)" in note
    assert "TAG 'A'" in note and "ZERO WIDTH SPACE" in note
    assert any("spaces or tabs at the end of 1 line" in o.what for o in out.omitted)
    # ordinary text: no notices at all
    plain = render.render("notes.md", "# Title\r\nSome text, tabs\tand é ü 😀.\n".encode())
    assert plain.invisible == 0 and plain.omitted == () and 'id="omitted"' not in plain.html


@pytest.mark.parametrize("name", ["table.csv", "data.json", "readme.md", "page.html"])
def test_invisible_characters_are_shown_in_every_text_kind(name):
    data = f"a,b\nx\U000e0068\U000e0069,1{chr(0x200B)}2\n".encode()
    out = render.render(name, data)
    assert out.invisible == 3
    assert "\U000e0068" not in out.html and "⟨U+E0068⟩" in out.html and "⟨U+200B⟩" in out.html


def test_invisible_characters_in_a_notebook_are_shown_in_place():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"Mean{INVISIBLE} <span title='t\u200bt'>x</span>"),
        nbformat.v4.new_code_cell(
            "print(1)\u200b",
            outputs=[nbformat.v4.new_output("stream", text="out\U000e0041\n")],
        ),
    ]
    out = render.render("inv.ipynb", nbformat.writes(nb).encode())
    assert_inert(out.html)
    assert out.invisible == len(INVISIBLE) + 3
    for c in INVISIBLE + "\u200b\U000e0041":
        assert c not in out.html
    assert 'title="t⟨U+200B⟩t"' in out.html  # inside a tag: a plain escape, markup intact


def png_with_metadata() -> bytes:
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    png = tiny_png()
    iend = png.index(b"IEND") - 4
    extra = chunk(b"tEXt", b"Comment\0PNG-TEXT-SECRET") + chunk(
        b"zTXt", b"Note\0\0" + zlib.compress(b"PNG-ZTXT-SECRET")
    )
    return png[:iend] + extra + png[iend:] + b"TRAILING-SECRET"


def test_image_metadata_chunks_and_trailing_bytes_are_listed():
    out = render.render("fig.png", png_with_metadata())
    assert out.kind == "image"
    assert_inert(out.html)
    what = {o.what: o for o in out.omitted}
    assert "PNG-TEXT-SECRET" in what["PNG tEXt chunk"].text
    assert "PNG-ZTXT-SECRET" in what["PNG zTXt chunk"].text  # decompressed for the checker
    assert what["bytes after the image's end marker"].size == len(b"TRAILING-SECRET")
    assert "TRAILING-SECRET" in out.html
    assert render.render("clean.png", tiny_png()).omitted == ()
    jpeg = (
        b"\xff\xd8\xff\xfe\x00\x10JPEG-COMMENT!\x00\xff\xe1\x00\x0aExif\x00\x00ab"
        b"\xff\xda\x00\x02\x12\x34\xff\xd9JPEG-TAIL"
    )
    jpg = {o.what: o for o in render.render("p.jpg", jpeg).omitted}
    assert "JPEG-COMMENT" in jpg["JPEG comment"].text and "JPEG APP1 segment (Exif)" in jpg
    assert jpg["bytes after the image's end marker"].text == "JPEG-TAIL"
    gif = (
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00!\xfe\x0aGIF-SECRET\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )
    assert "GIF-SECRET" in render.render("a.gif", gif).omitted[0].text
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'><!-- SVG-SECRET --><rect/></svg>"
    assert any("SVG-SECRET" in o.text for o in render.render("a.svg", svg).omitted)


# --- the raw view ---------------------------------------------------------------------------


def raw(path: str, data: bytes, **kw) -> render_raw.RawPage:
    return render_raw.raw_page(path, io.BytesIO(data), len(data), **kw)


def test_the_raw_view_shows_text_bytes_exactly_with_invisibles_marked():
    data = "tag\U000e0041 zw\u200b\ttab \r\nlatin\xe9".encode() + b"\xff\x00end"
    page = raw("notes.txt", data, mode="text")
    assert page.mode == "text" and page.pages == 1
    soup = assert_inert(page.html)
    text = soup.select_one("pre.raw").get_text()
    assert "⟨U+E0041⟩" in text and "⟨U+200B⟩" in text and "⇥" in text
    assert "⟨CR⟩" in text and "·" in text  # CR of CRLF and the space before it
    assert "latin\xe9⟨0xFF⟩⟨U+0000⟩end" in text  # é is UTF-8, 0xFF is not, NUL a control
    assert "⟨no newline at the end of the file⟩" in text
    assert "\U000e0041" not in page.html and "\u200b" not in page.html
    assert re.findall(r'<span class="ln">(\d+)</span>', page.html) == ["1", "2"]


def test_the_raw_view_of_a_binary_is_a_hex_dump_of_every_byte():
    data = png_with_metadata() + bytes(range(256)) * 600
    pages = raw("fig.png", data).pages
    assert pages == -(-len(data) // render_raw.PAGE) > 1
    dumped = b""
    for number in range(1, pages + 1):
        page = raw("fig.png", data, page=number)
        assert page.mode == "hex"
        for line in (
            BeautifulSoup(page.html, "html.parser").select_one("pre").get_text().split("\n")
        ):
            if line:
                assert int(line[:8], 16) == len(dumped)
                dumped += bytes.fromhex(line[10:59])
    assert dumped == data
    with pytest.raises(render_raw.RawError, match="pages 1 to"):
        raw("fig.png", data, page=pages + 1)
    with pytest.raises(render_raw.RawError, match="text or hex"):
        raw("fig.png", data, mode="html")


def test_text_pages_never_split_a_character_and_number_lines_on():
    line = "é😀\U000e0041 row\n"
    data = (line * (3 * render_raw.PAGE // len(line.encode()))).encode()
    first = raw("big.csv", data)
    assert first.pages >= 3
    spans, lines = [], 0
    for number in range(1, first.pages + 1):
        page = raw("big.csv", data, page=number)
        meta = BeautifulSoup(page.html, "html.parser").select_one("#raw-meta").get_text()
        start, end = (
            int(x.replace(",", "")) for x in re.search(r"bytes ([\d,]+)–([\d,]+)", meta).groups()
        )
        spans.append((start, end))
        data[start : end + 1].decode("utf-8")  # each page is whole characters
        numbers = [int(n) for n in re.findall(r'<span class="ln">(\d+)</span>', page.html)]
        assert numbers[0] in (lines, lines + 1)
        lines = numbers[-1]
        assert "\U000e0041" not in page.html and "⟨U+E0041⟩" in page.html
    assert spans[0][0] == 0 and spans[-1][1] == len(data) - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))
    assert lines == data.count(b"\n")


def test_pathological_inputs_do_not_stall_the_notices():
    """Patterns that backtrack (spaces before a line end, unclosed tags with many quoted
    attributes) would hold a preview for minutes: both finish at once."""
    import time

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("<a" + ' x="1"' * 3000),
        nbformat.v4.new_markdown_cell("<script <style <meta <!x " * 20_000),
    ]
    for name, data in [
        ("spaces.txt", b"a" + b" " * 300_000 + b"x\n"),
        ("tags.ipynb", nbformat.writes(nb).encode()),
    ]:
        start = time.monotonic()
        render.render(name, data)
        assert time.monotonic() - start < 20, name
