"""workspace: which person's server is open on which project

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspace",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("project_slug", sa.String(length=40), nullable=False),
        sa.Column("container", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspace")),
    )
    with op.batch_alter_table("workspace") as batch_op:
        batch_op.create_index(batch_op.f("ix_workspace_username"), ["username"])
        batch_op.create_index(batch_op.f("ix_workspace_project_slug"), ["project_slug"])


def downgrade() -> None:
    op.drop_table("workspace")
