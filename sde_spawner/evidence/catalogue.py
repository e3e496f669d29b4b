"""The evidence catalogue: controls, the Five Safes and SATRE statements (``catalogue.toml``).

:func:`load` parses and validates the file and returns a :class:`Catalogue`; every problem is
listed in one :class:`CatalogueError`. :func:`missing_references` lists test and module
references that do not exist in a source tree, so the catalogue cannot drift from the tests.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).with_name("catalogue.toml")
STATUSES = ("implemented", "not_met")


class CatalogueError(ValueError):
    """The catalogue is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    modules: tuple[str, ...]
    settings: tuple[str, ...]
    tests: tuple[str, ...]


@dataclass(frozen=True)
class Safe:
    id: str
    title: str
    claim: str
    controls: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    id: str
    summary: str
    status: str
    controls: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Catalogue:
    source: dict
    controls: dict[str, Control]
    safes: tuple[Safe, ...]
    statements: tuple[Statement, ...]


def _strings(value, where: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{where}: must be a list of non-empty strings")
        return ()
    return tuple(value)


def _text(table: dict, key: str, where: str, problems: list[str]) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}.{key}: required text")
        return ""
    return value


def parse(data: dict) -> Catalogue:
    """Validate a parsed catalogue; raise :class:`CatalogueError` listing every problem."""
    problems: list[str] = []
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    for key in ("name", "version", "url"):
        _text(source, key, "source", problems)
    controls: dict[str, Control] = {}
    for cid, table in (data.get("controls") or {}).items():
        where = f"controls.{cid}"
        controls[cid] = Control(
            id=cid,
            title=_text(table, "title", where, problems),
            modules=_strings(table.get("modules"), f"{where}.modules", problems),
            settings=_strings(table.get("settings", []), f"{where}.settings", problems)
            if table.get("settings")
            else (),
            tests=_strings(table.get("tests"), f"{where}.tests", problems),
        )
        if not controls[cid].tests:
            problems.append(f"{where}.tests: a control needs at least one proving test")

    def refs(value, where) -> tuple[str, ...]:
        ids = _strings(value, where, problems)
        for i, cid in enumerate(ids):
            if cid not in controls:
                problems.append(f"{where}[{i}]: unknown control {cid!r}")
        return ids

    safes = []
    for i, table in enumerate(data.get("safes") or []):
        where = f"safes[{i}]"
        safes.append(
            Safe(
                id=_text(table, "id", where, problems),
                title=_text(table, "title", where, problems),
                claim=_text(table, "claim", where, problems),
                controls=refs(table.get("controls"), f"{where}.controls"),
            )
        )
    statements = []
    seen: set[str] = set()
    for i, table in enumerate(data.get("statements") or []):
        where = f"statements[{i}]"
        sid = _text(table, "id", where, problems)
        if sid in seen:
            problems.append(f"{where}.id: {sid} is listed twice")
        seen.add(sid)
        status = table.get("status")
        if status not in STATUSES:
            problems.append(f"{where}.status: must be one of {', '.join(STATUSES)}")
        controls_of: tuple[str, ...] = ()
        reason = table.get("reason", "")
        if status == "implemented":
            controls_of = refs(table.get("controls"), f"{where}.controls")
            if not controls_of:
                problems.append(f"{where}.controls: an implemented statement names its controls")
        elif status == "not_met" and not (isinstance(reason, str) and reason.strip()):
            problems.append(f"{where}.reason: a statement not met says why")
        statements.append(
            Statement(
                id=sid,
                summary=_text(table, "summary", where, problems),
                status=str(status),
                controls=controls_of,
                reason=reason if isinstance(reason, str) else "",
            )
        )
    if len(safes) != 5:
        problems.append(f"safes: the Five Safes are five, found {len(safes)}")
    if problems:
        raise CatalogueError(problems)
    return Catalogue(source, controls, tuple(safes), tuple(statements))


def load(path: str | Path = DEFAULT_PATH) -> Catalogue:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError([f"{path}: {exc}"]) from None
    return parse(data)


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def missing_references(catalogue: Catalogue, root: str | Path) -> list[str]:
    """Every test file, test function and module named in the catalogue absent under ``root``."""
    root = Path(root)
    missing = []
    for control in catalogue.controls.values():
        for module in control.modules:
            if not (root / module).exists():
                missing.append(f"controls.{control.id}: no module {module}")
        for ref in control.tests:
            file, _, name = ref.partition("::")
            path = root / file
            if not path.is_file():
                missing.append(f"controls.{control.id}: no test file {file}")
            elif name and name not in _test_names(path):
                missing.append(f"controls.{control.id}: no test {ref}")
    return missing
