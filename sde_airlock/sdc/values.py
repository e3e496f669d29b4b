"""Values and names the disclosure checks recognise: numbers, counts, identifiers of people.

Pure and shared by the table, text and document checks (:mod:`sde_airlock.sdc`).
Identifiers are found by *value* wherever they are in a file, with the rule id of each kind:

===================  =====================================================================
rule                 a value that is
===================  =====================================================================
``nhs_number``       ten digits with a valid Modulus 11 check digit, with any spacing or
                     hyphens (``943 476 5919``, ``943-476-5919``, ``943  4765919.``), or
                     grouped 3-3-4 with dots or slashes (``943.476.5919``)
``postcode``         a full UK postcode (``SW1A 1AA``, ``SW1A  1AA``, ``sw1a1aa``)
``email``            an e-mail address (bounded pattern, linear time)
``phone``            a UK telephone number (``07700 900123``, ``+44 20 7946 0958``,
                     ``(01632) 960123``)
``date_of_birth``    a date next to words that name it a birth date (``DOB: 12/03/1954``,
                     ``born 1954-03-12``); columns of them are found by name or by values
                     (:func:`looks_like_birth_dates`)
===================  =====================================================================

and by column *name* (:func:`identifier_rule_of_column`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import date

#: Cells that hold no value: blanks and the usual suppression markers.
MISSING = frozenset(
    {"", "na", "n/a", "nan", "none", "null", "-", "*", "**", "..", ":", "c", "x", "[c]", "[x]",
     "[z]", "suppressed", "redacted", "<5", "<10", "< 5", "< 10", "<=5", "<=10"}
)  # fmt: skip
#: The markers among them that say "a value was held back" (blank aside).
SUPPRESSED = MISSING - {"", "na", "n/a", "nan", "none", "null", "-", ":", "[z]"}

_INT = re.compile(r"^[+-]?\d{1,3}(,\d{3})+$|^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?%?$")
_INT_FLOAT = re.compile(r"^[+-]?\d+\.0+$")


def as_int(text: str) -> int | None:
    """The integer a cell holds (``1,234``, ``12``, ``12.0`` as pandas writes counts of a
    float column), else None."""
    t = text.strip()
    if _INT.match(t):
        return int(t.replace(",", ""))
    if _INT_FLOAT.match(t):
        return int(float(t))
    return None


#: "n (%)" cells of a descriptive table (Table 1): a count with its share beside it,
#: ``4 (2.0)``, ``4 (3.2%)``, ``1,204 [55.1%]``, ``4/120 (3.3%)``. The share is one number:
#: ``54 (40-60)`` (a median and its range) is not a count.
_COUNT_SHARE = re.compile(
    r"^([+-]?\d{1,3}(?:,\d{3})+|[+-]?\d+)\s*(?:/\s*[\d,]+\s*)?"
    r"[(\[]\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*%?\s*[)\]]$"
)


def count_with_share(text: str) -> int | None:
    """The count of an "n (%)" cell (``4 (2.0%)`` is 4), else None."""
    m = _COUNT_SHARE.match(text.strip())
    return int(m.group(1).replace(",", "")) if m else None


def as_count(text: str) -> int | None:
    """The count a cell of a count column holds: an integer (:func:`as_int`) or the count of
    an "n (%)" cell (:func:`count_with_share`)."""
    n = as_int(text)
    return count_with_share(text) if n is None else n


def is_numeric(text: str) -> bool:
    t = text.strip()
    return bool(_INT.match(t) or _FLOAT.match(t))


def is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING


def is_suppressed(text: str) -> bool:
    return text.strip().lower() in SUPPRESSED


def tokens(name: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return {t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t}


# --- identifiers by column name ----------------------------------------------------------------

_NAME_RULES = (
    ("nhs_number", re.compile(r"^(nhs_?(no|num|number)?|chi(_?(no|number))?)$")),
    (
        "date_of_birth",
        re.compile(
            r"^(dob|d_o_b|date_?of_?birth|birth_?(date|dt|day)|born(_?(on|date))?|"
            r"birthdate)$"
        ),
    ),
    ("postcode", re.compile(r"^(post_?code|postal_?code|zip(_?code)?|pcd)$")),
    ("email", re.compile(r"^(e_?mail|email_?address|mail_?address)$")),
    ("phone", re.compile(r"^(phone|tel|telephone|mobile|phone_?(no|number)|mobile_?(no|number))$")),
    (
        "identifier",
        re.compile(
            r"^(mrn|hospital_?(no|number)|"
            r"(patient|person|subject|participant|pseudo|study|client|member|individual|"
            r"record|case|encounter|episode|admission|visit|sample|specimen)_?(id|key|no|number)|"
            r"pid|eid|dod|date_?of_?death|death_?date|"
            r"address(_?line_?\d)?|street|name|full_?name|first_?name|last_?name|surname|"
            r"forenames?|given_?name|ni_?(no|number)|national_?insurance(_?(no|number))?)$"
        ),
    ),
)


def normalised_name(name: str) -> str:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def identifier_rule_of_column(name: str) -> str | None:
    """The identifier rule a column's name falls under (``nhs_number``, ``date_of_birth``,
    ``postcode``, ``email``, ``phone``, or ``identifier`` for other direct identifiers)."""
    norm = normalised_name(name)
    for rule, pattern in _NAME_RULES:
        if pattern.match(norm):
            return rule
    return None


# --- identifiers by value ----------------------------------------------------------------------


def valid_nhs_number(digits: str) -> bool:
    """A 10-digit NHS number with a valid modulus-11 check digit."""
    if len(digits) != 10 or not digits.isdigit() or len(set(digits)) == 1:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(digits[9])


#: Ten digits with up to two spaces, tabs or hyphens between any two, or grouped 3-3-4 with
#: dots or slashes (``943.476.5919``: only in that grouping, so that a float's decimals are
#: not read as one); not inside a longer run of digits. A trailing full stop, comma or bracket
#: is punctuation, not part of the number.
_NHS = re.compile(r"(?<![\d])(?:\d(?:[ \t\-]{0,2}\d){9}|\d{3}([./])\d{3}\1\d{4})(?![\d])")
_SEPARATORS = re.compile(r"[ \t\-./]")
_POSTCODE = re.compile(
    r"\b(?:GIR[ \t]{0,3}0AA|[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]?[ \t]{0,3}\d[ABD-HJLNP-UW-Z]{2})\b",
    re.IGNORECASE,
)
#: Bounded repeats (RFC 5321 lengths) keep matching linear: with ``+`` a long run such as
#: ``a@a.a.a.…`` costs quadratic time, a denial of service on the checks.
_EMAIL = re.compile(
    r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"
)
#: UK numbers: +44 or 0, then ten digits of a geographic (1, 2), non-geographic (3) or mobile
#: (7) number, in the usual groupings with spaces, hyphens or a bracketed area code.
_PHONE = re.compile(
    r"(?<![\d+])(?:\+44[ \t\-]?(?:\(0\)[ \t]?)?|\(0|0)([1237](?:[ \t\-\)]{0,2}\d){9})(?![\d])"
)
_DATE = (
    r"(?:\d{1,2}[/.\-]\d{1,2}[/.\-](?:19|20)\d{2}|(?:19|20)\d{2}-\d{1,2}-\d{1,2}|"
    r"\d{1,2}(?:st|nd|rd|th)?[ \t]+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*"
    r"\.?,?[ \t]+(?:19|20)\d{2})"
)
_DOB = re.compile(
    r"\b(?:d\.?o\.?b\.?|date[ \t]+of[ \t]+birth|birth[ \t_\-]?date|born(?:[ \t]+on)?)"
    r"[^\w\n]{0,6}" + _DATE,
    re.IGNORECASE,
)

IDENTIFIER_KINDS = {
    "nhs_number": "NHS number",
    "postcode": "full UK postcode",
    "email": "e-mail address",
    "phone": "UK telephone number",
    "date_of_birth": "date of birth",
}
_CHEAP_DIGITS = re.compile(r"\d")


#: Every kind's exact pattern: what :func:`identifiers_in` counts.
_EXACT = (
    ("nhs_number", _NHS),
    ("postcode", _POSTCODE),
    ("email", _EMAIL),
    ("phone", _PHONE),
    ("date_of_birth", _DOB),
)
#: One pass over large text with RE2 (linear time, no backtracking) finds *candidates*: a
#: superset of what the exact patterns match (their bodies without the look-arounds, the
#: ``@`` of an e-mail, the words of a birth date). No pattern matches across a line end, so
#: the exact patterns are then run over each line that holds a candidate, and the counts are
#: exactly those of a scan of the whole text.
_CANDIDATES = (
    r"\d(?:[ \t\-]{0,2}\d){9}|\d{3}[./]\d{3}[./]\d{4}"
    r"|(?i:GIR[ \t]{0,3}0AA|[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]?[ \t]{0,3}\d[ABD-HJLNP-UW-Z]{2})"
    r"|@"
    r"|(?:\+44[ \t\-]?(?:\(0\)[ \t]?)?|\(0|0)[1237](?:[ \t\-\)]{0,2}\d){9}"
    r"|(?i:d\.?o\.?b|date[ \t]+of[ \t]+birth|birth|born)"
)
FAST_SCAN_OVER = 64 * 1024

try:  # google-re2: optional; without it large text is scanned with ``re`` alone (slower)
    import re2 as _re2

    _CANDIDATE_RE = _re2.compile(_CANDIDATES)
except ImportError:  # pragma: no cover - the hub installs it; a workspace may not
    _CANDIDATE_RE = None


def _exact_count(text: str, found: dict[str, int]) -> None:
    # No digit: no NHS number, postcode, telephone number or date; e-mails only.
    kinds = _EXACT if _CHEAP_DIGITS.search(text) else _EXACT[2:3]
    for rule, pattern in kinds:
        for m in pattern.finditer(text):
            if rule == "nhs_number" and not valid_nhs_number(_SEPARATORS.sub("", m.group(0))):
                continue
            if rule == "phone" and len(re.sub(r"\D", "", m.group(1))) != 10:
                continue
            found[rule] = found.get(rule, 0) + 1


#: Spaces and dashes word processors and spreadsheets put between digit groups (no-break,
#: thin, figure and narrow no-break spaces; hyphen, non-breaking hyphen, figure, en and em
#: dashes, minus), read as the ASCII space and hyphen the patterns know.
_LOOKALIKES = str.maketrans(
    {
        **dict.fromkeys(["\u00a0", "\u2007", "\u2009", "\u200a", "\u202f", "\u3000"], " "),
        **dict.fromkeys(["\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2212"], "-"),
    }
)


def normalised_text(text: str) -> str:
    """``text`` as the identifier patterns read it: look-alike spaces and dashes made ASCII,
    then Unicode compatibility forms folded (NFKC: full-width digits and at signs). The same
    length per character is not kept; only counts are reported. ASCII text is returned as is."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text.translate(_LOOKALIKES))


def identifiers_in(text: str) -> dict[str, int]:
    """``{rule: count}`` of the identifiers of people in ``text`` (after
    :func:`normalised_text`)."""
    text = normalised_text(text)
    found: dict[str, int] = {}
    if _CANDIDATE_RE is None or len(text) <= FAST_SCAN_OVER:
        _exact_count(text, found)
        return found
    done = -1
    for cand in _CANDIDATE_RE.finditer(text):
        if cand.start() < done:
            continue  # its line was counted
        start = text.rfind("\n", 0, cand.start()) + 1
        end = text.find("\n", cand.end())
        end = len(text) if end < 0 else end
        _exact_count(text[start:end], found)
        done = end
    return found


def exact_identifiers_in(text: str) -> dict[str, int]:
    """The counts of :func:`identifiers_in` by the exact patterns alone, over the whole text
    (what the fast scan must equal; the tests compare them)."""
    found: dict[str, int] = {}
    _exact_count(normalised_text(text), found)
    return found


def merge_counts(into: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v
    return into


_ISO = re.compile(r"^((?:19|20)\d{2})-(\d{1,2})-(\d{1,2})(?:[ T].*)?$")
_DMY = re.compile(r"^(\d{1,2})[/.](\d{1,2})[/.]((?:19|20)\d{2})$")


def full_date(text: str) -> date | None:
    """A day-precise date (ISO ``1954-03-12`` or British ``12/03/1954``), else None."""
    t = text.strip()
    m = _ISO.match(t)
    try:
        if m:
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        m = _DMY.match(t)
        if m:
            return date(int(m.group(3)), int(m.group(2)), int(m.group(1)))
    except ValueError:
        return None
    return None


def looks_like_birth_dates(values: Iterable[str], today: date | None = None) -> bool:
    """A column of day-precise dates, all different, most at least 16 years back: dates of
    birth (a daily series of recent events is not)."""
    today = today or date.today()
    dates = [full_date(v) for v in values if v.strip()]
    if len(dates) < 5 or any(d is None for d in dates):
        return False
    if len(set(dates)) < 0.9 * len(dates):
        return False
    old = sum(1 for d in dates if (today - d).days > 16 * 365)  # type: ignore[operator]
    return old >= 0.8 * len(dates)
