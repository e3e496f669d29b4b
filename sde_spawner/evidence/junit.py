"""Test results of one run, read from pytest's JUnit XML (``pytest --junitxml``).

A :class:`Result` per test case; :func:`matching` finds the results a catalogue reference
(``tests/unit/test_policy.py`` or ``tests/unit/test_policy.py::test_name``) stands for,
parametrised cases and tests inside classes included. The XML is parsed with defusedxml, as
a file given on the command line is input like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

OUTCOMES = ("passed", "failed", "error", "skipped")


class JUnitError(ValueError):
    """A results file cannot be read."""


@dataclass(frozen=True)
class Result:
    classname: str  # tests.unit.test_policy or tests.unit.test_policy.TestClass
    name: str  # test_x or test_x[param]
    outcome: str  # one of OUTCOMES
    seconds: float
    message: str
    source: str  # the XML file it came from

    @property
    def nodeid(self) -> str:
        return f"{self.classname}::{self.name}"


def _outcome(case) -> tuple[str, str]:
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        child = case.find(tag)
        if child is not None:
            return outcome, (child.get("message") or "").strip()[:500]
    return "passed", ""


def read(path: str | Path) -> list[Result]:
    """Every test case in one JUnit XML file."""
    try:
        root = ElementTree.parse(str(path)).getroot()
    except (OSError, ElementTree.ParseError, DefusedXmlException) as exc:
        raise JUnitError(f"{path}: not a readable JUnit XML file ({exc})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise JUnitError(f"{path}: not JUnit XML (root element <{root.tag}>)")
    results = []
    for case in root.iter("testcase"):
        outcome, message = _outcome(case)
        try:
            seconds = float(case.get("time") or 0)
        except ValueError:
            seconds = 0.0
        results.append(
            Result(
                classname=case.get("classname") or "",
                name=case.get("name") or "",
                outcome=outcome,
                seconds=seconds,
                message=message,
                source=str(path),
            )
        )
    return results


def read_all(paths) -> list[Result]:
    results: list[Result] = []
    for path in paths:
        results.extend(read(path))
    return results


def matching(ref: str, results: list[Result]) -> list[Result]:
    """The results ``ref`` (a test file, or file::function) stands for."""
    file, _, name = ref.partition("::")
    module = file.removesuffix(".py").replace("/", ".")
    found = []
    for r in results:
        if r.classname != module and not r.classname.startswith(module + "."):
            continue
        if name and r.name != name and not r.name.startswith(name + "["):
            continue
        found.append(r)
    return found


def totals(results: list[Result]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        counts[r.outcome] += 1
    return counts
