"""Alembic revision 0011 builds the same import tables as the ORM models, and takes them away."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from sde_spawner.db import Base, upgrade
from sde_spawner.imports.models import IMPORT_TABLES
from tests.unit.test_checking_migration import _shape


def test_upgrade_creates_the_same_tables_as_the_models(tmp_path):
    migrated_url = f"sqlite:///{tmp_path / 'migrated.sqlite'}"
    upgrade(migrated_url)
    migrated = create_engine(migrated_url)
    modelled = create_engine(f"sqlite:///{tmp_path / 'modelled.sqlite'}")
    Base.metadata.create_all(modelled, tables=IMPORT_TABLES)
    for table in IMPORT_TABLES:
        assert _shape(migrated, table.name) == _shape(modelled, table.name), table.name
    migrated.dispose()
    modelled.dispose()


def test_downgrade_removes_them(tmp_path):
    from alembic import command

    from sde_spawner.db import alembic_config

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url, "0011")
    command.downgrade(alembic_config(url), "0010")
    engine = create_engine(url)
    assert not {t.name for t in IMPORT_TABLES} & set(inspect(engine).get_table_names())
    engine.dispose()
