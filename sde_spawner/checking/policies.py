"""The pure rules of output checking: no database, no I/O.

What a request body must hold (the export rules of :mod:`sde_airlock.rules`, applied through
:mod:`~sde_spawner.checking.uploads`), what a checker's verdicts must say (a reason to ask for
changes or reject; a comment to approve a file the automated disclosure checks failed or could
not check whole), and how the checkers' decisions add up to a file's and a round's outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sde_airlock import sdc
from sde_airlock.rules import ExportRules
from sde_spawner.checking import uploads
from sde_spawner.checking.errors import Invalid
from sde_spawner.checking.models import ExportFile
from sde_spawner.checking.states import REASON_CODES, Decision, State

MAX_COMMENT = 5_000
#: The export rules (types, sizes, counts, text lengths) are the airlock's: sde_airlock.rules.
DEFAULT_RULES = ExportRules()
DEFAULT_MAX_FILE_BYTES = DEFAULT_RULES.max_file_bytes


def review_outcome(
    file_ids: Iterable[int], reviews: Mapping[str, Mapping[int, str]], required: int
) -> State | None:
    """The outcome of one version's review round, or None while fewer than ``required``
    distinct checkers have submitted.

    ``reviews`` maps checker -> {file id -> decision}. Every file approved by every checker
    -> approved; any reject -> rejected; anything else (changes requested) -> returned.
    """
    if len(reviews) < max(1, required):
        return None
    files = list(file_ids)
    decisions = [d.get(f) for d in reviews.values() for f in files]
    if any(d == Decision.reject for d in decisions):
        return State.rejected
    if all(d == Decision.approve for d in decisions):
        return State.approved
    return State.returned


def file_outcome(decisions: Iterable[str]) -> str:
    """One file's outcome from all checkers' decisions on it."""
    ds = list(decisions)
    if not ds:
        return "not reviewed"
    if any(d == Decision.reject for d in ds):
        return "rejected"
    if ds and all(d == Decision.approve for d in ds):
        return "approved"
    return "changes requested"


FileSpec = uploads.FileSpec


def validate_files(raw: Any, *, rules: ExportRules = DEFAULT_RULES) -> list[FileSpec]:
    """The declared files of a request body under the export rules (:mod:`sde_airlock.rules`);
    :class:`~sde_spawner.checking.uploads.RulesBroken` (a ``ValueError``) with every problem
    otherwise."""
    return uploads.declared_files(raw, rules)


def request_body(
    body: Any,
    action: str,
    username: str,
    project: str,
    *,
    rules: ExportRules,
    justification: str | None = None,
) -> tuple[str, list[FileSpec]]:
    """``(justification, files)`` of a new request or version, or :class:`Invalid` naming
    every broken export rule (their codes in the audited details).

    ``justification`` is the one kept when a new version does not give its own.
    """
    try:
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(body) - {"justification", "files"}
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(sorted(unknown))} (requester and project "
                "come from the workspace token)"
            )
        problems = []
        try:
            text = uploads.justification_of(body.get("justification", justification), rules)
        except uploads.RulesBroken as exc:
            problems += exc.problems
        try:
            files = validate_files(body.get("files"), rules=rules)
        except uploads.RulesBroken as exc:
            problems += exc.problems
        if problems:
            raise uploads.RulesBroken(problems)
    except uploads.RulesBroken as exc:
        raise Invalid(
            action, str(exc), actor=username, project=project, details=exc.details
        ) from None
    except ValueError as exc:
        raise Invalid(
            action, str(exc), actor=username, project=project, details={"code": "bad_request"}
        ) from None
    return text, files


@dataclass(frozen=True)
class FileVerdict:
    decision: str
    reason_code: str | None = None
    comment: str = ""


def check_verdicts(
    files: list[ExportFile],
    verdicts: Mapping[int, FileVerdict],
    failed_checks: Mapping[str, list[str]],
) -> list[str]:
    problems = []
    ids = {f.id for f in files}
    extra = set(verdicts) - ids
    if extra:
        problems.append(f"decisions for files not in this version: {sorted(extra)}")
    for f in files:
        v = verdicts.get(f.id)
        if v is None or not v.decision:
            problems.append(f"no decision for {f.path}")
            continue
        if v.decision not in set(Decision):
            problems.append(f"{f.path}: decision must be approve, changes or reject")
            continue
        if v.reason_code and v.reason_code not in REASON_CODES:
            problems.append(f"{f.path}: unknown reason code {v.reason_code!r}")
        if v.decision != Decision.approve and not v.reason_code:
            problems.append(f"{f.path}: a reason is required to request changes or reject")
        failed = failed_checks.get(f.sha256)
        if v.decision == Decision.approve and failed and not (v.comment or "").strip():
            problems.append(
                f"{f.path} fails automated disclosure rules ({', '.join(failed)}): approving it "
                "needs a "
                "comment saying why it is safe to release"
            )
        if len(v.comment or "") > MAX_COMMENT:
            problems.append(f"{f.path}: comment longer than {MAX_COMMENT} characters")
    return problems


#: Findings with these statuses make approving a file an override that needs a comment.
OVERRIDDEN = (sdc.FAIL, sdc.NOT_FULLY_CHECKED)


@dataclass(frozen=True)
class AutomatedChecks:
    """What the automated disclosure checks (:mod:`sde_airlock.sdc`) found in the files of
    the version under review, with the rule set and settings they ran with: the basis of the
    override rule (:func:`check_verdicts`) and of the record in the release manifest."""

    rule_set: str
    rules: Mapping[str, Any]
    #: sha256 -> {"status": ..., "findings": [{"rule", "severity", "location", "message"}]}
    files: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of(cls, reports: Mapping[str, sdc.Report], rules: sdc.Rules) -> AutomatedChecks:
        """From the reports of each file (by sha256) and the rules they were run with."""
        return cls(
            rule_set=sdc.RULE_SET_VERSION,
            rules=rules.to_dict(),
            files={
                sha: {
                    "status": report.status,
                    "findings": [
                        {k: f.to_dict()[k] for k in ("rule", "severity", "location", "message")}
                        for f in report.findings
                    ],
                }
                for sha, report in reports.items()
            },
        )

    def failed(self) -> dict[str, list[str]]:
        """sha256 -> the rules a file fails (or could not be checked for), for the files
        whose approval is an override."""
        out = {}
        for sha, record in self.files.items():
            rules = sorted({f["rule"] for f in record["findings"] if f["severity"] in OVERRIDDEN})
            if rules:
                out[sha] = rules
        return out
