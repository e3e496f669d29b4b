"""The vocabulary of the disclosure checks: statuses, rules settings, findings, reports.

Rule ids are a public interface (``sde-admin outputs check --json``, the checkers' pages, the
signed release manifest); they are listed with their meaning in ``docs/disclosure-rules.md``
and in :data:`RULES`, so a typo cannot make a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

FAIL, NOT_FULLY_CHECKED, REVIEW, INFO, PASS = "fail", "not_fully_checked", "review", "info", "pass"
_RANK = {PASS: 0, INFO: 1, REVIEW: 2, NOT_FULLY_CHECKED: 3, FAIL: 4}

#: The version of the rule set (the rules below and how they are applied): recorded in every
#: signed release manifest with the thresholds used, so a release says which checks it passed.
#: Raise it when a rule is added or changes what it flags.
RULE_SET_VERSION = "sde-sdc/2"

#: Every rule id a finding may carry, with what it means.
RULES = {
    "threshold": "a count under the threshold (ACRO safe_threshold)",
    "zero": "a zero count (disclosive by default, as in ACRO)",
    "min_max": "minima or maxima: each is one person's value",
    "rounding": "a count not rounded as the project's policy requires",
    "dominance": "magnitude values: dominance (p%, n-k) needs the contributors' values",
    "dof": "a model with too few residual degrees of freedom, or none given",
    "secondary_suppression": "a suppressed cell that can be worked back from the margins",
    "differencing": "a table that differs from another output only by cells under the threshold",
    "record_level": "what looks like record-level data rather than an aggregate",
    "nhs_number": "an NHS number (valid Modulus 11 check digit), or a column of them",
    "postcode": "a full UK postcode, or a column of them",
    "email": "an e-mail address, or a column of them",
    "phone": "a UK telephone number, or a column of them",
    "date_of_birth": "a date of birth, or a column of them",
    "identifier": "another direct identifier column (names, addresses, record ids)",
    "hidden_cell": "notebook content a reader does not see: hidden or collapsed cells, metadata",
    "attachment": "a file attached to a notebook cell",
    "script": "executable content (scripts, event handlers, javascript: URLs)",
    "external_reference": "a reference to another host (a beacon when opened)",
    "image_metadata": "metadata or extra data inside an image (EXIF, GPS, text chunks)",
    "type_mismatch": "the bytes are not what the file's name says",
    "not_fully_checked": "part of the file could not be checked automatically",
    "small_n": "text reporting a group size under the threshold",
    "manual": "nothing here can check this: look by eye",
}


@dataclass(frozen=True)
class Rules:
    """Deployment and project settings (``SDE_SDC_*``); the defaults are ACRO's."""

    threshold: int = 10
    dof_threshold: int = 10
    zeros_are_disclosive: bool = True
    #: "" (no rounding required), a base such as "5" or "10", or "midpoint6" (counts shown as
    #: 0 or 6k-3, as OpenSAFELY's midpoint-6 rounding gives).
    rounding: str = ""
    #: Rows of a table read to decide what each column holds; every row is checked.
    max_rows: int = 200_000
    max_examples: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Rules:
        """``SDE_SDC_THRESHOLD``, ``SDE_SDC_DOF_THRESHOLD``, ``SDE_SDC_ZEROS_ARE_DISCLOSIVE``,
        ``SDE_SDC_ROUNDING`` (the hub passes them on to workspaces, so researchers'
        pre-checks use the same)."""
        default = cls()
        zeros = env.get("SDE_SDC_ZEROS_ARE_DISCLOSIVE", "").strip().lower()
        return cls(
            threshold=int(env.get("SDE_SDC_THRESHOLD") or default.threshold),
            dof_threshold=int(env.get("SDE_SDC_DOF_THRESHOLD") or default.dof_threshold),
            zeros_are_disclosive=(
                default.zeros_are_disclosive if not zeros else zeros in ("1", "true", "yes")
            ),
            rounding=valid_rounding(env.get("SDE_SDC_ROUNDING", "")),
        )

    def to_dict(self) -> dict:
        """The settings the checks ran with (the CLI's ``--json``, release manifests)."""
        return {
            "threshold": self.threshold,
            "dof_threshold": self.dof_threshold,
            "zeros_are_disclosive": self.zeros_are_disclosive,
            "rounding": self.rounding or None,
        }


def valid_rounding(value: str) -> str:
    value = (value or "").strip().lower()
    if value in ("", "none", "0", "1"):
        return ""
    if value == "midpoint6" or (value.isdigit() and int(value) > 1):
        return value
    raise ValueError(f"rounding must be empty, a base such as 5, or midpoint6, not {value!r}")


@dataclass(frozen=True)
class Finding:
    rule: str
    status: str
    where: str  # "column 'n'", "cell 4 output, table 1, column 'count'", "line 12"
    message: str
    cells: tuple[tuple[int, str], ...] = ()  # (1-based data row, column) of table findings

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown disclosure rule {self.rule!r}")
        if self.status not in _RANK:
            raise ValueError(f"unknown status {self.status!r}")

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.status,
            "location": self.where,
            "message": self.message,
            # the names the checkers' pages and the workspace's export page read
            "status": self.status,
            "where": self.where,
            "cells": [list(c) for c in self.cells],
        }


@dataclass
class Report:
    """What the automated checks found in one file."""

    kind: str  # table | notebook | text | figure | other
    checked: list[str] = field(default_factory=list)  # what was read, for the checker
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst status of any finding (``fail`` > ``not_fully_checked`` > ``review`` >
        ``info``); ``pass`` when the checks found nothing."""
        return max((f.status for f in self.findings), key=_RANK.__getitem__, default=PASS)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "status": self.status,
            "checked": list(self.checked),
            "findings": [f.to_dict() for f in self.findings],
        }


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
