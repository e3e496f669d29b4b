"""Tables written as LaTeX, so that the cell rules run on them as on a CSV.

A paper's tables leave a TRE as LaTeX as often as CSV: ``df.to_latex()``,
``df.style.to_latex()``, stargazer and hand-written ``tabular`` environments, in ``.tex``
files, Markdown and notebook outputs (``text/latex``). Read as prose, ``north & 4 \\\\`` is
not a table, and its small count passed unseen.

:func:`latex_tables` finds each ``tabular``, ``tabular*``, ``tabularx``, ``tabulary``,
``longtable`` and ``array`` environment and gives its rows as cells: rows end at ``\\\\`` (or
``\\tabularnewline``), cells at an unescaped ``&``; rules (``\\toprule``, ``\\hline``,
``\\cmidrule(lr){2-3}`` ...) and comments are dropped; ``\\multicolumn{n}{..}{text}`` is its
text and n-1 empty cells, ``\\multirow`` and font commands (``\\textbf{4}``) their text;
``\\%``, ``\\&``, ``\\_``, ``\\$`` and math dollars are undone. Bounded: at most
:data:`MAX_TABLES` tables of :data:`MAX_ROWS` rows each.
"""

from __future__ import annotations

import re

MAX_TABLES = 1000
MAX_ROWS = 100_000

_BEGIN = re.compile(r"\\begin\{(tabular\*?|tabularx|tabulary|longtable\*?|array)\}")
_ROW_END = re.compile(r"(?<!\\)\\\\(?:\[[^\]]*\])?|\\tabularnewline\b")
_CELL = re.compile(r"(?<!\\)&")
_COMMENT = re.compile(r"(?<!\\)%[^\n]*")
_RULES = re.compile(
    r"\\(?:toprule|midrule|bottomrule|hline|hhline\{[^}]*\}|cline\{[^}]*\}|"
    r"cmidrule(?:\([^)]*\))?\{[^}]*\}|addlinespace(?:\[[^\]]*\])?|specialrule\{[^}]*\}\{[^}]*\}"
    r"\{[^}]*\}|endhead|endfirsthead|endfoot|endlastfoot|noalign\{[^}]*\}|morecmidrules|"
    r"rowcolor(?:\[[^\]]*\])?\{[^}]*\}|caption\{[^}]*\}|label\{[^}]*\})"
)
_MULTICOLUMN = re.compile(r"\\multicolumn\{(\d+)\}\{[^}]*\}\{((?:[^{}]|\{[^{}]*\})*)\}")
_MULTIROW = re.compile(r"\\multirow\*?(?:\[[^\]]*\])?\{[^}]*\}\{[^}]*\}\{((?:[^{}]|\{[^{}]*\})*)\}")
_FONT = re.compile(
    r"\\(?:textbf|textit|emph|textrm|textsf|texttt|underline|mathrm|mathbf|text|bfseries|itshape)"
    r"\s*\{((?:[^{}]|\{[^{}]*\})*)\}"
)
_ESCAPES = {r"\%": "%", r"\&": "&", r"\_": "_", r"\$": "$", r"\#": "#", "~": " "}


def _skip_groups(text: str, count: int) -> str:
    """``text`` after its first ``count`` brace groups (a tabular's width and column spec)."""
    pos = 0
    for _ in range(count):
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text) or text[pos] != "{":
            break
        depth = 0
        while pos < len(text):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            pos += 1
            if depth == 0:
                break
    return text[pos:]


def _cell(text: str) -> list[str]:
    """One cell's text (a ``\\multicolumn`` of n is n cells, the first holding the text)."""
    span = 1
    if m := _MULTICOLUMN.search(text):
        span = max(1, min(int(m.group(1)), 100))
        text = m.group(2)
    text = _MULTIROW.sub(r"\1", text)
    for _ in range(3):  # nested font commands
        text = _FONT.sub(r"\1", text)
    for escaped, plain in _ESCAPES.items():
        text = text.replace(escaped, plain)
    text = re.sub(r"(?<!\\)\$", "", text).replace("{", "").replace("}", "")
    return [" ".join(text.split()), *[""] * (span - 1)]


def _rows(body: str) -> list[list[str]]:
    body = _RULES.sub(" ", _COMMENT.sub("", body))
    rows = []
    for raw in _ROW_END.split(body):
        if not raw.strip():
            continue
        cells = [c for part in _CELL.split(raw) for c in _cell(part)]
        if any(cells):
            rows.append(cells)
        if len(rows) >= MAX_ROWS:
            break
    return rows


def latex_tables(text: str) -> list[tuple[int, list[list[str]]]]:
    """``(first line, rows)`` of each LaTeX table in ``text`` with a header and a data row."""
    found: list[tuple[int, list[list[str]]]] = []
    if "\\begin" not in text:
        return found
    for m in _BEGIN.finditer(text):
        env = m.group(1)
        end = text.find("\\end{" + env + "}", m.end())
        body = text[m.end() : len(text) if end < 0 else end]
        body = _skip_groups(body, 2 if env in ("tabular*", "tabularx", "tabulary") else 1)
        rows = _rows(body)
        if len(rows) >= 2 and max(len(r) for r in rows) >= 2:
            width = max(len(r) for r in rows)
            found.append(
                (text.count("\n", 0, m.start()) + 1, [r + [""] * (width - len(r)) for r in rows])
            )
        if len(found) >= MAX_TABLES:
            break
    return found
