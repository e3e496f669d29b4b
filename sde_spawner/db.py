"""Database plumbing shared by the registry and the audit trail.

Owns the declarative ``Base`` every table hangs off, engine creation (SQLite by default,
PostgreSQL by URL) and schema upgrades through Alembic, so the hub, the CLI and the tests
all reach one schema the same way, and :func:`perform_audited`, the one transaction runner
of the layers that change state and audit their refusals (:mod:`sde_spawner.registry.ops`,
:mod:`sde_spawner.checking.errors`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import MetaData, create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

DEFAULT_DB_URL = "sqlite:///sde-registry.sqlite"
T = TypeVar("T")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every SDE table (registry and audit)."""

    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str = DEFAULT_DB_URL, **kwargs) -> Engine:
    """Create an engine; SQLite gets foreign keys, WAL and a busy timeout.

    Every pooled connection is tested (``pool_pre_ping``) when it is checked out: after a
    database server restart the pool holds connections to a server that is gone, and
    without the test the first request on each of them fails
    (``tests/docker/test_store_faults.py`` restarts a PostgreSQL of its own under the
    service to show it)."""
    kwargs.setdefault("pool_pre_ping", True)
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


MIGRATIONS_DIR = Path(__file__).parent / "registry" / "migrations"


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def open_db(url: str = DEFAULT_DB_URL, *, migrate: bool = True) -> sessionmaker[Session]:
    """Upgrade the schema (unless told not to) and return a session factory."""
    if migrate:
        upgrade(url)
    return make_sessionmaker(make_engine(url))


def perform_audited(
    sessionmaker,
    operation: Callable[..., T],
    args: tuple,
    kwargs: dict,
    *,
    refusal: type[Exception],
    record_denial: Callable[[Session, Exception], None],
    audit_denial: Callable[[Exception], bool] | None = None,
) -> T:
    """Run ``operation(session, *args, **kwargs)`` in one transaction and commit it.

    On a ``refusal`` exception the change is rolled back, then (unless ``audit_denial(exc)``
    says not to) ``record_denial(session, exc)`` writes the denied audit event, committed in a
    transaction of its own; the refusal is re-raised. Anything else rolls back and propagates.
    """
    with sessionmaker() as session:
        try:
            result = operation(session, *args, **kwargs)
            session.commit()
            return result
        except refusal as exc:
            session.rollback()
            if audit_denial is None or audit_denial(exc):
                record_denial(session, exc)
                session.commit()
            raise
        except BaseException:
            session.rollback()
            raise


#: Errors of the database connection itself (server stopped, restarting, connection cut):
#: the request may be sent again once the database is back; nothing of it was committed.
def database_unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the database could not be reached (not a bad statement)."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError
    )
