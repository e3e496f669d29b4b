"""idle culling and usage: a project's idle timeout; metered usage of each workspace

``project.idle_timeout`` (seconds; NULL: the service's default) is how long a workspace of
the project may go without activity through the proxy before it is stopped. One
``workspace_usage`` row per workspace holds what its container used: CPU seconds (the
container's cumulative counter, as last sampled) and memory byte-seconds (sampled memory in
use times the time between samples).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("project") as batch_op:
        batch_op.add_column(sa.Column("idle_timeout", sa.Integer(), nullable=True))
    op.create_table(
        "workspace_usage",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("memory_byte_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column(
            "memory_peak_bytes",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            server_default="0",
        ),
        sa.Column("samples", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sampled_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspace.id"],
            name=op.f("fk_workspace_usage_workspace_id_workspace"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_workspace_usage")),
    )


def downgrade() -> None:
    op.drop_table("workspace_usage")
    with op.batch_alter_table("project") as batch_op:
        batch_op.drop_column("idle_timeout")
