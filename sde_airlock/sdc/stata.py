"""Tables Stata prints (``tabulate``, ``table``, ``tabstat``), so that the cell rules run on
them as on a CSV.

Stata's log files (``.log``, ``.smcl`` exported as text) are how many analysts' results leave
a TRE, and its tables are ruled with ``|`` and ``---+---`` rather than aligned on spaces::

         region |      Freq.     Percent        Cum.
    ------------+-----------------------------------
          north |        120       96.77       96.77
          south |          4        3.23      100.00
    ------------+-----------------------------------
          Total |        124      100.00

:func:`stata_tables` finds each block of lines that holds a ``-+-`` rule line and whose other
lines have a ``|``: the cell left of the first ``|`` is the row label (spaces and all), the
fields right of it are split on whitespace; the header is the last line above the first rule
(a row variable's name above it, as in a two-way ``tabulate``, is dropped); rule lines are
dropped. Bounded: at most :data:`MAX_TABLES` tables.
"""

from __future__ import annotations

import re

MAX_TABLES = 1000

_RULE = re.compile(r"^\s*-+(?:\+-*)+\s*$")


_SEPARATOR = re.compile(r"(?<=\s)\|(?=\s|$)")  # a column rule, not the | of "P>|t|"


def _cells(line: str, *, header: bool = False) -> list[str]:
    """A row: the label left of the first ``|``, then the fields. Values hold no spaces;
    header names may ("Std. err.", "[95% conf. interval]"), and stand two or more spaces apart."""
    label, _, rest = line.partition("|")
    rest = _SEPARATOR.sub(" ", rest)
    fields = re.split(r"\s{2,}", rest.strip()) if header else rest.split()
    return [label.strip(), *(f for f in fields if f)]


def _table(block: list[str]) -> list[list[str]] | None:
    first_rule = next(i for i, line in enumerate(block) if _RULE.match(line))
    head = [line for line in block[:first_rule] if "|" in line]
    body = [_cells(line) for line in block[first_rule:] if "|" in line and not _RULE.match(line)]
    if not head or not body:
        return None
    header = _cells(head[-1], header=True)
    width = max(len(r) for r in body)
    if width < 2:
        return None
    header += [""] * (width - len(header))
    return [header, *(r + [""] * (width - len(r)) for r in body)]


def stata_tables(text: str) -> list[tuple[int, list[list[str]]]]:
    """``(first line, rows)`` of each Stata-ruled table in ``text``."""
    found: list[tuple[int, list[list[str]]]] = []
    if "-+-" not in text:
        return found
    lines = text.splitlines()
    i = 0
    while i < len(lines) and len(found) < MAX_TABLES:
        if "|" not in lines[i] and not _RULE.match(lines[i]):
            i += 1
            continue
        j = i
        while j < len(lines) and ("|" in lines[j] or _RULE.match(lines[j])):
            j += 1
        block = lines[i:j]
        if any(_RULE.match(line) for line in block) and (table := _table(block)):
            found.append((i + 1, table))
        i = j
    return found
