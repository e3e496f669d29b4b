"""Safe previews: nothing in an exported file can act in a checker's browser."""

from __future__ import annotations

import base64
import re
import struct
import zlib

import nbformat
import pytest
from bs4 import BeautifulSoup

from sde_spawner.checking import render

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
