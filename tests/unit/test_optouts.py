"""Opt-out lists through `sde-admin`: all-or-nothing validated loads, versions, project policy,
audit; the hub-side extract call that applies them; the migration that holds them."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, select

from sde_spawner import audit
from sde_spawner.cli import main
from sde_spawner.datasets.demo_data import write_demo_optouts, write_demo_patients
from sde_spawner.datasets.extract import ExtractError, GrantSpec
from sde_spawner.datasets.hub import prepare_extract
from sde_spawner.datasets.nhs_number import with_check_digit
from sde_spawner.datasets.pseudonyms import load_or_create_master_key, project_key, pseudonym
from sde_spawner.db import Base, open_db, upgrade
from sde_spawner.registry.models import Dataset, ExtractVersion, OptoutEntry, OptoutList

GOOD = [with_check_digit(f"99900000{i}") for i in range(1, 6)]


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/r.sqlite"


def run(db, *args):
    return CliRunner().invoke(main, ["--db", db, *args], env={"SDE_ADMIN": "tester"})


def events(db, action=None):
    with open_db(db)() as s:
        return [e for e in audit.query(s) if action is None or e.action == action]


def write(path, lines):
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def test_load_validates_every_line_and_loads_nothing_when_any_is_bad(db, tmp_path):
    bad = write(tmp_path / "bad.txt", [GOOD[0], "123", GOOD[1], "9990000010", "x" * 12])
    res = run(db, "optout", "load", "national", str(bad))
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "Error: opt-out file bad.txt: 3 bad line(s), nothing loaded:",
        "line 2: '123' is not 10 digits",
        "line 4: 9990000010 fails the NHS number Modulus 11 check",
        "line 5: 'xxxxxxxxxxxx' is not 10 digits",
    ]
    with open_db(db)() as s:
        assert s.scalars(select(OptoutList)).all() == []
        assert s.scalars(select(OptoutEntry)).all() == []
    (refused,) = events(db, "optout.load_refused")
    assert refused.outcome == "denied" and "3 bad line(s)" in refused.reason


def test_each_load_is_a_new_audited_version_and_the_latest_is_in_force(db, tmp_path):
    f = write(tmp_path / "n.txt", GOOD[:3])
    assert run(db, "optout", "load", "national", str(f)).output == (
        "opt-out list national: loaded (version 1, 3 numbers)\n"
    )
    assert "unchanged (version 1" in run(db, "optout", "load", "national", str(f)).output
    write(f, GOOD[:4])
    assert "loaded (version 2, 4 numbers)" in run(db, "optout", "load", "national", str(f)).output
    out = json.loads(run(db, "optout", "list", "--all", "--json").output)
    assert [(r["list"], r["version"], r["numbers"], r["in_force"]) for r in out] == [
        ("national", 2, 4, True),
        ("national", 1, 3, False),
    ]
    assert [json.loads(e.details) for e in events(db, "optout.loaded")][1]["version"] == 2
    assert "version 1" not in run(db, "optout", "list").output.replace("  ", " ")


def test_list_names_and_unreadable_files_are_one_clear_error(db, tmp_path):
    f = write(tmp_path / "n.txt", GOOD[:1])
    assert (
        "must be 'national' or 'local:NAME'" in run(db, "optout", "load", "regional", str(f)).output
    )
    res = run(db, "optout", "load", "local:xy", str(tmp_path / "missing.txt"))
    assert res.exit_code == 1 and "cannot be read" in res.output


def seed(db, tmp_path, with_national=True):
    src = write_demo_patients(tmp_path / "patients.csv", rows=60)
    files = write_demo_optouts(src, tmp_path / "optouts", every=10, local_every=7)
    cmds = [
        ["dataset", "add", "patients", str(src), "--identifier", "nhs_number"],
        ["project", "add", "study-a", "--title", "A", "--ethics-ref", "E1"],
        ["project", "add", "study-b", "--title", "B", "--ethics-ref", "E2"],
    ]
    if with_national:
        cmds.append(["optout", "load", "national", str(files["national"])])
    for cmd in cmds:
        res = run(db, *cmd)
        assert res.exit_code == 0, res.output
    return src, files


def test_dataset_identifier_must_exist_in_the_source(db, tmp_path):
    src = write_demo_patients(tmp_path / "p.csv", rows=3)
    res = run(db, "dataset", "add", "patients", str(src), "--identifier", "nhs")
    assert res.exit_code == 1 and "has no identifier column 'nhs'" in res.output
    assert (
        run(db, "dataset", "add", "patients", str(src), "--identifier", "nhs_number").exit_code == 0
    )
    with open_db(db)() as s:
        assert s.scalar(select(Dataset.identifier_column)) == "nhs_number"


def test_local_lists_apply_by_project_policy_national_always(db, tmp_path):
    _, files = seed(db, tmp_path)
    res = run(db, "optout", "apply", "study-a", "local:demo-trust")
    assert res.exit_code == 1 and "has never been loaded" in res.output
    assert (
        run(db, "optout", "load", "local:demo-trust", str(files["local:demo-trust"])).exit_code == 0
    )
    assert "applied" in run(db, "optout", "apply", "study-a", "local:demo-trust").output
    assert "unchanged" in run(db, "optout", "apply", "study-a", "local:demo-trust").output
    assert run(db, "optout", "policy", "study-a").output == "national, local:demo-trust\n"
    assert run(db, "optout", "policy", "study-b").output == "national\n"
    res = run(db, "optout", "unapply", "study-a", "national")
    assert res.exit_code == 1 and "always applies" in res.output
    assert [e.project for e in events(db, "optout.applied")] == ["study-a"]


def build(db, tmp_path, project, user="alice", columns=("pseudonym", "age"), row_filter=""):
    grant = GrantSpec("patients", str(tmp_path / "patients.csv"), columns, row_filter)
    return prepare_extract(
        open_db(db),
        project=project,
        username=user,
        grants=[grant],
        target=tmp_path / "extracts" / project / user,
        extracts_dir=tmp_path / "extracts",
        key_file=tmp_path / "keys" / "master.key",
    )


def test_hub_extract_applies_lists_in_force_and_records_each_version(db, tmp_path):
    src, files = seed(db, tmp_path)
    national = files["national"].read_text().split()
    local = files["local:demo-trust"].read_text().split()
    first = build(db, tmp_path, "study-a")
    assert first.version == 1 and first.built
    assert build(db, tmp_path, "study-a").built is False  # reused on the next start
    run(db, "optout", "load", "local:demo-trust", str(files["local:demo-trust"]))
    run(db, "optout", "apply", "study-a", "local:demo-trust")
    second = build(db, tmp_path, "study-a")
    assert (second.version, second.built) == (2, True)
    key = project_key(load_or_create_master_key(tmp_path / "keys" / "master.key"), "study-a")
    with src.open() as fh:
        everyone = [line.split(",")[0] for line in fh.read().splitlines()[1:]]
    kept = [n for n in everyone if n not in national and n not in local]
    got = pq.read_table(second.path / "patients.parquet").column("pseudonym").to_pylist()
    assert got == [pseudonym(key, n) for n in kept]
    d = second.manifest["datasets"]["patients"]
    assert d["removed_by_optout_per_list"] == {
        "national v1": len(national),
        "local:demo-trust v1": len(local),
    }
    with open_db(db)() as s:
        rows = s.scalars(select(ExtractVersion).order_by(ExtractVersion.version)).all()
    assert [(r.username, r.version) for r in rows] == [("alice", 1), ("alice", 2)]
    assert rows[1].details["optout_lists"][1] == {
        "list": "local:demo-trust",
        "version": 1,
        "entries": len(local),
    }
    built = events(db, "extract.built")
    assert [(e.project, json.loads(e.details)["version"]) for e in built] == [
        ("study-a", 1),
        ("study-a", 2),
    ]
    assert "".join(e.details for e in built).count(national[0]) == 0  # counts only
    out = run(db, "extract", "list", "study-a", "--json").output
    assert [r["version"] for r in json.loads(out)] == [1, 2]


def test_same_patient_different_pseudonym_in_another_project(db, tmp_path):
    seed(db, tmp_path)
    a = build(db, tmp_path, "study-a")
    b = build(db, tmp_path, "study-b")
    pa_ = pq.read_table(a.path / "patients.parquet").column("pseudonym").to_pylist()
    pb = pq.read_table(b.path / "patients.parquet").column("pseudonym").to_pylist()
    assert len(pa_) == len(pb) > 0 and not set(pa_) & set(pb)
    key_file = tmp_path / "keys" / "master.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert not str(key_file).startswith(str(tmp_path / "extracts"))


def test_refused_without_the_national_list_or_with_the_key_inside_extracts(db, tmp_path):
    seed(db, tmp_path, with_national=False)
    with pytest.raises(ExtractError, match="national data opt-out list has never been loaded"):
        build(db, tmp_path, "study-a")
    assert not (tmp_path / "keys").exists()
    with pytest.raises(ExtractError, match="must not be inside the extracts directory"):
        prepare_extract(
            open_db(db),
            project="study-a",
            username="alice",
            grants=[],
            target=tmp_path / "extracts" / "study-a" / "alice",
            extracts_dir=tmp_path / "extracts",
            key_file=tmp_path / "extracts" / "master.key",
        )


def test_csv_on_request(db, tmp_path):
    seed(db, tmp_path)
    assert "on (updated)" in run(db, "extract", "csv", "study-a", "--on").output
    res = build(db, tmp_path, "study-a")
    assert sorted(os.listdir(res.path))[-2:] == ["patients.csv", "patients.parquet"]
    assert [json.loads(e.details) for e in events(db, "project.data_policy")] == [
        {"write_csv": True}
    ]


def _shape(engine, table):
    insp = inspect(engine)
    return {
        "columns": {
            c["name"]: (type(c["type"]).__name__.upper(), c["nullable"])
            for c in insp.get_columns(table)
        },
        "pk": insp.get_pk_constraint(table)["constrained_columns"],
        "fks": sorted(
            (tuple(fk["constrained_columns"]), fk["referred_table"], fk["options"].get("ondelete"))
            for fk in insp.get_foreign_keys(table)
        ),
        "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
        "indexes": sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)),
    }


SAFE_DATA_TABLES = ("optout_list", "optout_entry", "project_data_policy", "extract_version")


def test_migration_builds_the_same_tables_as_the_models(tmp_path):
    migrated_url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(migrated_url)
    migrated = create_engine(migrated_url)
    modelled = create_engine(f"sqlite:///{tmp_path / 'o.sqlite'}")
    Base.metadata.create_all(
        modelled,
        tables=[Base.metadata.tables[n] for n in ("project", "dataset", *SAFE_DATA_TABLES)],
    )
    for name in SAFE_DATA_TABLES:
        assert _shape(migrated, name) == _shape(modelled, name), name
    assert _shape(migrated, "dataset")["columns"]["identifier_column"] == ("VARCHAR", True)
    migrated.dispose()
    modelled.dispose()


def test_migration_downgrades(tmp_path):
    from alembic import command

    from sde_spawner.db import alembic_config

    url = f"sqlite:///{tmp_path / 'd.sqlite'}"
    upgrade(url, "0007")
    command.downgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    assert not set(SAFE_DATA_TABLES) & set(inspect(engine).get_table_names())
    assert "identifier_column" not in {c["name"] for c in inspect(engine).get_columns("dataset")}
    engine.dispose()
