"""Cost of safe previews for output checkers (``python -m benchmarks.render``).

* notebook: :func:`sde_spawner.checking.render.render` of a synthetic analysis notebook
  (markdown, code, pandas-style HTML tables with ``<style>`` blocks, PNG outputs, one hostile
  output) against the baseline of plain nbconvert (``HTMLExporter``, ``basic`` template, no
  sanitising) of the same notebook, interleaved run by run;
* table: a CSV of ``--rows`` rows (count all, show 1,000), for the record.

The last line is ``ratio=<safe notebook preview time / plain nbconvert time>`` (the price of
sanitising; the issue's goal is a preview in well under a second for a typical notebook).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import struct
import time
import zlib

import nbformat

from sde_spawner.checking import render


def _png(width: int = 64, height: int = 48) -> bytes:
    """A small gradient PNG (a typical matplotlib figure is larger; the shape is what counts)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    pixels = b"".join(
        b"\x00" + b"".join(bytes(((x * 4) % 256, (y * 5) % 256, 128)) for x in range(width))
        for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def make_notebook(cells: int) -> bytes:
    png = base64.b64encode(_png()).decode()
    table = (
        "<style scoped>.dataframe tbody tr th {vertical-align: top;}</style>"
        '<table border="1" class="dataframe"><thead><tr><th></th><th>region</th><th>n</th>'
        "<th>mean_hba1c</th></tr></thead><tbody>"
        + "".join(
            f"<tr><th>{i}</th><td>r{i}</td><td>{100 + i}</td><td>{50 + i / 10:.1f}</td></tr>"
            for i in range(20)
        )
        + "</tbody></table>"
    )
    nb = nbformat.v4.new_notebook()
    for i in range(cells):
        nb.cells.append(nbformat.v4.new_markdown_cell(f"## Step {i}\nSome *context* for step {i}."))
        outputs = [
            nbformat.v4.new_output(
                "execute_result",
                data={"text/html": table, "text/plain": "DataFrame"},
                execution_count=i + 1,
            ),
            nbformat.v4.new_output("display_data", data={"image/png": png}),
        ]
        if i == cells // 2:
            outputs.append(
                nbformat.v4.new_output(
                    "display_data",
                    data={"text/html": "<script>alert(1)</script><img src=x onerror=alert(2)>"},
                )
            )
        nb.cells.append(
            nbformat.v4.new_code_cell(
                f"df{i} = summarise(df, step={i})\ndf{i}", outputs=outputs, execution_count=i + 1
            )
        )
    return nbformat.writes(nb).encode()


def plain_nbconvert(data: bytes) -> str:
    from nbconvert import HTMLExporter

    nb = nbformat.reads(data.decode(), as_version=4)
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)
    return body


def compare(data: bytes, runs: int) -> tuple[float, float]:
    """Median seconds of the safe preview and of plain nbconvert, interleaved run by run."""
    render.render("warm.ipynb", data)  # imports, templates
    plain_nbconvert(data)
    safe, plain = [], []
    for _ in range(runs):
        t = time.perf_counter()
        out = render.render("analysis.ipynb", data)
        safe.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_nbconvert(data)
        plain.append(time.perf_counter() - t)
    assert "<script" not in out.html
    return statistics.median(safe), statistics.median(plain)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=40, help="code cells in the notebook")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the CSV")
    args = parser.parse_args(argv)

    data = make_notebook(args.cells)
    safe_s, plain_s = compare(data, args.runs)
    print(f"notebook: {len(data) / 1024:.0f} KiB, {args.cells * 2} cells")
    print(f"  safe preview   median {safe_s * 1000:8.1f} ms")
    print(f"  plain nbconvert median {plain_s * 1000:7.1f} ms (baseline, unsanitised)")

    csv = (
        "region,n,mean\n" + "".join(f"r{i},{i},{i / 3:.2f}\n" for i in range(args.rows))
    ).encode()
    t = time.perf_counter()
    table = render.render("big.csv", csv)
    csv_s = time.perf_counter() - t
    print(f"csv: {len(csv) / 2**20:.1f} MiB, {table.summary}, preview {csv_s * 1000:.1f} ms")
    print(f"ratio={safe_s / plain_s:.3f}")


if __name__ == "__main__":
    main()
