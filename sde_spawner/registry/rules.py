"""The registry's rules as pure checks: (values) -> a list of problems, no I/O but reading a
dataset's header.

Each problem is ``(field, message)``; the message reads on its own. :mod:`sde_spawner.registry.ops`
joins them into one :class:`~sde_spawner.registry.ops.RegistryError`; ``apply`` prefixes each
with its field path in the project file. Keeping the rules here means the imperative commands
and ``apply`` cannot drift apart.
"""

from __future__ import annotations

import ast
import csv
import re
from datetime import date, datetime

from sde_spawner.containers import SLUG_RE
from sde_spawner.datasets.extract import ExtractError, parse_row_filter
from sde_spawner.registry.models import (
    FORBIDDEN_PURPOSES,
    OrganisationKind,
    Project,
    Purpose,
    Role,
)

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,62}$")
MEMORY_RE = re.compile(r"^[1-9][0-9]*(\.[0-9]+)?[kmg]$")
FILE_TYPE_RE = re.compile(r"^\.[a-z0-9]{1,10}$")
OUTPUT_POLICY_KEYS = (
    "allowed_file_types",
    "cell_threshold",
    "dof_threshold",
    "zeros_are_disclosive",
    "rounding",
    "import_required_approvals",  # checkers who must approve an import (sde_spawner.imports)
    "clipboard_out",
)

#: A problem found by a check: (field, message).
Problem = tuple[str, str]


def parse_date(value, name: str, problems: list[Problem]) -> date | None:
    """``value`` as a date (a date, or an ISO string); a problem is added when it is not."""
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    problems.append((name, f"{name} must be a date like 2026-12-31, not {value!r}"))
    return None


def username_problems(username) -> list[Problem]:
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        return [
            (
                "username",
                f"username {username!r} must be 1-63 characters: lower-case letters, digits, "
                "'.', '_', '@' or '-'",
            )
        ]
    return []


def idp_subject_problems(value) -> list[Problem]:
    """An OpenID Connect subject: 1-255 printable characters, no surrounding spaces."""
    if not isinstance(value, str) or not (0 < len(value) <= 255):
        return [("idp_subject", "idp_subject must be 1-255 characters (the provider's 'sub')")]
    if value != value.strip() or not value.isprintable():
        problem = f"idp_subject {value!r} has spaces around it or control characters"
        return [("idp_subject", problem)]
    return []


def slug_problems(value, what: str) -> list[Problem]:
    if not isinstance(value, str) or not SLUG_RE.match(value):
        return [
            (
                "slug",
                f"{what} {value!r} must be 3-40 characters: lower-case letters, digits and '-', "
                "starting with a letter",
            )
        ]
    return []


def parse_purpose(value, problems: list[Problem]) -> Purpose | None:
    if value is None:
        return None
    if str(value).lower() in FORBIDDEN_PURPOSES:
        problems.append(
            (
                "purpose",
                f"purpose {value!r} is never permitted in this environment: data may be used "
                "for the public good, not for insurance or marketing",
            )
        )
        return None
    try:
        return Purpose(value)
    except ValueError:
        allowed = ", ".join(p.value for p in Purpose)
        problems.append(("purpose", f"purpose {value!r} is not one of: {allowed}"))
        return None


def parse_role(value, problems: list[Problem], name: str = "role") -> Role | None:
    try:
        return Role(value)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        problems.append((name, f"unknown role {value!r} (one of: {allowed})"))
        return None


def parse_organisation_kind(value, problems: list[Problem]) -> OrganisationKind | None:
    if value is None:
        return None
    try:
        return OrganisationKind(value)
    except ValueError:
        allowed = ", ".join(k.value for k in OrganisationKind)
        problems.append(("kind", f"organisation kind {value!r} is not one of: {allowed}"))
        return None


def agreement_problems(signed_on, starts_on, ends_on, deletion_on) -> list[Problem]:
    """Order of an agreement's dates: signed <= start <= end <= data deletion."""
    out: list[Problem] = []
    if starts_on and ends_on and ends_on < starts_on:
        out.append(("end", f"end {ends_on} is before start {starts_on}"))
    if ends_on and deletion_on and deletion_on < ends_on:
        out.append(("delete_by", f"data-deletion date {deletion_on} is before end {ends_on}"))
    if signed_on and starts_on and signed_on > starts_on:
        out.append(
            (
                "signed",
                f"signed {signed_on} after its start {starts_on}: access cannot begin unsigned",
            )
        )
    return out


def approval_problems(project: Project, today: date | None = None) -> list[Problem]:
    """What a project lacks before it may be approved (or stay approved)."""
    today = today or date.today()
    out: list[Problem] = []
    if not project.dac_reference:
        out.append(("dac_reference", "no Data Access Committee reference"))
    if project.dac_approved_on is None:
        out.append(("dac_date", "no Data Access Committee approval date"))
    elif project.dac_approved_on > today:
        out.append(
            ("dac_date", f"Data Access Committee date {project.dac_approved_on} is in the future")
        )
    if not project.ethics_reference:
        out.append(("ethics_reference", "no ethics/HRA reference"))
    if not (project.lay_summary or "").strip():
        out.append(("lay_summary", "no lay summary"))
    if not (project.public_benefit or "").strip():
        out.append(("public_benefit", "no public-benefit statement"))
    if not (project.lay_member_name or "").strip():
        out.append(("lay_member", "no sign-off by a lay (public) member of the approval panel"))
    if project.lay_member_signed_on is None:
        out.append(("lay_member_signed", "no date of the lay member's sign-off"))
    elif project.lay_member_signed_on > today:
        out.append(
            (
                "lay_member_signed",
                f"lay member's sign-off {project.lay_member_signed_on} is in the future",
            )
        )
    return out


def output_policy_problems(policy: dict) -> list[Problem]:
    out: list[Problem] = []
    for key in policy:
        if key not in OUTPUT_POLICY_KEYS:
            out.append((key, f"unknown output policy setting {key!r}"))
    types = policy.get("allowed_file_types")
    if types is not None and (
        not isinstance(types, list)
        or not types
        or not all(isinstance(t, str) and FILE_TYPE_RE.match(t) for t in types)
    ):
        out.append(
            ("allowed_file_types", "allowed_file_types must list lower-case suffixes like '.csv'")
        )
    for key, low in (("cell_threshold", 1), ("dof_threshold", 0)):
        v = policy.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            out.append((key, f"{key} must be a whole number of at least {low}, not {v!r}"))
    z = policy.get("zeros_are_disclosive")
    if z is not None and not isinstance(z, bool):
        out.append(("zeros_are_disclosive", "zeros_are_disclosive must be true or false"))
    ira = policy.get("import_required_approvals")
    if ira is not None and (not isinstance(ira, int) or isinstance(ira, bool) or not 1 <= ira <= 5):
        out.append(("import_required_approvals", "import_required_approvals must be 1 to 5"))
    c = policy.get("clipboard_out")
    if c is not None and c not in ("block", "allow"):
        out.append(("clipboard_out", f"clipboard_out must be 'block' or 'allow', not {c!r}"))
    r = policy.get("rounding")
    if r is not None:
        from sde_airlock.sdc.core import valid_rounding

        try:
            valid_rounding(str(r))
        except ValueError as exc:
            out.append(("rounding", str(exc)))
    return out


#: ``90s``, ``30m``, ``8h``: the idle timeout of a project file.
DURATION_RE = re.compile(r"^([1-9][0-9]*)([smh])$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
#: Idle timeouts from 10 seconds to 7 days.
IDLE_RANGE = (10, 7 * 86400)


def parse_duration(text) -> int | None:
    """``"30m"`` -> 1800 (seconds); None if it is not a duration."""
    m = DURATION_RE.match(text.strip().lower()) if isinstance(text, str) else None
    return int(m.group(1)) * DURATION_UNITS[m.group(2)] if m else None


def idle_problems(seconds) -> list[Problem]:
    lo, hi = IDLE_RANGE
    if seconds is None:
        return []
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not lo <= seconds <= hi:
        return [("idle", f"the idle timeout must be from {lo} s to {hi // 86400} days, "
                         f"such as '30m' or '8h', not {seconds!r}")]  # fmt: skip
    return []


def limits_problems(cpu, memory) -> list[Problem]:
    out: list[Problem] = []
    if cpu is not None and (
        isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0.1 <= cpu <= 64
    ):
        out.append(("cpu", f"cpu must be a number of cores from 0.1 to 64, not {cpu!r}"))
    if memory is not None and (not isinstance(memory, str) or not MEMORY_RE.match(memory)):
        out.append(("memory", f"memory must look like '512m' or '2g', not {memory!r}"))
    return out


def dataset_columns(source_path: str) -> list[str]:
    """The column names of a CSV or Parquet source (its header only); ``OSError`` if unreadable."""
    if source_path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(source_path).names)
        except Exception as exc:  # pyarrow raises its own types for a bad file
            raise OSError(str(exc)) from None
    with open(source_path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])


def grant_problems(columns, row_filter: str, known: list[str] | None) -> list[Problem]:
    """Columns and row filter of a grant against the dataset's columns (``None``: unknown)."""
    out: list[Problem] = []
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        return [("columns", "columns must be a list of column names")]
    if not columns:
        out.append(("columns", "the grant names no column"))
    if len(set(columns)) != len(columns):
        out.append(("columns", "a column is named twice"))
    if known is not None:
        missing = [c for c in columns if c not in known]
        if missing:
            out.append(("columns", f"the dataset has no column {', '.join(map(repr, missing))}"))
    try:
        parse_row_filter(row_filter or "")
    except ExtractError as exc:
        out.append(("filter", str(exc)))
        return out
    if known is not None and (row_filter or "").strip():
        names = sorted(
            {
                n.id
                for n in ast.walk(ast.parse(row_filter.strip(), mode="eval"))
                if isinstance(n, ast.Name)
            }
        )
        unknown = [n for n in names if n not in known]
        if unknown:
            out.append(
                ("filter", f"row filter names unknown column {', '.join(map(repr, unknown))}")
            )
    return out
