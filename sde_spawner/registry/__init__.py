"""The registry: who may use which project's data, under which agreement (SQLAlchemy + Alembic)."""
