"""Alembic revision 0004 builds the same output-checking tables as the ORM models."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from sde_spawner.checking.models import CHECKING_TABLES
from sde_spawner.db import Base, upgrade
from sde_spawner.registry import models as _registry  # noqa: F401


def _shape(engine, table: str) -> dict:
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


def test_upgrade_creates_the_same_tables_as_the_models(tmp_path):
    migrated_url = f"sqlite:///{tmp_path / 'migrated.sqlite'}"
    upgrade(migrated_url)
    migrated = create_engine(migrated_url)
    modelled = create_engine(f"sqlite:///{tmp_path / 'modelled.sqlite'}")
    Base.metadata.create_all(
        modelled, tables=CHECKING_TABLES + [Base.metadata.tables[n] for n in ("person", "project")]
    )
    names = [t.name for t in CHECKING_TABLES]
    assert set(names) <= set(inspect(migrated).get_table_names())
    for name in names:
        assert _shape(migrated, name) == _shape(modelled, name), name
    with migrated.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() >= "0004"
    migrated.dispose()
    modelled.dispose()


def test_downgrade_removes_them(tmp_path):
    from alembic import command

    from sde_spawner.db import alembic_config

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url, "0004")
    command.downgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    assert not {t.name for t in CHECKING_TABLES} & set(inspect(engine).get_table_names())
    engine.dispose()
