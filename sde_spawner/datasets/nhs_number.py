"""NHS numbers: the Modulus 11 check, and validation of opt-out files line by line.

An NHS number is ten digits; the tenth is a check digit over the first nine (weights 10 down
to 2, ``11 - sum % 11``, where 11 means 0 and 10 means the number is invalid). The same rule
is written once more as SQL (:data:`VALID_SQL`) so extracts can drop rows whose identifier is
not a valid NHS number without leaving DuckDB.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TEN_DIGITS = re.compile(r"[0-9]{10}")


def check_digit(first_nine: str) -> int | None:
    """The check digit of nine digits, or None when no valid number starts with them."""
    total = sum(int(d) * (10 - i) for i, d in enumerate(first_nine))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid(value: str) -> bool:
    """True for exactly ten digits whose last one is the Modulus 11 check digit."""
    if not isinstance(value, str) or not _TEN_DIGITS.fullmatch(value):
        return False
    return check_digit(value[:9]) == int(value[9])


def with_check_digit(first_nine: str) -> str | None:
    """Complete nine digits to a valid NHS number (None when none exists)."""
    check = check_digit(first_nine)
    return None if check is None else f"{first_nine}{check}"


def problem(value: str) -> str | None:
    """Why ``value`` is not a valid NHS number, or None when it is."""
    if not _TEN_DIGITS.fullmatch(value):
        return f"{value[:20]!r} is not 10 digits"
    if check_digit(value[:9]) != int(value[9]):
        return f"{value} fails the NHS number Modulus 11 check"
    return None


@dataclass(frozen=True)
class Validated:
    numbers: tuple[str, ...]  # distinct valid numbers, in file order
    errors: tuple[str, ...]  # "line N: why", one per bad line
    duplicates: int = 0


def validate_lines(lines: Iterable[str]) -> Validated:
    """Check every line of an opt-out file: one NHS number a line (spaces allowed inside, as
    printed on letters; blank lines and a trailing newline ignored). Reports EVERY bad line."""
    seen: dict[str, None] = {}
    errors: list[str] = []
    duplicates = 0
    for n, raw in enumerate(lines, start=1):
        text = raw.strip().replace(" ", "")
        if not text:
            continue
        why = problem(text)
        if why:
            errors.append(f"line {n}: {why}")
        elif text in seen:
            duplicates += 1
        else:
            seen[text] = None
    return Validated(tuple(seen), tuple(errors), duplicates)


def valid_sql(column: str) -> str:
    """A DuckDB boolean expression: ``column`` (VARCHAR) is a valid NHS number (digits taken
    arithmetically from the number: several times faster than ten substrings)."""
    number = f"TRY_CAST({column} AS BIGINT)"
    digits = [f"({number} // {10 ** (9 - i)} % 10)" for i in range(10)]
    weighted = " + ".join(f"{10 - i} * {d}" for i, d in enumerate(digits[:9]))
    return (
        f"(regexp_full_match({column}, '[0-9]{{10}}') "
        f"AND (11 - ({weighted}) % 11) % 11 = {digits[9]})"
    )
